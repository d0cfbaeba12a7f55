"""Does SetFit-style contrastive tuning help the few-shot case? A measurement, not part of Closer.

Tunes a sentence encoder (all weights) on pairs of the few-shot rows: per round, each row with
one row of its intent (target cosine 1) and one of another (target 0), mean-squared error on
the cosine of the mean-pooled unit vectors, AdamW, batches of 16, one pass. Then Closer's head
in scikit-learn (common.head_report) on the tuned vectors. Needs numpy, scikit-learn, torch,
transformers:

    /tmp/venv/bin/python eval/experiments/setfit_ceiling.py ~/.cache/closer/models/all-minilm-l6-v2 banking77 10 5 2e-5

Measured on the 2-core VM (2026-11-23), MiniLM, 10 shots, 5 rounds (7,700 pairs, 250 s):
83.88 % (84.28 % without the word features), below the frozen encoder's 86.07 %.
"""
import os, random, sys, time
import numpy as np, torch, torch.nn.functional as F
from transformers import AutoModel, PreTrainedTokenizerFast
from common import head_report, rows, shots_of
MODEL = os.path.expanduser(sys.argv[1]); ds = sys.argv[2]; shots = int(sys.argv[3]); R = int(sys.argv[4]); lr = float(sys.argv[5])
torch.manual_seed(0); random.seed(0); torch.set_num_threads(2)
tok = PreTrainedTokenizerFast(tokenizer_file=f"{MODEL}/tokenizer.json")
tok.pad_token = tok.pad_token or ("[PAD]" if "[PAD]" in tok.get_vocab() else "<pad>")
model = AutoModel.from_pretrained(MODEL, local_files_only=True)
tr, va = rows(ds, "train"), rows(ds, "val")
tr = [tr[i] for i in shots_of(tr, shots)]
by = {}
for i, r in enumerate(tr): by.setdefault(r["intent"], []).append(i)
pairs = []
for _ in range(R):
    for i, r in enumerate(tr):
        j = random.choice(by[r["intent"]]); pairs.append((i, j, 1.0))
        k = random.randrange(len(tr))
        while tr[k]["intent"] == r["intent"]: k = random.randrange(len(tr))
        pairs.append((i, k, 0.0))
random.shuffle(pairs)
def enc(texts):
    b = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    m = b["attention_mask"][:, :, None].float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
opt = torch.optim.AdamW(model.parameters(), lr=lr)
model.train(); t0 = time.time(); B = 16
for s in range(0, len(pairs), B):
    chunk = pairs[s:s+B]
    u = enc([tr[i]["text"] for i, _, _ in chunk]); v = enc([tr[j]["text"] for _, j, _ in chunk])
    y = torch.tensor([l for _, _, l in chunk])
    loss = F.mse_loss((u * v).sum(1), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(f"{len(pairs)} pairs in {time.time()-t0:.0f} s", flush=True)
model.eval()
def embed(texts):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 128): out.append(enc(texts[i:i+128]).numpy())
    return np.vstack(out)
xtr, xva = embed([r["text"] for r in tr]), embed([r["text"] for r in va])
head_report(f"setfit {ds} shots={shots} R={R} lr={lr}", tr, va, xtr, xva)
head_report(f"setfit {ds} shots={shots} R={R} lr={lr} no-ngrams", tr, va, xtr, xva, word_weight=0.0)
