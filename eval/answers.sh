#!/usr/bin/env bash
# The answer evaluation of issue 28: the evaluation tenants (and the demo tenant's grounding set)
# through a server with the real models, started here on loopback. Figures go to
# target/answers/ (report.md, report.json; grounding/ for the demo tenant).
# Usage: eval/answers.sh [tenant ...]   (default: every tenant: the tuning tenants gusto bitwarden
#                                         bigcommerce pipedrive sentry calendly calendly-b, the
#                                         locked zohobooks dropboxsign helpscout mailchimp netlify)
#        eval/answers.sh train            (fits the answerability judgement on the tuning tenants
#                                          (TRAIN_TENANTS) -> sales/src/answerable.json and
#                                          answerable-minilm.json, or TRAIN_OUT; rebuild afterwards)
# SERVE_ARGS adds flags to the server (e.g. SERVE_ARGS="--answer-encoder off": the judgement
# without MPNet). Needs `make build models`.
set -euo pipefail
cd "$(dirname "$0")/.."
CLOSER=${CLOSER:-target/release/closer}
EVAL=${EVAL:-target/release/closer-eval}
OUT=${OUT:-target/answers}
TRAIN=
if [ "${1:-}" = train ]; then TRAIN=1; set -- ${TRAIN_TENANTS:-gusto bitwarden bigcommerce pipedrive sentry calendly calendly-b}; fi
TENANTS=("$@")
[ ${#TENANTS[@]} -gt 0 ] || TENANTS=(gusto bitwarden bigcommerce pipedrive sentry calendly calendly-b zohobooks dropboxsign helpscout mailchimp netlify)
mkdir -p "$OUT"
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA"' EXIT
ARGS=()
for t in "${TENANTS[@]}"; do
  $CLOSER kb load "eval/tenants/$t/kb" --data-dir "$DATA" >/dev/null
  ARGS+=(--tenant "eval/tenants/$t")
done
$CLOSER kb load knowledge-base/examples/applinks --data-dir "$DATA" >/dev/null
PORT=${PORT:-50941}
# shellcheck disable=SC2086
$CLOSER serve --addr 127.0.0.1:$PORT --data-dir "$DATA" --auth off ${SERVE_ARGS:-} >"$OUT/server.log" 2>&1 &
if [ -n "$TRAIN" ]; then
  # TRAIN_ARGS adds flags (e.g. "--dump candidates.jsonl": every candidate's features).
  # shellcheck disable=SC2086
  $EVAL answerability --server http://127.0.0.1:$PORT "${ARGS[@]}" --out "${TRAIN_OUT:-sales/src/answerable.json}" ${TRAIN_ARGS:-} | tee "$OUT/answerability.md"
  exit 0
fi
$EVAL answers --server http://127.0.0.1:$PORT "${ARGS[@]}" --out "$OUT"
if [ -z "${SKIP_DEMO:-}" ]; then
  $EVAL grounding --server http://127.0.0.1:$PORT --questions eval/data/applinks-grounding.jsonl --out "$OUT/grounding"
fi
