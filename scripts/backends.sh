#!/usr/bin/env bash
# Runs a command with real PostgreSQL and NATS (JetStream) servers beside it, started here on
# free loopback ports in a temporary folder and stopped afterwards (no docker):
#   scripts/backends.sh cargo test --release ...
# exports CLOSER_TEST_DATABASE_URL (an empty database `closer_test`) and CLOSER_TEST_NATS_URL.
# PostgreSQL 15 comes from the machine (PGBIN, default /usr/lib/postgresql/15/bin; initdb and
# postgres refuse root, so as root they run as the `postgres` user); nats-server from Debian's
# package, installed when missing and running as root. When a server cannot be started the
# command still runs, without its URL: backend tests then skip with the reason, or fail when
# CLOSER_TEST_REQUIRE_BACKENDS=1 (CI).
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
dir=$(mktemp -d /tmp/closer-backends.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  [ -f "$dir/pg/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

start_postgres() {
  [ -x "$PGBIN/initdb" ] || { echo "backends: no PostgreSQL in $PGBIN" >&2; return 1; }
  mkdir -p "$dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pg"
  as_pg "$PGBIN/initdb" -D "$dir/pg" -U closer --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  local port; port=$(free_port)
  as_pg "$PGBIN/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w -t 60 \
    -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" \
    start >/dev/null || { cat "$dir/pg/server.log" >&2; return 1; }
  as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$port" -U closer closer_test
  export CLOSER_TEST_DATABASE_URL="postgresql://closer@127.0.0.1:$port/closer_test"
  echo "backends: PostgreSQL at $CLOSER_TEST_DATABASE_URL" >&2
}

start_nats() {
  if ! command -v nats-server >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get install -y -qq nats-server >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq nats-server; }) >&2
    fi
  fi
  command -v nats-server >/dev/null || { echo "backends: no nats-server" >&2; return 1; }
  local port; port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { cat "$dir/nats.log" >&2; return 1; }
  export CLOSER_TEST_NATS_URL="nats://127.0.0.1:$port"
  echo "backends: NATS (JetStream) at $CLOSER_TEST_NATS_URL" >&2
}

start_postgres || echo "backends: PostgreSQL not started; its tests will skip" >&2
start_nats || echo "backends: NATS not started; its tests will skip" >&2
"$@"
