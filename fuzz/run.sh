#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS from seeds made of the demo tenant's files, and
# collects executions and coverage. Usage: fuzz/run.sh SECONDS TARGET...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=$1; shift
root=$PWD/target/fuzz
ex=knowledge-base/examples/applinks
mkdir -p "$root"
report=$root/report.txt
: >"$report"
seed() { # seed TARGET FILE...
  local dir=$root/corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do cp "$f" "$dir/"; done
}
seed facts_csv fuzz/seeds/facts.csv
seed facts_json fuzz/seeds/facts.json
printf '\x01' | cat - $ex/facts.jsonl >"$root/facts.jsonl.seed" && seed facts_json "$root/facts.jsonl.seed"
seed facts_markdown fuzz/seeds/faq.md
seed accounts_reps_csv $ex/accounts.csv $ex/reps.csv
seed playbook $ex/playbook.yaml fuzz/seeds/playbook-hours-overflow.yaml  # a crash found by CI
seed intent_file $ex/intents.yaml
seed visitor_query fuzz/seeds/questions.txt
seed request fuzz/seeds/questions.txt
seed webhook_input fuzz/seeds/webhook-url.txt fuzz/seeds/webhook-loopback.txt fuzz/seeds/retry-after.txt

cd fuzz
cargo fuzz build --sanitizer none --target-dir "$root/build" 2>&1 | tail -3
for t in "$@"; do
  mkdir -p "$root/artifacts/$t"
  echo "== $t ($seconds s)"
  log=$root/$t.log
  if ! cargo fuzz run "$t" --sanitizer none --target-dir "$root/build" "$root/corpus/$t" -- \
      -max_total_time="$seconds" -artifact_prefix="$root/artifacts/$t/" -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $t failed; the input is in $root/artifacts/$t/" >&2
    exit 1
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | tr '\t' ' ' || true)
  execs=$(grep -E 'stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  echo "$t: ${execs:-?} executions; ${done_line}" | tee -a "$report"
done
