#!/usr/bin/env bash
# Issue 29's near-domain out-of-scope sets through a running server: each development set's
# in-scope intents become a tenant (trained by the server as any tenant, without out-of-scope
# rows; CLINC150 keeps its `oos` rows as the tenant's out_of_scope examples), and
# `closer-eval intents --server` sends every val, near (in-domain) and far out-of-scope message
# through Classify. What is scored is the served decision. Reports go to target/oos-served/<set>/.
# Usage: eval/oos-served.sh [set ...]   (default: banking77-oos clinc-banking clinc-credit_cards clinc150)
# SERVE_ARGS adds flags to the server (e.g. "--intent-encoder mpnet"). Needs `make build models`.
set -euo pipefail
cd "$(dirname "$0")/.."
CLOSER=${CLOSER:-target/release/closer}
EVAL=${EVAL:-target/release/closer-eval}
OUT=${OUT:-target/oos-served}
S=${DATASETS:-../shared/datasets}
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(banking77-oos clinc-banking clinc-credit_cards clinc150)
mkdir -p "$OUT"
DATA=$(mktemp -d)
SRC=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA" "$SRC"' EXIT
dir_of() {
  case $1 in
    banking77-oos) echo "$S/banking77-oos" ;;
    clinc-banking) echo "$S/clinc-single-domain-oos/banking" ;;
    clinc-credit_cards) echo "$S/clinc-single-domain-oos/credit_cards" ;;
    clinc150) echo "$S/clinc150" ;;
    *) echo "unknown set $1" >&2; exit 2 ;;
  esac
}
tenant_of() { echo "$1" | tr -c 'a-z0-9\n' '-'; }
for s in "${SETS[@]}"; do
  d=$(dir_of "$s"); t=$(tenant_of "$s")
  mkdir -p "$SRC/$t"
  printf 'id: %s\ncompany: %s\n' "$t" "$s" >"$SRC/$t/tenant.yaml"
  # The training rows as the tenant's intent set (`oos` rows as out_of_scope examples), and the
  # val rows with the same names: tenant intent names are lowercase letters, digits and '_'
  # (BANKING77 has `Refund_not_showing_up` and `reverted_card_payment?`).
  python3 - "$d/train.jsonl" "$d/val.jsonl" "$SRC/$t/intents.yaml" "$SRC/$t.val.jsonl" <<'PY'
import json, re, sys
def name(n):
    return "out_of_scope" if n == "oos" else re.sub("[^a-z0-9_]+", "_", n.lower()).strip("_")
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    by.setdefault(name(r["intent"]), []).append(r["text"])
with open(sys.argv[3], "w") as out:
    out.write("intents:\n")
    for n, ex in by.items():
        out.write(f"  - name: {n}\n    examples:\n")
        out.writelines(f"      - {json.dumps(e)}\n" for e in ex)
with open(sys.argv[4], "w") as out:
    for line in open(sys.argv[2]):
        r = json.loads(line)
        r["intent"] = "oos" if r["intent"] == "oos" else name(r["intent"])
        out.write(json.dumps(r) + "\n")
PY
  $CLOSER kb load "$SRC/$t" --data-dir "$DATA" >/dev/null
done
PORT=${PORT:-50942}
# shellcheck disable=SC2086
$CLOSER serve --addr 127.0.0.1:$PORT --data-dir "$DATA" --auth off --generator fake ${SERVE_ARGS:-} >"$OUT/server.log" 2>&1 &
for s in "${SETS[@]}"; do
  d=$(dir_of "$s"); t=$(tenant_of "$s")
  groups=()
  [ -f "$d/id_oos_val.jsonl" ] && groups+=(--test-oos "near=$d/id_oos_val.jsonl" --test-oos "far=$d/ood_oos_val.jsonl")
  echo "== $s (tenant $t)"
  $EVAL intents --server http://127.0.0.1:$PORT --tenant "$t" --train "$d/train.jsonl" \
    --test "$SRC/$t.val.jsonl" --oos-label oos "${groups[@]}" --out "$OUT/$s"
done
