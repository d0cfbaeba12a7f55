"""Issue 29 measurement (not part of Closer): an out-of-scope detector learned without
out-of-scope examples, by holding intents out as stand-in out-of-scope traffic.

Closer's head is approximated by logistic regression on the centred unit embedding (no n-grams).
Five rounds each hold a fifth of the intents out: a head trained on the training share of the
others reads their held-out rows (in scope) and every row of the held-out intents (out of
scope); a logistic regression over [top probability, nearest-example cosine] learns which is
which. Its threshold rejects at most L of the in-scope rows the round heads got right; the served
head (all rows) and the detector are then read on the val, near and far out-of-scope rows.
README ("Near-domain out-of-scope: the served decision") quotes the L = 2 % line.

  closer-eval embed --input ../shared/datasets/<set>/<split>.jsonl --out /tmp/oos/<prefix>_<split>.f32
      # train, val, id_oos_val, ood_oos_val
  python3 eval/experiments/held_out_intents.py /tmp/oos/<prefix> <set>
      # e.g. /tmp/oos/c_banking clinc-single-domain-oos/banking
"""
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

from common import rows

prefix, dataset = sys.argv[1], sys.argv[2]


def load(split):
    r = rows(dataset, split)
    return np.fromfile(f"{prefix}_{split}.f32", dtype="<f4").reshape(len(r), -1), r


def unit(x, mu):
    x = x - mu
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fit(a, y):
    return LogisticRegression(C=50, max_iter=1000).fit(a, y)


def split(y, share=0.2, seed=7):
    r, tr, ho = np.random.default_rng(seed), [], []
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        r.shuffle(idx)
        n = max(1, round(len(idx) * share)) if len(idx) >= 4 else 0
        ho += list(idx[:n])
        tr += list(idx[n:])
    return np.array(sorted(tr)), np.array(sorted(ho))


def features(clf, bank, x):
    p = clf.predict_proba(x)
    return clf.classes_[p.argmax(1)], np.stack([p.max(1), (x @ bank.T).max(1)], 1)


(xtr, rtr), (xva, rva) = load("train"), load("val")
mu = xtr.mean(0)
labels = sorted({r["intent"] for r in rtr})
li = {l: i for i, l in enumerate(labels)}
ytr = np.array([li[r["intent"]] for r in rtr])
yva = np.array([li.get(r["intent"], -1) for r in rva])
a, b = unit(xtr, mu), unit(xva, mu)
intents = np.unique(ytr)
np.random.default_rng(7).shuffle(intents)
tr, ho = split(ytr)
z, lab, right = [], [], []
for k in range(5):
    out = set(intents[k::5])
    keep = np.array([i for i in tr if ytr[i] not in out])
    c = fit(a[keep], ytr[keep])
    ins = np.array([i for i in ho if ytr[i] not in out])
    oo = np.array([i for i in range(len(ytr)) if ytr[i] in out])
    p, f = features(c, a[keep], a[ins])
    z.append(f), lab.extend([0] * len(ins)), right.extend(p == ytr[ins])
    _, f = features(c, a[keep], a[oo])
    z.append(f), lab.extend([1] * len(oo)), right.extend([False] * len(oo))
z, lab, right = np.concatenate(z), np.array(lab), np.array(right)
m, s = z.mean(0), z.std(0) + 1e-9
det = LogisticRegression(max_iter=1000, class_weight="balanced").fit((z - m) / s, lab)
sc = det.predict_proba((z - m) / s)[:, 1]
clf = fit(a, ytr)


def served(x):
    p, f = features(clf, a, x)
    return p, det.predict_proba((f - m) / s)[:, 1]


p, sv = served(b)
si = served(unit(load("id_oos_val")[0], mu))[1]
so = served(unit(load("ood_oos_val")[0], mu))[1]
print(f"{dataset}: no-threshold accuracy {(p == yva).mean():.4f}")
for L in (0.01, 0.02, 0.03):
    ranked = np.sort(sc[(lab == 0) & right])[::-1]
    k = int(np.floor((lab == 0).sum() * L))
    t = ranked[k] if k < len(ranked) else 1.0
    print(
        f"  L={L:.2f}: in-scope {((p == yva) & (sv < t)).mean():.4f}, near {(si >= t).mean():.3f}, far {(so >= t).mean():.3f}"
    )
