#!/usr/bin/env bash
# Throughput benchmark (not a test): 200,000 generated events (5% malformed)
# through `tally run` in exactly-once mode, and on the same broker in the same
# run through a plain at-least-once copy loop (`tally copy`: no transactions, no
# validation). Prints records/s for both.
#
#   scripts/bench.sh [EVENTS] [PARTITIONS]
#
# Uses KAFKA_BOOTSTRAP when set, else starts the local broker (and stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}
partitions=${2:-6}

. scripts/lib.sh
tally_bench_start bench

id=bench-$(date +%s)
topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
"$tally" create-topics "${topics[@]}" --partitions "$partitions" > /dev/null
"$tally" create-topics --input-topic "$id-in" --output-topic "$id-copy" --dlq-topic "$id-dlq" \
  --insights-topic "$id-ins" --partitions "$partitions" > /dev/null
echo "bench: producing $events events to $id-in ($partitions partitions)" >&2
"$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --huge false --seed 7 >&2

now() { date +%s.%N; }
rate() { python3 -c "import sys; n,a,b=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print(f'{n/(b-a):,.0f} records/s ({b-a:.2f} s)')" "$@"; }

# Exactly once: from process start (includes joining the group) to the last commit.
t0=$(now)
"$tally" run "${topics[@]}" --group-id "$id-eos" --instance-id "$id-1" --state-dir "$work/state" \
  --progress-secs 60 2> "$work/run.log" &
run_pid=$!
"$tally" lag --group-id "$id-eos" --input-topic "$id-in" --wait-for "$events" --timeout 900 > /dev/null
t1=$(now)
kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
eos=$(rate "$events" "$t0" "$t1")

# At least once: the same input copied by a plain consumer/producer loop.
t0=$(now)
"$tally" copy --input-topic "$id-in" --output-topic "$id-copy" --group-id "$id-copy" --count "$events" > /dev/null
t1=$(now)
alo=$(rate "$events" "$t0" "$t1")

echo "exactly-once  tally run:  $eos"
echo "at-least-once copy loop:  $alo"
echo "bench: checking the exactly-once output" >&2
"$tally" verify "${topics[@]}" --group-id "$id-eos" --complete >&2
