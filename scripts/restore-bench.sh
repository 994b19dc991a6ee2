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
# Volume: snapshots and bytes in the insights topic per input record, and
# snapshots per second while a processed.
#
# Uses KAFKA_BOOTSTRAP when set, else starts the local broker (and stops it).
# TALLY_BIN names a tally binary to use instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
partitions=${2:-6}

. scripts/lib.sh
tally_release_bin

run_pid=
work=$(mktemp -d "${TMPDIR:-/tmp}/tally-restore-bench.XXXXXX")
stop_run() {
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null || true
  rm -rf "$work"
}
tally_traps stop_run
tally_ensure_broker

id=rbench-$(date +%s)
topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
group=(--group-id "$id-g")
"$tally" create-topics "${topics[@]}" --partitions "$partitions" > /dev/null
now() { date +%s.%N; }
say() { echo "restore-bench: $*" >&2; }

# Runs instance a until the group has committed $1 records in total; prints seconds.
process_until() {
  local t0 t1
  t0=$(now)
  RUST_LOG=info "$tally" run "${topics[@]}" "${group[@]}" --instance-id a --state-dir "$work/a" \
    --progress-secs 60 2>> "$work/a.log" &
  run_pid=$!
  "$tally" lag "${group[@]}" --input-topic "$id-in" --wait-for "$1" --timeout 1800 > /dev/null
  t1=$(now)
  kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
  python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$t0" "$t1"
}

# Starts a new host (empty state dir), waits for every partition to be
# restored, stops it; prints "<wall secs> <slowest partition secs> <paths>".
new_host() {
  local name=$1 log=$work/$1.log
  RUST_LOG=info "$tally" run "${topics[@]}" "${group[@]}" --instance-id "$name" --state-dir "$work/$name" \
    --progress-secs 60 2> "$log" &
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
print(f"{(last - assigned).total_seconds():.3f} {slowest:.3f} {','.join(paths)}")
EOF
}

say "producing $events events to $id-in ($partitions partitions)"
"$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --huge false --seed 7 >&2
secs1=$(process_until "$events")
read -r snaps bytes < <("$tally" insights --insights-topic "$id-ins" --input-topic "$id-in" --json --volume |
  python3 -c 'import json,sys; v=json.load(sys.stdin)["volume"]; print(v["snapshots"], v["bytes"])')
read -r wall1 slow1 paths1 < <(new_host b)

total=$((events * 3))
say "producing $((events * 2)) more events (history x3)"
"$tally" generate --topic "$id-in" --count "$((events * 2))" --invalid-ratio 0.05 --huge false --seed 8 >&2
process_until "$total" > /dev/null
read -r wall3 slow3 paths3 < <(new_host c)

python3 - "$events" "$secs1" "$snaps" "$bytes" <<EOF
import sys
n, secs, snaps, b = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"write volume ({n:,} records, 100 ms commits, {secs:.1f} s of processing):")
print(f"  {snaps:,} snapshots, {b:,} bytes: {b/n:.1f} bytes per input record, "
      f"{b/max(snaps,1):,.0f} bytes per snapshot, {snaps/secs:.1f} snapshots/s")
EOF
echo "new host after $(printf "%'d" "$events") records: all $partitions partitions restored in ${wall1} s (slowest partition ${slow1} s, paths: ${paths1})"
echo "new host after $(printf "%'d" "$total") records: all $partitions partitions restored in ${wall3} s (slowest partition ${slow3} s, paths: ${paths3})"
