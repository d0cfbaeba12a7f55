"""Cross-encoder trial, a measurement, not part of Closer: all-MiniLM-L6-v2 fine-tuned as a
cross-encoder on (clause, fact answer) pairs of the tuning tenants, left out per tenant. Reports,
per left-out tenant, how often the right fact is ranked first among the clause's candidates by
the served logistic judgement (in sample), the logistic model refitted without the tenant, the
cross-encoder alone, and the logistic model with the cross-encoder's logit as one more feature
(fitted on in-sample logits of the other tenants). Needs the candidate dump of the five tuning
tenants and the torch virtualenv of finetune_ceiling.py:

    closer-eval answerability --server … --tenant eval/tenants/gusto … --tenant eval/tenants/sentry \
        --out /tmp/x.json --dump /tmp/dump5.jsonl
    EPOCHS=1 /tmp/venv/bin/python eval/experiments/cross_encoder.py

Measured 2026-12-07 (1 epoch, 657 s on 2 cores; of 248 clauses whose fact is a candidate):
logistic refitted left out 215, cross-encoder alone 96, logistic + cross-encoder 218
(gusto 40/15/42, bitwarden 45/22/45, bigcommerce 43/20/43, pipedrive 45/20/46, sentry 42/19/42).
With ~1,600 training pairs per fold the cross-encoder alone is far weaker than the features it
would join, and adds 3 of 248 to them."""
import json, math, os, sys, time, collections
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from sklearn.linear_model import LogisticRegression
torch.manual_seed(0); torch.set_num_threads(2)
MODEL = os.path.expanduser("~/.cache/closer/models/all-minilm-l6-v2")
NAMES = ["gusto", "bitwarden", "bigcommerce", "pipedrive", "sentry"]
EPOCHS = int(os.environ.get("EPOCHS", "1"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
answers = {}
for t in NAMES:
    for l in open(os.path.join(ROOT, f"eval/tenants/{t}/kb/facts.jsonl")):
        f = json.loads(l); answers[(t, f["id"])] = f["answer"]
rows = [json.loads(l) for l in open(os.environ.get("DUMP", "/tmp/dump5.jsonl"))]
for r in rows:
    r["clause"] = r["text"].split(" || ")[0]
    r["answer"] = answers[(NAMES[r["tenant"]], r["fact"])]
tok = Tokenizer.from_file(f"{MODEL}/tokenizer.json"); tok.no_padding(); tok.enable_truncation(96)
W = load_file(f"{MODEL}/model.safetensors")

class Bert(nn.Module):
    def __init__(s):
        super().__init__()
        s.p = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v.clone()) for k, v in W.items() if "position_ids" not in k})
        s.head = nn.Linear(384, 1)
    def g(s, k): return s.p[k.replace(".", "__")]
    def lin(s, x, k): return F.linear(x, s.g(k + ".weight"), s.g(k + ".bias"))
    def ln(s, x, k): return F.layer_norm(x, (x.shape[-1],), s.g(k + ".weight"), s.g(k + ".bias"), 1e-12)
    def forward(s, ids, tt, mask):
        b, t = ids.shape
        x = s.g("embeddings.word_embeddings.weight")[ids] + s.g("embeddings.position_embeddings.weight")[:t] + s.g("embeddings.token_type_embeddings.weight")[tt]
        x = s.ln(x, "embeddings.LayerNorm")
        am = (1.0 - mask[:, None, None, :].float()) * -1e4
        for i in range(6):
            p = f"encoder.layer.{i}."
            q, k, v = [s.lin(x, p + "attention.self." + n).view(b, t, 12, 32).transpose(1, 2) for n in ("query", "key", "value")]
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32) + am, -1) @ v
            x = s.ln(x + s.lin(a.transpose(1, 2).reshape(b, t, 384), p + "attention.output.dense"), p + "attention.output.LayerNorm")
            x = s.ln(x + s.lin(F.gelu(s.lin(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
        m = mask[:, :, None].float()
        return s.head((x * m).sum(1) / m.sum(1)).squeeze(-1)

def batch(rs):
    enc = tok.encode_batch([(r["clause"], r["answer"]) for r in rs])
    t = max(len(e.ids) for e in enc)
    ids = torch.zeros(len(enc), t, dtype=torch.long); tt = torch.zeros_like(ids); mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.ids); ids[i, :n] = torch.tensor(e.ids); tt[i, :n] = torch.tensor(e.type_ids); mask[i, :n] = 1
    return ids, tt, mask

def train(tr):
    m = Bert(); opt = torch.optim.AdamW(m.parameters(), lr=4e-5)
    y = torch.tensor([float(r["y"]) for r in tr]); pos = y.mean().item()
    bs = 16; steps = EPOCHS * math.ceil(len(tr) / bs); st = 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    m.train()
    for ep in range(EPOCHS):
        perm = torch.randperm(len(tr))
        for i in range(0, len(tr), bs):
            idx = perm[i:i + bs]
            logit = m(*batch([tr[j] for j in idx]))
            loss = F.binary_cross_entropy_with_logits(logit, y[idx], pos_weight=torch.tensor((1 - pos) / pos))
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    return m

def score(m, rs):
    m.eval()
    with torch.no_grad():
        return np.concatenate([m(*batch(rs[i:i + 64])).numpy() for i in range(0, len(rs), 64)])

J = json.load(open(os.path.join(ROOT, "sales/src/answerable.json")))
w, b = np.array(J["weights"]), J["bias"]
def first_right(rs, s):
    by = collections.defaultdict(list)
    for r, v in zip(rs, s): by[(r["message"], r["clause"])].append((v, r["y"]))
    have = [c for c in by.values() if any(y for _, y in c)]
    return sum(max(c)[1] for c in have), len(have)
t0 = time.time()
for held in range(len(NAMES)):
    tr = [r for r in rows if r["tenant"] != held]; te = [r for r in rows if r["tenant"] == held]
    m = train(tr)
    ce_te, ce_tr = score(m, te), score(m, tr)
    Xtr = np.array([r["x"] for r in tr]); Xte = np.array([r["x"] for r in te])
    lr = LogisticRegression(C=1e3, max_iter=5000).fit(Xtr, [r["y"] for r in tr])
    lr2 = LogisticRegression(C=1e3, max_iter=5000).fit(np.c_[Xtr, ce_tr], [r["y"] for r in tr])
    served = Xte @ w + b
    a, n = first_right(te, served); c, _ = first_right(te, ce_te); d, _ = first_right(te, lr.decision_function(Xte)); e, _ = first_right(te, lr2.decision_function(np.c_[Xte, ce_te]))
    print(f"{NAMES[held]:12} clauses with the fact among candidates {n}: right first — served (in sample) {a}, LR refit left out {d}, cross-encoder {c}, LR + cross-encoder {e}  ({time.time() - t0:.0f} s)", flush=True)
