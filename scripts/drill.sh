#!/usr/bin/env bash
# Recovery drill: N `tally run` instances in one group under load with malformed
# input, faults at random (seeded) times: kill -9 and restart (with and without the
# state directory), graceful scale 3 -> 2 -> 3, SIGSTOP past the session timeout,
# crash points, retention. With --brokers 3, on a 3-node cluster of its own, the
# brokers fail too: kill -9 of a partition leader or coordinator, a frozen
# broker, a rolling restart, the active controller killed. Then it drains and
# checks every record exactly once and the insights against its own recount.
# Exit status 0 only if nothing was lost, duplicated or miscounted.
#
#   scripts/drill.sh [--brokers N] [--duration SECS] [--instances N] [--seed S] ...
#
# Without --brokers, uses KAFKA_BOOTSTRAP when set (any Kafka cluster), else
# starts one Apache Kafka node (scripts/kafka.sh). With --brokers N it always
# starts a cluster of N nodes of its own, which it controls. Either way it stops
# what it started. All options: scripts/drill.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."

brokers=
work=
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --brokers) brokers=${2:?--brokers needs a number}; shift 2 ;;
    --brokers=*) brokers=${1#*=}; shift ;;
    --work-dir) work=${2:?--work-dir needs a directory}; args+=("$1" "$2"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}
# The drill crashes instances at failpoints: its tally is built with them.
cargo build --release --features failpoints --bin tally --bin tally-drill >&2

. scripts/lib.sh
# The cluster's logs outlive it: the evidence of a failed run.
keep_broker_logs() {
  [ -n "$brokers" ] && [ -n "$tally_broker_dir" ] || return 0
  local to=${work:-.run}/kafka-logs
  mkdir -p "$to"
  for d in "$tally_broker_dir"/node*; do
    [ -d "$d/logs" ] && cp -r "$d/logs" "$to/$(basename "$d")"
  done
  echo "drill.sh: the brokers' logs are in $to" >&2
}
tally_traps keep_broker_logs
if [ -n "$brokers" ]; then
  # A cluster the drill can fail: never one named by KAFKA_BOOTSTRAP.
  unset KAFKA_BOOTSTRAP
  # Three brokers, three instances and the drill share the machine: JVMs that
  # compile less (C1 only) and collect with one thread start with half the CPU,
  # so a broker's restart starves the others less.
  export KAFKA_OPTS=${KAFKA_OPTS:--XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1}
  # A restart under that load can take minutes.
  export KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-300}
  tally_ensure_broker "$brokers"
  args+=(--kafka-dir "$tally_broker_dir" --kafka-script "$PWD/scripts/kafka.sh")
else
  tally_ensure_broker
fi

"$CARGO_TARGET_DIR/release/tally-drill" --tally-bin "$CARGO_TARGET_DIR/release/tally" "${args[@]}"
