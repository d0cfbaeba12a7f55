"""Issue 28 measurement (not part of Closer): variants of the answerability judgement, scored
left out per tuning tenant with the same rules `closer-eval answerability` uses (logistic fit,
L2 1e-3, 4,000 full-batch steps; threshold: the lowest keeping ≤ 3 % of unanswerable messages
answered; hedge: the highest leaving ≤ 5 % of answerable messages with no fact; two facts per
clause). "answered or closest" counts answerable messages whose every gold fact is stated.

Inputs: candidate rows dumped by the server's own feature code, and MPNet vectors of the clauses
and the facts' texts (for the wider-pool variant):

    # a server with the tuning tenants loaded on :50961 (see eval/answers.sh), then
    closer-eval answerability --server http://127.0.0.1:50961 --tenant eval/tenants/gusto \
        --tenant eval/tenants/bitwarden --tenant eval/tenants/bigcommerce \
        --out /tmp/j/answerable.json --dump /tmp/j/dump5.jsonl [--candidates 15 → dump15.jsonl]
    python3 eval/experiments/judge_variants.py texts /tmp/j          # writes /tmp/j/texts.txt
    cargo run --release -p closer-models --example embed -- mpnet < /tmp/j/texts.txt > /tmp/j/vec.jsonl
    python3 eval/experiments/judge_variants.py score /tmp/j          # needs numpy

Never run on the locked tenant: its figures choose nothing.
"""
import json
import re
import sys

TENANTS = ["gusto", "bitwarden", "bigcommerce"]
ROOT = __file__.rsplit("/eval/", 1)[0]


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def clause_of(row):
    return row["text"].split(" || ", 1)[1].rsplit(" [", 1)[0]


def sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


FACTS = {t: {f["id"]: f for f in load(f"{ROOT}/eval/tenants/{t}/kb/facts.jsonl")} for t in TENANTS}
QUESTIONS = {t: {q["text"]: q for q in load(f"{ROOT}/eval/tenants/{t}/questions.jsonl")} for t in TENANTS}


def fact_texts(f):
    return [f["question"] + " " + f["answer"], f["question"], *sentences(f["answer"])]


def write_texts(d):
    texts = {}
    for r in load(f"{d}/dump15.jsonl"):
        texts.setdefault(clause_of(r), None)
    for t in TENANTS:
        for f in FACTS[t].values():
            for x in fact_texts(f):
                texts.setdefault(x, None)
    with open(f"{d}/texts.txt", "w") as out:
        out.write("\n".join(x.replace("\n", " ") for x in texts) + "\n")


