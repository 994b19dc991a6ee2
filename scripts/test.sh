#!/usr/bin/env bash
# The whole test suite: unit tests and broker tests.
#
# Uses the broker named by KAFKA_BOOTSTRAP when set (e.g. a real Kafka) and starts
# none; otherwise starts the local test broker on a free port and stops it on exit,
# failure or Ctrl+C. Exit status is the tests' status.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

started_dir=
cleanup() {
  if [ -n "$started_dir" ]; then
    BROKER_DIR=$started_dir scripts/broker.sh stop || true
    rm -rf "$started_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  started_dir=$(mktemp -d "${TMPDIR:-/tmp}/tally-test-broker.XXXXXX")
  KAFKA_BOOTSTRAP=$(BROKER_DIR=$started_dir BROKER_PORT=$port scripts/broker.sh start)
  export KAFKA_BOOTSTRAP
fi
echo "test: broker $KAFKA_BOOTSTRAP" >&2

cargo test --workspace "$@"
