#!/usr/bin/env bash
# Performance benchmark (not a test). For `tally run` (exactly once) at two commit
# intervals and for the at-least-once baseline `tally copy` (no transactions, no
# validation), on the same broker in one run, prints one table:
#
#   records/s      EVENTS generated events (5% malformed) already in the input,
#                  from process start (joining the group included) to all committed
#   CPU us/rec     the process's own CPU time (user + system) per record, until all
#                  is committed: `tally copy` exits there by itself; `tally run` is
#                  sampled when the lag probe sees everything committed (up to 20 ms
#                  later; the CPU of its shutdown is printed apart, on stderr)
#   peak RSS       peak resident set of the process on the backlog, and on the
#                  live stream of the latency phase ("live")
#   broker us/rec  the local Kafka broker's CPU time per record during that phase
#                  ("-" when KAFKA_BOOTSTRAP names a broker we did not start)
#   broker RSS     the broker's resident set at the end of the phase (MiB; the
#                  JVM's heap is sized by KAFKA_HEAP, see scripts/kafka.sh)
#   p50/p99 ms     end-to-end latency at RATE events/s: from the input record's
#                  timestamp until a read_committed consumer sees the output
#                  (`tally latency`), LATENCY_EVENTS events after the processor is ready
#
#   scripts/bench.sh [EVENTS] [PARTITIONS]
#   scripts/bench.sh --peers [EVENTS] [PARTITIONS]   tally against Kafka Streams, Quix
#                                                    Streams and a naive Python pipeline:
#                                                    runs bench/peers/run.sh
#   env: RATE (2000), LATENCY_EVENTS (20000; 0 skips the latency phase),
#        BROKER_WARMUP (1; 0 skips the untimed first row that warms the broker up),
#        KINDS (rows, default "run-100 run-1000 copy": run-<commit interval ms>), TALLY_BIN,
#        REPEAT (1): rows per kind, alternating kinds; with more than one, a second
#        table gives each kind's median per column (single runs spread widely on a
#        shared machine: docs/benchmarks.md, "The machine")
#
# Uses KAFKA_BOOTSTRAP when set, else starts Apache Kafka (scripts/kafka.sh) and
# stops it. Every row deletes its topics when measured: a broker's cost per
# record grows as topics accumulate, and a real cluster should not keep a
# benchmark's records either.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --peers ]; then
  shift
  exec bench/peers/run.sh "$@"
fi
events=${1:-200000}
partitions=${2:-6}
rate=${RATE:-2000}
latency_events=${LATENCY_EVENTS:-20000}
kinds=${KINDS:-run-100 run-1000 copy}

if [ "$latency_events" -gt 0 ] && [ $((latency_events * 9 / 10)) -le $((rate * 2)) ]; then
  echo "bench: LATENCY_EVENTS=$latency_events is too few: the first 2 s at $rate events/s are skipped" >&2
  exit 2
fi

. scripts/lib.sh
tally_bench_start bench
broker_pid=$(tally_broker_pids | head -n 1)
tick=$(getconf CLK_TCK)

