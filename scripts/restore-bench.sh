#!/usr/bin/env bash
# Restore benchmark (not a test): how long a NEW host (empty state directory)
# takes to restore every partition after EVENTS records, and again after the
# history has tripled; plus the write volume of the insights topic.
#
#   scripts/restore-bench.sh [EVENTS] [PARTITIONS]      (default 1000000 6)
#
# 1. EVENTS generated events; instance a processes them (100 ms commits) and stops.
# 2. new host b (empty state dir) joins: restore time = from its "partitions
#    assigned" log line to the last "partition restored" line; b stops.
# 3. 2 x EVENTS more; a processes them (history tripled) and stops.
# 4. new host c: restore time again.
# 5. the cost of --snapshot-interval: a processes a live stream and is killed
#    (kill -9) mid-stream; new host d restores from snapshots older than the
#    committed offsets, replaying what lies between.
# Volume: snapshots and their bytes per input record, and snapshots per second,
# from tally's own counters (the broker may compact the topic): once while a
# works through the backlog (commits close at 5,000 records), then live at a
# steady 2,000 records/s (commits close on the 100 ms timer), with the default
# --snapshot-interval and with a snapshot at every commit.
#
# Uses KAFKA_BOOTSTRAP when set, else starts Apache Kafka (scripts/kafka.sh) and stops it.
# TALLY_BIN names a tally binary to use instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
partitions=${2:-6}

. scripts/lib.sh
tally_bench_start restore-bench

id=rbench-$(date +%s)
topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
group=(--group-id "$id-g")
"$tally" create-topics "${topics[@]}" --partitions "$partitions" > /dev/null
now() { date +%s.%N; }
say() { echo "restore-bench: $*" >&2; }

# Extra flags for instance a. Every run leaves the group when stopped: the next
# run is another instance (a new host), which must get every partition at once.
run_args=()

# Runs instance a (log $2) until the group has committed $1 records in total,
# generating $3 events at 2,000/s meanwhile if given; prints
# "<seconds> <records> <commits> <snapshots> <snapshot bytes>" of that run.
process_until() {
  local t0 t1 log=$work/$2
  t0=$(now)
  RUST_LOG=info "$tally" run "${topics[@]}" "${group[@]}" --instance-id a --state-dir "$work/a" \
    --progress-interval 600s --leave-group-on-shutdown "${run_args[@]}" 2> "$log" &
  run_pid=$!
  if [ -n "${3:-}" ]; then
    "$tally" generate --topic "$id-in" --count "$3" --rate 2000 --invalid-ratio 0.05 \
      --huge false --seed 9 >&2
  fi
  "$tally" lag "${group[@]}" --input-topic "$id-in" --wait-for "$1" --timeout 1800s > /dev/null
  t1=$(now)
  kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
  python3 - "$t0" "$t1" "$log" <<'EOF'
import re, sys
line = [l for l in open(sys.argv[3]) if ' progress ' in l][-1]
f = lambda k: re.search(rf'{k}=(\d+)', line).group(1)
print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f} {f('records_in')} {f('txn_committed')} {f('snapshots')} {f('snapshot_bytes')}")
EOF
}

# Prints the write volume of one process_until result.
volume() {
  python3 - "$@" <<'EOF'
import sys
what, secs = sys.argv[1], float(sys.argv[2])
n, commits, snaps, b = map(int, sys.argv[3:])
print(f"write volume, {what}: {n:,} records in {secs:.1f} s, {commits:,} commits ({commits/secs:.1f}/s), "
      f"{snaps:,} snapshots ({snaps/secs:.1f}/s), {b:,} bytes: {b/n:.1f} bytes per input record, "
      f"{b/max(snaps,1):,.0f} bytes per snapshot")
EOF
}

