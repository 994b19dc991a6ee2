#!/usr/bin/env bash
# Peak memory of `tally run` (not a test): the resident set's high-water mark
# (VmHWM of /proc/PID/status) while it works through a backlog, in two scenarios:
#   normal  EVENTS generated events, 5% malformed, no large payloads;
#   huge    the same with the generator's 1 MiB malformed payloads and a burst of
#           twenty 1 MiB records every 2,000 events.
# A backlog is the worst case for prefetching. Prints VmHWM (peak) and the VmRSS
# seen at the end (steady) per scenario, and the targets: peak under
# 128 MiB with 1 MiB records, under 64 MiB for normal traffic.
#
#   scripts/rss.sh [EVENTS] [PARTITIONS]
#
# TALLY_BIN=path measures that binary instead of building the release one;
# RSS_RUN_ARGS (e.g. "-X fetch.max.bytes=1048576") is added to `tally run`;
# RSS_SCENARIOS (default "normal huge") picks the scenarios; RSS_RATE=N produces
# the events at N/s while tally runs (a live stream) instead of as a backlog;
# RSS_RUN_BIN runs another `tally` binary (e.g. an older build) for `tally run`.
# Uses KAFKA_BOOTSTRAP when set, else starts Apache Kafka (scripts/kafka.sh) and
# stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-50000}
partitions=${2:-6}

. scripts/lib.sh
tally_bench_start rss

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# measure NAME GENERATE-ARGS...: prints "NAME peak_mib steady_mib".
measure() {
  local name=$1; shift
  local id="rss-$name-$(date +%s)"
  local topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
  "$tally" create-topics "${topics[@]}" --partitions "$partitions" > /dev/null
  echo "rss: $name: producing $events events (rate ${RSS_RATE:-backlog})" >&2
  local gen=("$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --seed 7 "$@")
  if [ -n "${RSS_RATE:-}" ]; then
    "${gen[@]}" --rate "$RSS_RATE" >&2 &
  else
    "${gen[@]}" >&2
  fi
  "${RSS_RUN_BIN:-$tally}" run "${topics[@]}" --group-id "$id" --instance-id "$id-1" --state-dir "$work/state-$name" \
    --progress-interval 60s ${RSS_RUN_ARGS:-} 2> "$work/run-$name.log" &
  run_pid=$!
  "$tally" lag --group-id "$id" --input-topic "$id-in" --wait-for "$events" --timeout 900s > /dev/null &
  local lag_pid=$!
  local peak=0 rss=0
  while kill -0 "$lag_pid" 2>/dev/null; do
    peak=$(status_kib "$run_pid" VmHWM); rss=$(status_kib "$run_pid" VmRSS)
    sleep 0.2
  done
  wait "$lag_pid"
  peak=$(status_kib "$run_pid" VmHWM); rss=$(status_kib "$run_pid" VmRSS)
  kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
  "$tally" verify "${topics[@]}" --group-id "$id" --complete >&2
  awk -v n="$name" -v p="$peak" -v r="$rss" 'BEGIN { printf "%-7s peak (VmHWM) %6.1f MiB   at the end (VmRSS) %6.1f MiB\n", n, p/1024, r/1024 }'
}

for s in ${RSS_SCENARIOS:-normal huge}; do
  case $s in
    normal) measure normal --huge false ;;
    huge) measure huge --huge true --oversize 1048576x20 --oversize-every 2000 ;;
  esac
done
echo "targets: huge peak < 128 MiB; normal < 64 MiB"
