#!/usr/bin/env bash
# CPU profile of `tally run` (release build) draining a backlog: `perf record -g`
# from start to all committed, then the top entries of `perf report` (self time,
# and with children). The perf data stays in PERF_DATA (default ./perf.data).
#
#   scripts/profile.sh [EVENTS] [PARTITIONS]
#   env: TALLY_BIN, PERF_DATA, COMMIT_INTERVAL_MS (100), TOP (25)
#
# Uses KAFKA_BOOTSTRAP when set, else starts Apache Kafka (scripts/kafka.sh) and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}
partitions=${2:-6}
data=${PERF_DATA:-$PWD/perf.data}
top=${TOP:-25}

. scripts/lib.sh
tally_bench_start profile
command -v perf > /dev/null || { echo "profile: perf is not installed (Debian: linux-perf)" >&2; exit 1; }

id=profile-$(date +%s)
topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
"$tally" create-topics "${topics[@]}" --partitions "$partitions" > /dev/null
"$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --huge false --seed 7 > /dev/null 2>&1

perf record -g -o "$data" -- "$tally" run "${topics[@]}" --group-id "$id" --instance-id "$id" \
  --state-dir "$work/state" --commit-interval "${COMMIT_INTERVAL_MS:-100}ms" --progress-interval 60s \
  --metrics-addr 127.0.0.1:0 2> "$work/run.log" &
run_pid=$!
"$tally" lag --group-id "$id" --input-topic "$id-in" --wait-for "$events" --timeout 900s > /dev/null
pkill -TERM -P "$run_pid"
wait "$run_pid" || true
run_pid=

echo "== self time (top $top)"
perf report -i "$data" --no-children --percent-limit 0.5 --stdio -g none 2> /dev/null \
  | grep -E '^ +[0-9]' | head -n "$top"
echo "== by thread"
perf report -i "$data" --no-children --sort comm --stdio 2> /dev/null \
  | grep -E '^ +[0-9]' | head -n "$top"