# CPU seconds (user + system) of a live process.
cpu_secs() { awk -v t="$tick" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
broker_cpu() { if [ -n "$broker_pid" ]; then cpu_secs "$broker_pid"; else echo 0; fi; }
broker_rss_kib() { if [ -n "$broker_pid" ]; then awk '$1 == "VmRSS:" { print $2 }' "/proc/$broker_pid/status"; else echo 0; fi; }
now() { date +%s.%N; }

# Topic names for one phase; the processed topic is "$1-out".
topics_of() { echo --input-topic "$1-in" --output-topic "$1-out" --dlq-topic "$1-dlq" --insights-topic "$1-ins"; }
fresh() { # name -> creates its topics
  # shellcheck disable=SC2046
  "$tally" create-topics $(topics_of "$1") --partitions "$partitions" > /dev/null
}
cleanup() { # name -> deletes its topics
  "$tally" delete-topics --yes "$1-in" "$1-out" "$1-dlq" "$1-ins" > /dev/null \
    || echo "bench: could not delete the topics of $1" >&2
}

# Starts the processor `$1` (run-<ms> or copy) on the topics of `$2` in the
# background, under GNU time (its CPU and peak RSS land in $work/$2.time).
start_processor() {
  local kind=$1 id=$2 count=$3
  # shellcheck disable=SC2046
  if [ "$kind" = copy ]; then
    /usr/bin/time -f '%U %S %M' -o "$work/$id.time" \
      "$tally" copy $(topics_of "$id") --group-id "$id" --count "$count" > /dev/null 2> "$work/$id.log" &
  else
    /usr/bin/time -f '%U %S %M' -o "$work/$id.time" \
      "$tally" run $(topics_of "$id") --group-id "$id" --instance-id "$id" \
      --state-dir "$work/state-$id" --commit-interval "${kind#run-}ms" --progress-interval 60s \
      --metrics-addr "127.0.0.1:$4" 2> "$work/$id.log" &
  fi
  proc_pid=$!
}

# Waits for the processor of phase `$1` to exit (SIGTERM for `tally run`).
stop_processor() {
  local kind=$1
  [ "$kind" = copy ] || pkill -TERM -P "$proc_pid" 2>/dev/null || true
  wait "$proc_pid" || true
}

# One row of the table: throughput, CPU, RSS and broker CPU on a backlog, then
# latency on a live stream.
measure() {
  local kind=$1 id port b0 b1 brss t0 t1 user sys rss child
  id=bench-$kind-$2-$(date +%s)
  fresh "$id"
  # The backlog: the same seed, so every row reads the same records.
  "$tally" generate --topic "$id-in" --count "$events" --invalid-ratio 0.05 --huge false --seed 7 > /dev/null 2>&1
  port=$(tally_free_port)
  b0=$(broker_cpu); t0=$(now)
  start_processor "$kind" "$id" "$events" "$port"
  local at_committed=
  if [ "$kind" = copy ]; then
    wait "$proc_pid"
  else
    "$tally" lag --group-id "$id" --input-topic "$id-in" --wait-for "$events" --timeout 900s > /dev/null \
      || echo "bench: $kind: not all committed within 900 s" >&2
    child=$(pgrep -P "$proc_pid" | head -1) || true
    if [ -n "$child" ]; then
      at_committed=$(cpu_secs "$child")
    else
      echo "bench: $kind: tally run had exited; its row counts the CPU until exit" >&2
    fi
  fi
  t1=$(now); b1=$(broker_cpu); brss=$(broker_rss_kib)
  [ "$kind" = copy ] || stop_processor "$kind"
  read -r user sys rss < "$work/$id.time"
  if [ -n "$at_committed" ]; then
    python3 -c 'import sys; k, n, a, u, s = sys.argv[1:]; print(f"bench: {k}: {(float(u) + float(s) - float(a)) / int(n) * 1e6:.2f} us/rec more until exit (shutdown, idle)", file=sys.stderr)' \
      "$kind" "$events" "$at_committed" "$user" "$sys"
    user=$at_committed sys=0
  fi
  # shellcheck disable=SC2046
  if [ "$kind" != copy ] && ! "$tally" verify $(topics_of "$id") --group-id "$id" --complete > /dev/null 2>&1; then
    echo "bench: $kind: verify found a problem; topics kept (rerun: tally verify $(topics_of "$id") --group-id $id)" >&2
  else
    cleanup "$id"
  fi

  # Latency: a fresh input, the processor ready, then a steady stream.
  local lid=$id-lat lat="      -       -" live_rss=0
  if [ "$latency_events" -gt 0 ]; then
  fresh "$lid"
  port=$(tally_free_port)
  start_processor "$kind" "$lid" "$latency_events" "$port"
  if [ "$kind" = copy ]; then
    sleep 6 # joined the group (no readiness endpoint)
  else
    for _ in $(seq 1 300); do
      curl -fs "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
      sleep 0.1
    done
  fi
  # The first 2 s of the stream are skipped (the generator's first records wait for
  # its connection); 90% of the events reach the output topic (5% are malformed).
  local skip=$((rate * 2))
  "$tally" latency --topic "$lid-out" --skip "$skip" --count "$((latency_events * 90 / 100 - skip))" > "$work/$lid.json" &
  local probe=$!
  sleep 1
  "$tally" generate --topic "$lid-in" --count "$latency_events" --rate "$rate" --invalid-ratio 0.05 --huge false --seed 8 > /dev/null 2>&1
  wait "$probe" || true
  stop_processor "$kind"
  lat=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%7d %7d" % (d["p50_ms"], d["p99_ms"]))' "$work/$lid.json" 2>/dev/null || echo "      -       -")
  live_rss=$(awk '{ print $3 }' "$work/$lid.time")
  cleanup "$lid"
  fi

  python3 - "$kind" "$events" "$t0" "$t1" "$user" "$sys" "$rss" "$b0" "$b1" "$broker_pid" "$lat" "$live_rss" "$brss" <<'EOF'
import sys
kind, n, t0, t1, user, sys_, rss, b0, b1, broker, lat, live, brss = sys.argv[1:]
n = int(n); wall = float(t1) - float(t0)
cpu = float(user) + float(sys_)
brk = f"{(float(b1) - float(b0)) / n * 1e6:10.1f}" if broker else f"{'-':>10}"
brss = f"{int(brss) / 1024:>9.0f}" if broker else f"{'-':>9}"
live = f"{int(live) / 1024:>9.1f}" if int(live) else f"{'-':>9}"
print(f"{kind:<9} {n / wall:>10,.0f} {cpu / n * 1e6:>10.2f} {int(rss) / 1024:>9.1f} {live} {brk} {brss} {lat}")
EOF
}

echo "bench: $events events, $partitions partitions, latency at $rate events/s ($latency_events events)" >&2
# A broker's JVM is slower until it has warmed up (the first row of a run drained
# at about half the rate of the others, at three times the broker CPU per
# record): one untimed `tally run` row first, so no timed row pays for it.
if [ "${BROKER_WARMUP:-1}" != 0 ]; then
  echo "bench: warming the broker up with one untimed run-100 row (BROKER_WARMUP=0 skips)" >&2
  latency_events=0 measure run-100 warmup > /dev/null
fi
rows=()
for r in $(seq 1 "${REPEAT:-1}"); do
  for kind in $kinds; do
    rows+=("$(measure "$kind" "$r")")
  done
done
header() { printf '%-9s %10s %10s %9s %9s %10s %9s %7s %7s\n' kind "records/s" "CPU us/rec" "RSS MiB" "live MiB" "brk us/rec" "brk MiB" "p50 ms" "p99 ms"; }
header
printf '%s\n' "${rows[@]}"
if [ "${REPEAT:-1}" -gt 1 ]; then
  echo
  echo "median of $REPEAT rows per kind:"
  header
  printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    f = line.split()
    if len(f) < 9:
        continue
    rows.setdefault(f[0], []).append(f[1:])
for kind, rs in rows.items():
    def med(i):
        vals = [float(r[i].replace(",", "")) for r in rs if r[i] != "-"]
        return statistics.median(vals) if vals else None
    m = [med(i) for i in range(8)]
    fmt = lambda v, w, p: "-".rjust(w) if v is None else f"{v:>{w},.{p}f}"
    print(f"{kind:<9} {fmt(m[0],10,0)} {fmt(m[1],10,2)} {fmt(m[2],9,1)} {fmt(m[3],9,1)} {fmt(m[4],10,1)} {fmt(m[5],9,0)} {fmt(m[6],7,0)} {fmt(m[7],7,0)}")
'
fi
