#!/usr/bin/env bash
# Recovery drill: N `tally run` instances in one group under load with malformed
# input, faults at random (seeded) times: kill -9 and restart (with and without the
# state directory), graceful scale 3 -> 2 -> 3, SIGSTOP past the session timeout.
# Then it drains and checks every record exactly once and the insights against its
# own recount. Exit status 0 only if nothing was lost, duplicated or miscounted.
#
#   scripts/drill.sh [--duration SECS] [--instances N] [--events N] [--seed S] [--rate R] ...
#
# Uses KAFKA_BOOTSTRAP when set (any Kafka cluster), else starts Apache Kafka
# (scripts/kafka.sh) and stops it afterwards. All options: scripts/drill.sh --help.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}
cargo build --release --bin tally --bin tally-drill >&2

. scripts/lib.sh
tally_traps
tally_ensure_broker

"$CARGO_TARGET_DIR/release/tally-drill" --tally-bin "$CARGO_TARGET_DIR/release/tally" "$@"
