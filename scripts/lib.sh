# Sourced by test.sh, drill.sh and bench.sh: a throwaway local broker for the
# length of one script, unless KAFKA_BOOTSTRAP already names a broker.

tally_broker_dir=

# A TCP port free on 127.0.0.1 right now.
tally_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the local broker on a free port when KAFKA_BOOTSTRAP is unset, and
# exports KAFKA_BOOTSTRAP either way.
tally_ensure_broker() {
  if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
    local port
    port=$(tally_free_port)
    tally_broker_dir=$(mktemp -d "${TMPDIR:-/tmp}/tally-broker.XXXXXX")
    KAFKA_BOOTSTRAP=$(BROKER_DIR=$tally_broker_dir BROKER_PORT=$port scripts/broker.sh start)
  fi
  export KAFKA_BOOTSTRAP
}

tally_proxy_pid=
tally_broker_bootstrap=

# With FETCH_LIMITS=1 (benchmarks only), every client reaches the local broker
# through scripts/fetch-limit-proxy.py, which cuts fetch answers to
# `fetch.max.bytes` and `max.partition.fetch.bytes` as Kafka does (the test
# broker ignores both, so a consumer's memory would follow the backlog).
tally_fetch_limits() {
  [ "${FETCH_LIMITS:-0}" = 1 ] || return 0
  if [ -z "$tally_broker_dir" ]; then
    echo "FETCH_LIMITS=1 is for the local broker; unset KAFKA_BOOTSTRAP" >&2
    exit 2
  fi
  local port
  port=$(tally_free_port)
  python3 scripts/fetch-limit-proxy.py "$port" "${KAFKA_BOOTSTRAP##*:}" 2> "$tally_broker_dir/proxy.log" &
  tally_proxy_pid=$!
  local up=
  for _ in $(seq 1 50); do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2> /dev/null; then
      up=1
      break
    fi
    kill -0 "$tally_proxy_pid" 2> /dev/null || break
    sleep 0.1
  done
  if [ -z "$up" ]; then
    echo "the fetch-limit proxy did not start:" >&2
    cat "$tally_broker_dir/proxy.log" >&2
    exit 2
  fi
  tally_broker_bootstrap=$KAFKA_BOOTSTRAP
  export KAFKA_BOOTSTRAP=127.0.0.1:$port
  echo "fetch limits: clients go through the proxy on $KAFKA_BOOTSTRAP" >&2
}

# Stops the broker tally_ensure_broker started, if any (by its PID file), after
# any tally process still pointed at it (left behind by an interrupted test: they
# name this broker's unique port on their command line), and the fetch-limit proxy.
tally_stop_broker() {
  if [ -n "$tally_proxy_pid" ]; then
    kill "$tally_proxy_pid" 2>/dev/null || true
    tally_proxy_pid=
    # Its parse errors only drop a connection (the client reconnects): say so.
    if [ -s "$tally_broker_dir/proxy.log" ]; then
      echo "fetch-limit proxy:" >&2
      cat "$tally_broker_dir/proxy.log" >&2
    fi
  fi
  if [ -n "$tally_broker_dir" ]; then
    # Anchored: port 4000 must not match 40001.
    pkill -KILL -f -- "--bootstrap-servers $KAFKA_BOOTSTRAP( |$)" 2>/dev/null || true
    [ -z "$tally_broker_bootstrap" ] || pkill -KILL -f -- "--bootstrap-servers $tally_broker_bootstrap( |$)" 2>/dev/null || true
    BROKER_DIR=$tally_broker_dir scripts/broker.sh stop || true
    rm -rf "$tally_broker_dir"
    tally_broker_dir=
  fi
}

# Traps that stop the broker on exit, failure or Ctrl+C; `$1` (optional) names a
# function of the caller to run first.
tally_traps() {
  # shellcheck disable=SC2064
  trap "${1:-true}; tally_stop_broker" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# For the benchmark scripts (`bench.sh`, `restore-bench.sh`, `rss.sh`): installs
# what is missing, sets `tally` to the binary they use (TALLY_BIN when set, else a
# release build in CARGO_TARGET_DIR, default ~/.cache/tally-target), makes a work
# directory `work` (named after `$1`), and a broker; on exit, failure or Ctrl+C
# the `tally run` whose PID is in `run_pid` is stopped and `work` removed first.
tally_bench_start() {
  scripts/setup.sh
  if [ -n "${TALLY_BIN:-}" ]; then
    tally=$TALLY_BIN
  else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}
    cargo build --release --bin tally >&2
    tally=$CARGO_TARGET_DIR/release/tally
  fi
  run_pid=
  work=$(mktemp -d "${TMPDIR:-/tmp}/tally-$1.XXXXXX")
  tally_traps tally_bench_stop_run
  tally_ensure_broker
  tally_fetch_limits
}

tally_bench_stop_run() {
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null || true
  rm -rf "$work"
}
