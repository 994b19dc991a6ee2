#!/usr/bin/env bash
# The main job end to end on a local Apache Kafka: start it, create the topics,
# generate events in the background, run `tally run` with its progress log. Ctrl+C
# stops everything this script started, then runs `tally verify` and `tally insights`.
#
# Environment: KAFKA_BOOTSTRAP (use that broker, start none), DEMO_RATE (events/s,
# default 500), DEMO_PARTITIONS (default 6), TALLY_BIN (a tally binary to use
# instead of building one).
#
# It cleans up however it ends: Ctrl+C, SIGTERM, the terminal closing (SIGHUP),
# or its output piped into a reader that went away (`| tee` ended by the same
# Ctrl+C, `| head`).
set -euo pipefail
# A write to a closed pipe fails (and, with -e, exits through the cleanup below)
# instead of killing this shell before it can stop what it started.
trap '' PIPE
cd "$(dirname "$0")/.."

scripts/setup.sh
if [ -n "${TALLY_BIN:-}" ]; then
  tally=$TALLY_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}
  cargo build --release --bin tally
  tally=$CARGO_TARGET_DIR/release/tally
fi

run_id=demo-$(date +%s)
work=.run/$run_id
mkdir -p "$work"
started_broker=false
if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  # A Kafka that was already running (scripts/kafka.sh start) is left running.
  scripts/kafka.sh status > /dev/null 2>&1 || started_broker=true
  KAFKA_BOOTSTRAP=$(scripts/kafka.sh start)
fi
export KAFKA_BOOTSTRAP

# Fresh topic and group names per demo run, so a rerun starts clean.
export TALLY_INPUT_TOPIC=$run_id-user-login
export TALLY_OUTPUT_TOPIC=$run_id-processed-user-login
export TALLY_DLQ_TOPIC=$run_id-user-login-dlq
export TALLY_INSIGHTS_TOPIC=$run_id-user-login-insights
export TALLY_GROUP_ID=$run_id

gen_pid=
run_pid=
finish() {
  # Once: a second Ctrl+C or the terminal closing meanwhile must not end the
  # cleanup half-way.
  trap '' INT TERM HUP
  trap - EXIT
  # The cleanup must not die with the reader of our output: if stdout or stderr
  # is a closed pipe, the rest goes to /dev/null.
  set +e
  printf '\n' >&2 2>/dev/null || exec 2>/dev/null
  printf '\n' 2>/dev/null || exec >/dev/null
  echo "demo: stopping" >&2
  # Generator first, then let tally drain what it produced, then stop tally.
  [ -n "$gen_pid" ] && kill -INT "$gen_pid" 2>/dev/null && wait "$gen_pid" 2>/dev/null || true
  produced=$(sed -n 's/^generated \([0-9]*\) events.*/\1/p' "$work/generate.log")
  if [ -n "$run_pid" ] && [ -n "$produced" ]; then
    echo "demo: waiting for tally to process all $produced events" >&2
    "$tally" lag --wait-for "$produced" --timeout 120s || true
  fi
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null || true
  echo "demo: verifying (every input record exactly once in output or DLQ)" >&2
  status=0
  "$tally" verify --complete || status=$?
  "$tally" insights || true
  if $started_broker; then scripts/kafka.sh stop; fi
  exit $status
}
trap finish INT TERM HUP EXIT

"$tally" create-topics --partitions "${DEMO_PARTITIONS:-6}"
# Own sessions (setsid): a Ctrl+C in the terminal reaches only this script, which
# then stops them in order.
setsid "$tally" generate --rate "${DEMO_RATE:-500}" --invalid-ratio 0.05 > "$work/generate.log" 2>&1 < /dev/null &
gen_pid=$!
echo "demo: generating into $TALLY_INPUT_TOPIC (log $work/generate.log); Ctrl+C to stop and verify" >&2
setsid "$tally" run --instance-id demo-1 --state-dir "$work/state" --progress-interval 5s < /dev/null &
run_pid=$!
wait "$run_pid"
