# Closer — the two commands a user needs: `make run` and `make test`.
SHELL      := /bin/bash
CARGO      ?= cargo
DATA_DIR   ?= $(HOME)/.local/share/closer
ADDR       ?= 127.0.0.1:50051
CLOSER     := target/release/closer
# The intent encoder: minilm (default), mpnet or minilm+mpnet (larger, slower; see README "Intent encoder").
INTENT_ENCODER ?= minilm

.PHONY: run test build widget models demo bench eval fmt clippy fuzz

build:
	$(CARGO) build --release --workspace --all-targets

# The chat widget (web/widget): TypeScript generated from proto/ and bundled with npm's packages
# into web/widget/dist/widget.js, which `closer serve` serves at /widget.js.
# (`npm install` with the committed lock file rather than `npm ci`: the lock lacks buf's binaries
# for other platforms, which `npm ci` refuses.)
web/widget/node_modules/.package-lock.json: web/widget/package-lock.json
	cd web/widget && npm install --no-audit --no-fund

widget: web/widget/node_modules/.package-lock.json
	cd web/widget && npm run build

# Fetch and verify the pinned models (idempotent), load the demo tenant, serve gRPC (and the
# demo page with the chat widget).
run: build widget models demo
	@echo "demo page with the chat widget: http://$(ADDR)/"
	$(CLOSER) serve --addr $(ADDR) --data-dir $(DATA_DIR) --intent-encoder $(INTENT_ENCODER)

# MPNet always: the answerability judgement reads it (`--answer-encoder auto`) whatever the
# intent encoder.
models: build
	$(CLOSER) models pull --intent-encoder minilm+mpnet

demo: build
	$(CLOSER) kb load knowledge-base/examples/applinks --data-dir $(DATA_DIR)

# Every test, including those that run the real models (fetched first, the optional MPNet
# intent encoder too) and those that need PostgreSQL and NATS (scripts/backends.sh starts both
# on loopback and stops them afterwards). The real-model tests share 2 cores: run test threads
# serially to avoid oversubscription.
test: build widget
	$(CLOSER) models pull --intent-encoder mpnet
	set -o pipefail; scripts/backends.sh $(CARGO) test --release --workspace -- --test-threads=1 2>&1 | tee target/test.log
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

bench: models demo
	$(CLOSER) bench --data-dir $(DATA_DIR) --json target/bench.json

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --release --workspace --all-targets

# cargo-fuzz targets for every parser of outside input, FUZZ_SECONDS each (stable toolchain,
# no sanitizer). Seeds come from the demo tenant; a crash fails the run and leaves its input in
# target/fuzz/artifacts/<target>/. Executions and coverage go to target/fuzz/report.txt.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := facts_csv facts_json facts_markdown accounts_reps_csv playbook intent_file visitor_query request webhook_input
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.1
	bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)
