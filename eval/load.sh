#!/usr/bin/env bash
# The load and fault runs of issue 7 (R1–R8) and the Converse speed runs of issue 6 (S1, S48),
# against servers on loopback started here.
# Usage: eval/load.sh [R1|R1real|R2|R4|R5|R7|R8|R8real|R8seed|S1|S48|P1|P2 ...]   (default: R1 R2 R4 R5 R7 R8)
#   P1/P2 (issue 30): 48 conversations for LOAD_SECONDS (default 120), fake generator as in R1,
#   on one replica with SQLite (P1) and on two replicas sharing one PostgreSQL (P2, 24 each;
#   run under scripts/backends.sh, which provides CLOSER_TEST_DATABASE_URL); P3: P1 with the
#   store on PostgreSQL.
# Figures go to target/load/<run>.{txt,json}. Needs `make build models`.
set -euo pipefail
cd "$(dirname "$0")/.."
CLOSER=${CLOSER:-target/release/closer}
OUT=target/load
mkdir -p "$OUT"
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA"' EXIT
$CLOSER kb load knowledge-base/examples/applinks --data-dir "$DATA" >/dev/null
$CLOSER kb load knowledge-base/examples/applinks --tenant calm --data-dir "$DATA" >/dev/null
PORT=50931
URL=http://127.0.0.1:$PORT
# What visitors say: the demo tenant's held-out test messages, each made unique (no cache hits).
MSGS=(--unique)
while IFS= read -r line; do MSGS+=(-m "$line"); done < <(python3 -c '
import json
for l in open("eval/data/applinks-intents-test.jsonl"):
    print(json.loads(l)["text"])')

# serve NAME FLAGS... : starts a server, waits until it serves, sets SERVER_PID.
serve() {
  local name=$1; shift
  $CLOSER serve --addr 127.0.0.1:$PORT --data-dir "$DATA" --auth off "$@" >"$OUT/$name.server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    grep -qE '[^_]SERVING' "$OUT/$name.server.log" && return 0
    kill -0 $SERVER_PID 2>/dev/null || { cat "$OUT/$name.server.log"; exit 1; }
    sleep 0.2
  done
  echo "server did not start"; exit 1
}
stop() { kill -TERM $SERVER_PID; wait $SERVER_PID || true; }
load() { local name=$1; shift; echo "== $name"; $CLOSER load --url $URL --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt"; }

# flood NAME SECONDS SETTLE CALM-ARGS... : the calm team alone for SECONDS, then for SECONDS again
# while the demo team floods at 32 visitors (starting SETTLE s before and ending SETTLE s after).
flood() {
  local name=$1 secs=$2 settle=$3; shift 3
  load "$name.alone" --tenant calm --seconds "$secs" "$@"
  load "$name.flood" --tenant applinks --concurrency 32 --seconds $((secs + 2 * settle)) "${MSGS[@]}" >/dev/null &
  local pid=$!
  sleep "$settle"
  load "$name.calm" --tenant calm --seconds "$secs" "$@"
  wait $pid
  cat "$OUT/$name.flood.txt"
}

SEED=(-m "How much does each seat cost? Are you SOC II compliant? And who would be our rep?")
FAKE=(--generator fake --fake-token-ms 25 --fake-prefill-ms 300)
run() {
  case $1 in
  R1) # 48 conversations for 5 minutes; the fake generator as a batched backend (48 slots).
    serve R1 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64
    load R1 --concurrency 48 --seconds 300 --pid $SERVER_PID "${MSGS[@]}"
    stop ;;
  P1) # Issue 30 baseline: R1's settings on one replica (SQLite).
    serve P1 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64
    load P1 --concurrency 48 --seconds "${LOAD_SECONDS:-120}" --pid $SERVER_PID "${MSGS[@]}"
    stop ;;
  P3) # Issue 30: P1 with the store on PostgreSQL (one replica): what the database costs.
    [ -n "${CLOSER_TEST_DATABASE_URL:-}" ] || { echo "P3 needs PostgreSQL: scripts/backends.sh eval/load.sh P3"; exit 1; }
    serve P3 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64 --database-url "$CLOSER_TEST_DATABASE_URL"
    load P3 --concurrency 48 --seconds "${LOAD_SECONDS:-120}" --pid $SERVER_PID "${MSGS[@]}"
    stop ;;
  P2) # Issue 30: the same load over two replicas on one PostgreSQL, 24 conversations each
      # (on one 2-core machine the two processes share the cores: RAYON_NUM_THREADS=1 each).
    [ -n "${CLOSER_TEST_DATABASE_URL:-}" ] || { echo "P2 needs PostgreSQL: scripts/backends.sh eval/load.sh P2"; exit 1; }
    RAYON_NUM_THREADS=1 serve P2a "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64 --database-url "$CLOSER_TEST_DATABASE_URL"
    local a=$SERVER_PID
    RAYON_NUM_THREADS=1 PORT=$((PORT + 1)) serve P2b "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64 --database-url "$CLOSER_TEST_DATABASE_URL"
    local b=$SERVER_PID
    load P2a --concurrency 24 --seconds "${LOAD_SECONDS:-120}" --pid $a "${MSGS[@]}" > /dev/null &
    local la=$!
    URL=http://127.0.0.1:$((PORT + 1)) load P2b --concurrency 24 --seconds "${LOAD_SECONDS:-120}" --pid $b "${MSGS[@]}"
    wait $la; cat "$OUT/P2a.txt"
    psql "$CLOSER_TEST_DATABASE_URL" -Atc "SELECT COUNT(*) || ' events, ' || COUNT(DISTINCT conversation_id) || ' conversations in ' || ROUND((MAX(at_ms) - MIN(at_ms)) / 1000.0, 1) || ' s' FROM events" | tee "$OUT/P2.events.txt"
    kill -TERM $a $b; wait $a $b || true ;;
  S1) # Issue 6: the seed question, one visitor at a time, the real model.
    serve S1
    load S1 --concurrency 1 --seconds 90 --domain acme.com --pid $SERVER_PID --unique "${SEED[@]}"
    stop ;;
  S48) # Issue 6: 48 conversations at a visitor's pace (20 s reading and typing between turns).
    serve S48 --tenant-max-pending-replies 64
    load S48 --concurrency 48 --think-ms 20000 --seconds 240 --domain acme.com --pid $SERVER_PID "${MSGS[@]}"
    stop ;;
  R1real) # The real model: one sequence at a time, so replies queue.
    serve R1real --tenant-max-pending-replies 64
    load R1real --concurrency 8 --seconds 120 --pid $SERVER_PID "${MSGS[@]}"
    stop ;;
  R2) # 4x the limit (12 permits, 48 visitors) for 60 s, then R3: half load for 30 s.
    serve R2 "${FAKE[@]}" --generator-slots 12 --max-pending-replies 12 --tenant-max-pending-replies 12
    load R2 --concurrency 48 --seconds 60 "${MSGS[@]}"
    load R3 --concurrency 6 --seconds 30 "${MSGS[@]}"
    stop ;;
  R4) # 2,000 conversations, half dropped mid-answer.
    serve R4 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64
    load R4 --concurrency 48 --seconds 600 --conversations 2000 --turns 1 --drop-fraction 0.5 "${MSGS[@]}"
    stop ;;
  R5) # A 500 ms deadline on ~1 s replies.
    serve R5 "${FAKE[@]}" --generator-slots 8
    load R5 --concurrency 8 --seconds 20 --turns 1 --deadline-ms 500 "${MSGS[@]}"
    stop ;;
  R7) # SIGTERM with 48 streams in flight.
    serve R7 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 64
    local since; since=$(date +%s%3N)
    load R7 --concurrency 48 --seconds 40 "${MSGS[@]}" &
    LOAD=$!
    sleep 20
    local t0; t0=$(date +%s.%N)
    kill -TERM $SERVER_PID
    wait $SERVER_PID || true
    echo "server exited $(echo "$(date +%s.%N) - $t0" | bc) s after SIGTERM" | tee "$OUT/R7.exit.txt"
    wait $LOAD || true
    python3 - "$DATA/closer.db" "$OUT/R7.json" "$since" <<'EOF' | tee -a "$OUT/R7.exit.txt"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
