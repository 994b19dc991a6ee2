# Sourced by test.sh, drill.sh and bench.sh: a throwaway local broker for the
# length of one script, unless KAFKA_BOOTSTRAP already names a broker.

tally_broker_dir=

# A TCP port free on 127.0.0.1 right now.
tally_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts Apache Kafka (scripts/kafka.sh, `$1` nodes, default 1) in a temporary
# directory when KAFKA_BOOTSTRAP is unset, and exports KAFKA_BOOTSTRAP either way.
tally_ensure_broker() {
  if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
    tally_broker_dir=$(mktemp -d "${TMPDIR:-/tmp}/tally-kafka.XXXXXX")
    KAFKA_BOOTSTRAP=$(KAFKA_DIR=$tally_broker_dir scripts/kafka.sh start --nodes "${1:-1}")
  fi
  export KAFKA_BOOTSTRAP
}

# The PIDs of the broker nodes tally_ensure_broker started (none for a broker
# named by KAFKA_BOOTSTRAP).
tally_broker_pids() {
  [ -n "$tally_broker_dir" ] || return 0
  cat "$tally_broker_dir"/node*/pid 2>/dev/null || true
}

# Stops the broker tally_ensure_broker started, if any (by its PID files), after
# any tally process still pointed at it (left behind by an interrupted test: they
# name this broker's unique ports on their command line).
tally_stop_broker() {
  if [ -n "$tally_broker_dir" ]; then
    # Anchored: port 4000 must not match 40001.
    pkill -KILL -f -- "--bootstrap-servers $KAFKA_BOOTSTRAP( |$)" 2>/dev/null || true
    KAFKA_DIR=$tally_broker_dir scripts/kafka.sh stop || true
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
}

tally_bench_stop_run() {
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null || true
  rm -rf "$work"
}
