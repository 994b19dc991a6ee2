#!/usr/bin/env bash
# The whole test suite: unit tests and broker tests.
#
# Uses the broker named by KAFKA_BOOTSTRAP when set (any Kafka cluster) and starts
# none; otherwise starts Apache Kafka (scripts/kafka.sh) on free ports and stops it on exit,
# failure or Ctrl+C. Exit status is the tests' status.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

. scripts/lib.sh
tally_traps
tally_ensure_broker
echo "test: broker $KAFKA_BOOTSTRAP" >&2

# The failpoints feature arms the crash points the broker tests inject.
cargo test --workspace --features tally/failpoints "$@"