# Starts a new host (empty state dir; instance id $2, default $1), waits for every partition to be
# restored, stops it; prints "<wall secs> <slowest partition secs> <paths>
# <records replayed>".
new_host() {
  local name=$1 instance=${2:-$1} log=$work/$1.log
  RUST_LOG=info "$tally" run "${topics[@]}" "${group[@]}" --instance-id "$instance" --state-dir "$work/$name" \
    --progress-interval 60s --leave-group-on-shutdown 2> "$log" &
  run_pid=$!
  local deadline=$((SECONDS + 300))
  while [ "$(grep -c 'partition restored' "$log" || true)" -lt "$partitions" ]; do
    if [ $SECONDS -gt $deadline ] || ! kill -0 "$run_pid" 2>/dev/null; then
      cat "$log" >&2; say "$name did not restore $partitions partitions"; exit 1
    fi
    sleep 0.2
  done
  kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
  python3 - "$log" <<'EOF'
import re, sys, datetime
lines = open(sys.argv[1]).read().splitlines()
ts = lambda l: datetime.datetime.fromisoformat(re.sub(r'\x1b\[[0-9;]*m', '', l).split()[0].replace('Z', '+00:00'))
clean = [re.sub(r'\x1b\[[0-9;]*m', '', l) for l in lines]
assigned = next(ts(l) for l in clean if 'partitions assigned' in l)
restored = [l for l in clean if 'partition restored' in l]
last = max(ts(l) for l in restored)
slowest = max(float(re.search(r'secs=([0-9.e-]+)', l).group(1)) for l in restored)
paths = sorted(set(re.search(r'path="(\w+)"', l).group(1) for l in restored))
replayed = sum(int(re.search(r'records=(\d+)', l).group(1)) for l in restored)
print(f"{(last - assigned).total_seconds():.3f} {slowest:.3f} {','.join(paths)} {replayed}")
EOF
}

say "producing $events events to $id-in ($partitions partitions)"
"$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --huge false --seed 7 >&2
backlog=$(process_until "$events" a1.log)
read -r wall1 slow1 paths1 _ < <(new_host b)

total=$((events * 3))
say "producing $((events * 2)) more events (history x3)"
"$tally" generate --topic "$id-in" --count "$((events * 2))" --invalid-ratio 0.05 --huge false --seed 8 >&2
process_until "$total" a2.log > /dev/null
read -r wall3 slow3 paths3 _ < <(new_host c)

say "live: 40,000 events at 2,000/s"
live=$(process_until "$((total + 40000))" a3.log 40000)
say "live: 40,000 events at 2,000/s, a snapshot with every commit"
run_args=(--snapshot-interval 1ms --snapshot-input-ratio 0)
live_every=$(process_until "$((total + 80000))" a4.log 40000)
run_args=()

say "crash: a killed (kill -9) 6 s into a live stream at 2,000/s, new host d in its place"
RUST_LOG=info "$tally" run "${topics[@]}" "${group[@]}" --instance-id a --state-dir "$work/a" \
  --progress-interval 600s 2> "$work/a5.log" &
run_pid=$!
"$tally" generate --topic "$id-in" --count 12000 --rate 2000 --invalid-ratio 0.05 \
  --huge false --seed 10 >&2
kill -KILL "$run_pid"; wait "$run_pid" || true; run_pid=
# d takes a's place (its instance id: the static member replaces it at once, as a
# rescheduled pod whose volume was lost would) with an empty state directory.
read -r wall5 slow5 paths5 replayed5 < <(new_host d a)

# shellcheck disable=SC2086
volume "backlog (commits close at 5,000 records)" $backlog
# shellcheck disable=SC2086
volume "live at 2,000 records/s (commits close on the 100 ms timer), default --snapshot-interval" $live
# shellcheck disable=SC2086
volume "live at 2,000 records/s, a snapshot with every commit (--snapshot-interval 1ms)" $live_every
echo "new host after $(printf "%'d" "$events") records: all $partitions partitions restored in ${wall1} s (slowest partition ${slow1} s, paths: ${paths1})"
echo "new host after $(printf "%'d" "$total") records: all $partitions partitions restored in ${wall3} s (slowest partition ${slow3} s, paths: ${paths3})"
echo "new host after a kill -9 mid-stream: all $partitions partitions restored in ${wall5} s (slowest partition ${slow5} s, paths: ${paths5}, ${replayed5} records replayed)"