since = int(sys.argv[3])
stored = db.execute("select count(distinct conversation_id || '/' || turn) from messages where author = 'bot' and at_ms >= ?", (since,)).fetchone()[0]
acked = json.load(open(sys.argv[2]))["turns_ok"]
print(f"turns acknowledged to visitors: {acked}; turns with a reply on disk: {stored}")
EOF
    ;;
  R8) # The calm tenant alone, then while another floods at 4x its quota (8).
    serve R8 "${FAKE[@]}" --generator-slots 48 --tenant-max-pending-replies 8
    flood R8 60 5 --concurrency 4 "${MSGS[@]}"
    stop ;;
  R8real) # The same with the real model: a calm team (2 visitors who read each reply for 3 s),
    # alone and while another team floods at 4x its quota of 8.
    serve R8real --tenant-max-pending-replies 8
    flood R8real 150 10 --concurrency 2 --think-ms 3000 "${MSGS[@]}"
    stop ;;
  R8seed) # As R8real, but every calm turn generates: the calm visitors ask the seed question
    # (made unique), so the p99 is over ~50 generated replies rather than a handful.
    serve R8seed --tenant-max-pending-replies 8
    flood R8seed 150 10 --concurrency 2 --think-ms 3000 --domain acme.com --unique "${SEED[@]}"
    stop ;;
  *) echo "unknown run $1"; exit 2 ;;
  esac
}
for r in "${@:-R1 R2 R4 R5 R7 R8}"; do for x in $r; do run "$x"; done; done