def score(d):
    import numpy as np

    texts = open(f"{d}/texts.txt").read().split("\n")[:-1]
    vec = np.array([json.loads(l) for l in open(f"{d}/vec.jsonl")])
    at = {t: vec[i] for i, t in enumerate(texts)}

    def mpnet_best(clause, fact):
        q = at[clause]
        return max(at[x] @ q for x in fact_texts(fact))

    def setup(rows):
        X = np.array([r["x"] for r in rows], dtype=np.float64)
        Y = np.array([r["y"] for r in rows], dtype=np.float64)
        T = np.array([r["tenant"] for r in rows])
        msgs = {}
        for i, r in enumerate(rows):
            m = msgs.setdefault((r["tenant"], r["message"]), {"tenant": r["tenant"], "clauses": {}})
            m["clauses"].setdefault(r["clause"], []).append(i)
            q = QUESTIONS[TENANTS[r["tenant"]]][r["text"].split(" || ")[0]]
            m["gold"] = q["facts"] if q["answerable"] else []
        return X, Y, T, list(msgs.values())

    def fit(X, Y, l2=1e-3):
        w, b, n = np.zeros(X.shape[1]), 0.0, len(X)
        for _ in range(4000):
            e = 1 / (1 + np.exp(-(X @ w + b))) - Y
            w -= 0.5 * (X.T @ e / n + l2 * w)
            b -= 0.5 * e.sum() / n
        return w, b

    def fit_listwise(X, Y, groups, l2=1e-3):
        """Conditional logit with a "none" option per clause (softmax over candidates + none)."""
        w, b, n = np.zeros(X.shape[1]), 0.0, len(groups)
        for _ in range(3000):
            gw, gb = np.zeros_like(w), 0.0
            for g in groups:
                s = X[g] @ w + b
                top = max(s.max(), 0)
                e = np.exp(s - top)
                p = e / (np.exp(-top) + e.sum())
                y = Y[g] / Y[g].sum() if Y[g].sum() > 0 else Y[g]
                gw += X[g].T @ (p - y)
                gb += (p - y).sum()
            w -= 0.5 * (gw / n + l2 * w)
            b -= 0.5 * gb / n
        return w, b

    def outcome(rows, msgs, P, keep, thr, hedge, per):
        o = dict(answerable=0, answered=0, answered_or_closest=0, no_fact=0, unanswerable=0,
                 unanswerable_answered=0)
        for m in msgs:
            if m["tenant"] not in keep:
                continue
            sure, offered = [], []
            for ri in m["clauses"].values():
                ranked = sorted(((P[i], rows[i]["fact"]) for i in ri), reverse=True)
                top_sure = ranked[0][0] >= thr
                for p, f in ranked[:per]:
                    if p >= thr:
                        sure.append(f)
                    if p >= hedge and (not top_sure or p >= thr):
                        offered.append(f)
            if not m["gold"]:
                o["unanswerable"] += 1
                o["unanswerable_answered"] += bool(sure)
            else:
                o["answerable"] += 1
                o["answered"] += all(g in sure for g in m["gold"])
                o["answered_or_closest"] += all(g in offered for g in m["gold"])
                o["no_fact"] += not offered
        return o

    def thresholds(rows, msgs, P, keep, per):
        best = 0.99
        for s in range(99, 4, -1):
            o = outcome(rows, msgs, P, keep, s / 100, s / 100, per)
            if o["unanswerable_answered"] > 0.03 * o["unanswerable"]:
                break
            best = s / 100
        for s in range(round(best * 100), 4, -1):
            o = outcome(rows, msgs, P, keep, best, s / 100, per)
            if o["no_fact"] <= 0.05 * o["answerable"]:
                return best, s / 100
        return best, 0.05

    def left_out(name, rows, listwise=False, per=2, extra=None):
        X, Y, T, msgs = setup(rows)
        groups = [ri for m in msgs for ri in m["clauses"].values()]
        if extra:
            X = np.hstack([X, extra(X, groups)])
        total = {}
        for left in range(len(TENANTS)):
            keep = [t for t in range(len(TENANTS)) if t != left]
            fit_rows = np.where(T != left)[0]
            if listwise:
                w, b = fit_listwise(X, Y, [g for g in groups if T[g[0]] != left])
                P = np.zeros(len(rows))
                for g in groups:
                    s = X[g] @ w + b
                    top = max(s.max(), 0)
                    e = np.exp(s - top)
                    P[g] = e / (np.exp(-top) + e.sum())
            else:
                w, b = fit(X[fit_rows], Y[fit_rows])
                P = 1 / (1 + np.exp(-(X @ w + b)))
            thr, hedge = thresholds(rows, msgs, P, keep, per)
            for k, v in outcome(rows, msgs, P, [left], thr, hedge, per).items():
                total[k] = total.get(k, 0) + v
        print(f"| {name} | {total['answered_or_closest']}/{total['answerable']} | {total['answered']} "
              f"| {total['no_fact']} | {total['unanswerable_answered']}/{total['unanswerable']} |")

    def wider(rows15, k, m):
        """Hybrid retrieval's first k of 15, and MPNet's best m of the 15. (The rows' margin
        features were computed over all 15 candidates, not over the kept ones: approximate.)"""
        by = {}
        for r in rows15:
            by.setdefault((r["tenant"], r["message"], r["clause"]), []).append(r)
        out = []
        for rs in by.values():
            facts = FACTS[TENANTS[rs[0]["tenant"]]]
            ids = [r["fact"] for r in rs]
            mp = sorted(ids, key=lambda i: -mpnet_best(clause_of(rs[0]), facts[i]))
            keep = set(ids[:k]) | set(mp[:m])
            out += [r for r in rs if r["fact"] in keep]
        return out

    def ranks(X, groups):
        """Each candidate's rank within its clause by MiniLM and by each MPNet cosine."""
        cols = np.zeros((len(X), 4))
        for g in groups:
            for c, j in enumerate([0, 13, 14, 15]):
                cols[g, c] = np.argsort(np.argsort(-X[g][:, j])) / 4.0
        return cols

    five, fifteen = load(f"{d}/dump5.jsonl"), load(f"{d}/dump15.jsonl")
    print("| variant | answered or closest | answered (sure) | no fact | unanswerable answered |")
    print("|---|---|---|---|---|")
    left_out("as served: 5 candidates, logistic", five)
    left_out("listwise (softmax over candidates + none)", five, listwise=True)
    left_out("three facts per clause", five, per=3)
    left_out("ranks within the clause as features", five, extra=ranks)
    left_out("15 retrieved, first 5 + MPNet's best 2", wider(fifteen, 5, 2))
    left_out("15 retrieved, first 8", wider(fifteen, 8, 0))


if __name__ == "__main__":
    {"texts": write_texts, "score": score}[sys.argv[1]](sys.argv[2])
