"""Issue 29 measurement (not part of Closer): how far can a score over the frozen intent encoder
separate near-domain and far out-of-scope messages on the shared near-domain dev sets (`banking77-oos`, `clinc-single-domain-oos/{banking,credit_cards}`)?

Closer's head is approximated by logistic regression on the centred unit embedding (no n-grams).
For each score (max softmax, 1-NN and 10-NN cosine to the training examples, Mahalanobis with a
shared covariance) it prints the near/far OOS recall at the *best* threshold that keeps in-scope
accuracy within 3 points of the no-threshold accuracy — chosen on the val labels, i.e. an upper
bound, not an operating point — and then one label-free rule: reject when the softmax is below
0.29 (the threshold Closer calibrates here) or the 1-NN cosine is below the 2nd percentile of the
training examples' leave-one-out 1-NN cosines.

  closer-eval embed [--encoder mpnet] --input ../shared/datasets/banking77-oos/<split>.jsonl \
      --out /tmp/oos/<prefix>_<split>.f32     # train, val, id_oos_val, ood_oos_val
  python3 eval/experiments/oos_scores.py /tmp/oos/<prefix> 384|768 [dataset, default banking77-oos;
      also clinc-single-domain-oos/banking, clinc-single-domain-oos/credit_cards]
"""
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

from common import best_within, rows

prefix, dim = sys.argv[1], int(sys.argv[2])
dataset = sys.argv[3] if len(sys.argv) > 3 else "banking77-oos"


def load(split):
    return np.fromfile(f"{prefix}_{split}.f32", dtype="<f4").reshape(-1, dim), rows(dataset, split)


(xtr, rtr), (xva, rva) = load("train"), load("val")
xid, xood = load("id_oos_val")[0], load("ood_oos_val")[0]
labels = sorted({r["intent"] for r in rtr})
li = {l: i for i, l in enumerate(labels)}
ytr = np.array([li[r["intent"]] for r in rtr])
yva = np.array([li[r["intent"]] for r in rva])
mu = xtr.mean(0)


def unit(x):
    x = x - mu
    return x / np.linalg.norm(x, axis=1, keepdims=True)


a, b, i, o = unit(xtr), unit(xva), unit(xid), unit(xood)
clf = LogisticRegression(C=50, max_iter=2000).fit(a, ytr)
pred = clf.predict(b)
acc0 = (pred == yva).mean()
print(f"in-scope accuracy, no threshold: {acc0:.4f}")


def knn(x, k=1):
    return np.sort(x @ a.T, axis=1)[:, -k:].mean(1)


means = np.stack([a[ytr == c].mean(0) for c in range(len(labels))])
prec = np.linalg.inv(np.cov((a - means[ytr]).T) + 1e-3 * np.eye(dim))


def maha(x):
    return -np.stack([np.einsum("ij,jk,ik->i", x - m, prec, x - m) for m in means], 1).min(1)


scores = {
    "max softmax": lambda x: clf.predict_proba(x).max(1),
    "1-NN cosine": knn,
    "10-NN cosine": lambda x: knn(x, 10),
    "Mahalanobis": maha,
}
for name, f in scores.items():
    best = best_within(pred == yva, f(b), f(i), f(o))
    print(f"{name:>13}: best threshold within 3 points: in-scope {best[0]:.4f}, near {best[1]:.3f}, far {best[2]:.3f}")

# The label-free rule.
loo = a @ a.T
np.fill_diagonal(loo, -1)
t_knn = np.quantile(loo.max(1), 0.02)
keep = lambda x: (clf.predict_proba(x).max(1) >= 0.29) & (knn(x) >= t_knn)
print(
    f"label-free rule (softmax >= 0.29 and 1-NN >= {t_knn:.3f}): in-scope {((pred == yva) & keep(b)).mean():.4f}, "
    f"near {(~keep(i)).mean():.3f}, far {(~keep(o)).mean():.3f}"
)
