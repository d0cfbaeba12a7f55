"""Shared by the measurement scripts in this folder (not part of Closer)."""
import json
import os
import random

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../shared/datasets")


def rows(ds, split):
    with open(f"{DATA}/{ds}/{split}.jsonl") as f:
        return [json.loads(l) for l in f]


def best_within(correct, sv, si, so, points=0.03):
    """The best threshold on a score that keeps in-scope accuracy within `points` of the
    no-threshold accuracy, chosen on the labels (an upper bound, not an operating point):
    (in-scope accuracy, near OOS recall, far OOS recall) there. `correct`: per in-scope row,
    whether the top intent is right; `sv`, `si`, `so`: the score of in-scope, near and far rows
    (numpy arrays; lower means out of scope)."""
    import numpy as np

    best = None
    for t in np.quantile(sv, np.linspace(0, 0.5, 201)):
        acc = (correct & (sv >= t)).mean()
        if acc >= correct.mean() - points:
            best = (acc, (si < t).mean(), (so < t).mean())
    return best


def shots_of(train, shots, seed=7):
    """`shots` rows per intent, seeded; all rows when `shots` is 0."""
    if not shots:
        return list(range(len(train)))
    rng, by = random.Random(seed), {}
    for i, r in enumerate(train):
        by.setdefault(r["intent"], []).append(i)
    return [i for k in sorted(by) for i in rng.sample(by[k], min(shots, len(by[k])))]


def head_report(name, train, val, xtr, xva, word_weight=0.7, l2=1e-5, thresholds=(0.0, 0.3, 0.4, 0.5, 0.6)):
    """Closer's head in scikit-learn: logistic regression (C = 1 / (l2 * n)) over the unit
    embedding and a word 1-2-gram TF-IDF block weighted `word_weight`. Prints val accuracy, or
    in-scope accuracy and OOS recall per threshold when the training rows have `oos`."""
    import numpy as np
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = sorted({r["intent"] for r in train})
    li = {l: i for i, l in enumerate(labels)}
    ytr = np.array([li[r["intent"]] for r in train])
    yva = np.array([li.get(r["intent"], -1) for r in val])
    t, v = [r["text"] for r in train], [r["text"] for r in val]
    tf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w\w+\b").fit(t)
    a = sp.hstack([sp.csr_matrix(xtr), word_weight * tf.transform(t)]).tocsr()
    b = sp.hstack([sp.csr_matrix(xva), word_weight * tf.transform(v)]).tocsr()
    lr = LogisticRegression(C=1 / (l2 * len(t)), max_iter=3000).fit(a, ytr)
    p = lr.predict_proba(b)
    pred = p.argmax(1)
    oos = li.get("oos")
    if oos is None:
        print(f"{name}: accuracy {100 * (pred == yva).mean():.2f} %", flush=True)
        return
    isin = yva != oos
    for th in thresholds:
        p2 = np.where((p.max(1) < th) | (pred == oos), oos, pred)
        print(
            f"{name}, threshold {th}: in-scope {100 * (p2[isin] == yva[isin]).mean():.2f} %, "
            f"OOS recall {100 * (p2[~isin] == oos).mean():.0f} %",
            flush=True,
        )
