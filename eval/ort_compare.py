"""Times ONNX Runtime on the same token ids Closer's encoder read, and checks the vectors agree.

Usage: ort_compare.py MODEL.onnx IDS.json VECTORS.json CLOSER.json RUNS
(eval/ort_compare.sh prepares every argument.)"""
import json
import math
import sys
import time

import onnxruntime as ort

model, ids_path, vectors_path, closer_path, runs = sys.argv[1:6]
runs = int(runs)
ids = json.load(open(ids_path))
ours = json.load(open(vectors_path))
closer = json.load(open(closer_path))


def q(v, p):
    v = sorted(v)
    return v[round((len(v) - 1) * p)]


def embed(sess, tokens):
    n = len(tokens)
    feeds = {
        "input_ids": [tokens],
        "attention_mask": [[1] * n],
        "token_type_ids": [[0] * n],
    }
    import numpy as np  # onnxruntime depends on numpy

    feeds = {k: np.array(v, dtype=np.int64) for k, v in feeds.items()}
    h = sess.run(None, feeds)[0][0]
    mean = h.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


rows = []
for threads in (1, 2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for t in ids[:20]:
        embed(sess, t)
    ms = []
    for i in range(runs):
        t = ids[i % len(ids)]
        s = time.perf_counter()
        embed(sess, t)
        ms.append((time.perf_counter() - s) * 1e3)
    rows.append((threads, q(ms, 0.5), q(ms, 0.9), q(ms, 0.99)))
    if threads == 1:
        cos = [float(embed(sess, t) @ o) for t, o in zip(ids, ours)]

served = closer["served_ms"]
fast = served["p50"]
precision = closer["precision"]
print(f"| runtime, one message ({len(ids)} texts, {closer['mean_tokens']:.1f} tokens on average) | p50 | p90 | p99 | speed ratio (this p50 ÷ Closer served p50) |")
print("|---|---|---|---|---|")
print(f"| Closer served ({precision}, 2 threads) | {fast:.2f} ms | {served['p90']:.2f} ms | {served['p99']:.2f} ms | 1.00 |")
f = closer["fast_ms"]
print(f"| Closer f32 fast path | {f['p50']:.2f} ms | {f['p90']:.2f} ms | {f['p99']:.2f} ms | {f['p50'] / fast:.2f} |")
c = closer["candle_ms"]
print(f"| Closer, candle graph (f32) | {c['p50']:.2f} ms | {c['p90']:.2f} ms | {c['p99']:.2f} ms | {c['p50'] / fast:.2f} |")
for threads, p50, p90, p99 in rows:
    print(f"| ONNX Runtime {ort.__version__} int8, {threads} thread(s) | {p50:.2f} ms | {p90:.2f} ms | {p99:.2f} ms | {p50 / fast:.2f} |")
print(f"\nCosine between ORT int8 and Closer {precision} (served) vectors: min {min(cos):.4f}, mean {sum(cos) / len(cos):.4f}")
