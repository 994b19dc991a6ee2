#!/usr/bin/env bash
# tally against the systems a user would pick instead, on one Apache Kafka, the
# same input for every system (bench/peers/README.md says what each one is and
# why each setting is what it is). Prints one table, a row per run:
#
#   records/s      EVENTS generated events (5% malformed) already in the input, from
#                  the start (Kafka Streams: after its warm-up, see README) until the
#                  group's committed offsets cover all of them
#   CPU us/rec     the processor's own CPU (user + system) per record over that window
#   RSS MiB        its peak resident set (VmHWM) when all was committed
#   brk us/rec     the broker's CPU per record over that window
#   p50/p99 ms     input record timestamp to visible to a read_committed reader, at
#                  RATE events/s after the processor joined (`tally latency`)
#   state/in       bytes the system's state topic (tally: insights snapshots;
#                  Kafka Streams, Quix: changelog) holds per input byte, on the backlog
#   out/in         the same for the output and DLQ topics
#   verdict        OK when a read_committed reader finds exactly the valid records in
#                  the output, exactly the malformed ones in the DLQ, and the group
#                  committed every input offset; otherwise what differs
#
#   bench/peers/run.sh [EVENTS] [PARTITIONS]        (default 200000 6)
#   env: SYSTEMS (default "run copy streams streams-defaults quix seeds"; also
#        run-<codec>: tally run with that producer compression), REPEAT (1,
#        alternating systems; medians after), RATE (2000), LATENCY_EVENTS (20000; 0
#        skips), WARMUP_EVENTS (20000: Kafka Streams' JIT warm-up, 0 skips),
#        BROKER_WARMUP (1; 0 skips the untimed first row that warms the broker up),
#        RESTORE_EVENTS (0: no restore rows; the issue's figure is 1000000),
#        RESTORE_REPEAT (1; N alternates the restore rows N times, medians after),
#        RESTORE_SYSTEMS ("run streams"),
#        AMP (0; 1 adds the write-amplification table: tally and Kafka Streams at
#        6 and 60 partitions, AMP_HIGH and AMP_LOW events/s (2000, 200) for
#        AMP_SECONDS (20) each, tally with each of AMP_CODECS ("none lz4");
#        AMP_PARTITIONS ("6 60"), AMP_STREAMS (1; 0 leaves Kafka Streams out))
#
# Uses KAFKA_BOOTSTRAP when set, else starts Apache Kafka (scripts/kafka.sh) and
# stops it. Needs Java 17 and Maven (the Kafka Streams peer is built here, its jars
# cached in TOOLS_DIR/m2) and python3 (the Python peers get a venv in
# TOOLS_DIR/peers-venv). Every row deletes its topics once measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
events=${1:-200000}
partitions=${2:-6}
systems=${SYSTEMS:-run copy streams streams-defaults quix seeds}
rate=${RATE:-2000}
latency_events=${LATENCY_EVENTS:-20000}
warmup_events=${WARMUP_EVENTS:-20000}
restore_events=${RESTORE_EVENTS:-0}
restore_repeat=${RESTORE_REPEAT:-1}
restore_systems=${RESTORE_SYSTEMS:-run streams}
tools=${TOOLS_DIR:-$repo/.tools}
export TOOLS_DIR=$tools
# Every peer runs with a 10 s consumer session (see README.md): tally too.
export TALLY_SESSION_TIMEOUT=10s

. scripts/lib.sh
procs=()
stop_procs() { # every processor this script started and that still runs, by PID
  local p
  for p in "${procs[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${procs[@]}"; do wait "$p" 2>/dev/null || true; done
}
tally_bench_start peers
trap 'stop_procs; tally_bench_stop_run; tally_stop_broker' EXIT
broker_pid=$(tally_broker_pids | head -n 1)
tick=$(getconf CLK_TCK)

# The peers: Kafka Streams built with Maven, the Python ones in a venv.
streams_dir=bench/peers/streams
echo "peers: building the Kafka Streams peer (Maven, jars cached in $tools/m2)" >&2
mvn -B -q -Dmaven.repo.local="$tools/m2" -f "$streams_dir/pom.xml" package > "$work/mvn.log" 2>&1 \
  || { cat "$work/mvn.log" >&2; echo "peers: building the Kafka Streams peer failed" >&2; exit 1; }
java_cp="$streams_dir/target/classes:$streams_dir/target/lib/*"
venv=$tools/peers-venv
if ! cmp -s bench/peers/python/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  echo "peers: installing the Python peers into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r bench/peers/python/requirements.txt >&2
  cp bench/peers/python/requirements.txt "$venv/requirements.txt"
fi
py=$venv/bin/python
pytools() { "$py" bench/peers/python/tools.py --bootstrap "$KAFKA_BOOTSTRAP" "$@"; }
sizes() { java -cp "$java_cp" tally.peers.Sizes "$KAFKA_BOOTSTRAP" "$@"; }

cpu_secs() { awk -v t="$tick" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo; }
hwm_kib() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status" 2>/dev/null || echo; }
broker_cpu() { if [ -n "$broker_pid" ]; then cpu_secs "$broker_pid"; else echo 0; fi; }
now() { date +%s.%N; }

# Fresh topics for one run, `$1-in` with `$2` partitions; the input is the
# generator's with seed 7 (`$3` events; every row reads the same records).
# Prints the number of malformed events.
fresh_input() {
  local id=$1 parts=$2 n=$3 seed=${4:-7}
  "$tally" create-topics --input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" \
    --insights-topic "$id-ins" --partitions "$parts" > /dev/null
  if [ "$n" -gt 0 ]; then
    "$tally" generate --topic "$id-in" --count "$n" --invalid-ratio 0.05 --huge false --seed "$seed" \
      | sed -n 's/^generated [0-9]* events (\([0-9]*\) malformed).*/\1/p'
  fi
}
# The state topics a system made for group `$1` (Kafka Streams, Quix).
state_topics() { pytools topics --contains "$1" | grep changelog | grep -v -- "$1-warmup" || true; }
drop_topics() { # id group
  local t
  # shellcheck disable=SC2046
  "$tally" delete-topics --yes "$1-in" "$1-out" "$1-dlq" "$1-ins" $(state_topics "$2") > /dev/null 2>&1 \
    || echo "peers: could not delete the topics of $1" >&2
  for t in "$1-w"; do
    # shellcheck disable=SC2046
    "$tally" delete-topics --yes "$t-in" "$t-out" "$t-dlq" "$t-ins" $(state_topics "$2-warmup") > /dev/null 2>&1 || true
  done
}

# Starts system `$1` on the topics of `$2` (group `$3`) in the background; `$4`
# input records (the Python peers and `tally copy` stop by themselves there);
# `$5` a metrics port for `tally run`. Sets `pid`.
start_system() {
  local sys=$1 id=$2 group=$3 n=$4 port=$5 log=$work/$2.log
  local topics=(--input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" --insights-topic "$id-ins")
  case "$sys" in
    run|run-*) # run-<codec>: with that producer compression
      local codec=()
      [ "$sys" = run ] || codec=(-X "compression.codec=${sys#run-}")
      "$tally" run "${topics[@]}" --group-id "$group" --instance-id "$group" --state-dir "$work/state-$id" \
        --progress-interval 60s --metrics-addr "127.0.0.1:$port" "${codec[@]}" ${TALLY_RUN_ARGS:-} > /dev/null 2> "$log" & ;;
    copy) # exits once it committed `n` records; GNU time keeps its CPU and peak RSS
      /usr/bin/time -f '%U %S %M' -o "$work/$id.time" \
        "$tally" copy "${topics[@]}" --group-id "$group" --count "$n" > /dev/null 2> "$log" & ;;
    streams|streams-defaults)
      local profile=tuned heap=(-Xms64m -Xmx256m)
      [ "$sys" = streams-defaults ] && { profile=defaults; heap=(); }
      if [ "$warmup_events" -gt 0 ]; then
        fresh_input "$id-w" "$partitions" "$warmup_events" 9 > /dev/null
      fi
      java "${heap[@]}" -Dlog4j2.configurationFile="$streams_dir/log4j2.properties" -cp "$java_cp" \
        tally.peers.StreamsPeer run --bootstrap "$KAFKA_BOOTSTRAP" --app-id "$group" \
        --input "$id-in" --output "$id-out" --dlq "$id-dlq" --state-dir "$work/state-$id" \
        --profile "$profile" --warmup-count "$warmup_events" --warmup-prefix "$id-w" \
        > "$work/$id.out" 2> "$log" & ;;
    quix)
      "$py" bench/peers/python/quix_eos.py --bootstrap "$KAFKA_BOOTSTRAP" --input "$id-in" --output "$id-out" \
        --dlq "$id-dlq" --group "$group" --state-dir "$work/state-$id" --count "$n" > /dev/null 2> "$log" & ;;
    seeds)
      "$py" bench/peers/python/seeds.py --bootstrap "$KAFKA_BOOTSTRAP" --input "$id-in" --output "$id-out" \
        --dlq "$id-dlq" --group "$group" --count "$n" > /dev/null 2> "$log" & ;;
    *) echo "peers: unknown system $sys" >&2; exit 2 ;;
  esac
  pid=$!
  procs+=("$pid")
}

# Stops `$1` (SIGTERM: every system stops cleanly on it) and waits for it.
stop_system() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Waits for Kafka Streams' "timed-start" line (after its warm-up); prints
# "<epoch secs> <cpu secs>" then.
streams_started() {
  local out=$1 p=$2 line
  for _ in $(seq 1 6000); do
    line=$(grep -m1 '^timed-start ' "$out" 2>/dev/null || true)
    [ -n "$line" ] && { awk '{ printf "%.3f %.3f\n", $2 / 1000, $3 / 1e9 }' <<< "$line"; return 0; }
    kill -0 "$p" 2>/dev/null || { echo "peers: Kafka Streams exited before its timed start" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

# One row: the backlog (throughput, CPU, RSS, broker CPU, state bytes, checks),
# then the latency phase.
measure() {
  local sys=$1 round=$2 id group port malformed t0 t1 c0=0 c1 b0 b1 hwm
  id=peers-$sys-$round-$(date +%s)
  group=$id
  malformed=$(fresh_input "$id" "$partitions" "$events")
  port=$(tally_free_port)
  t0=$(now)
  # The Python peers run until stopped (count 0): one that exits by itself could
  # be gone before its CPU is read.
  local count=$events
  case "$sys" in quix|seeds) count=0 ;; esac
  start_system "$sys" "$id" "$group" "$count" "$port"
  if [[ $sys == streams* ]]; then
    read -r t0 c0 < <(streams_started "$work/$id.out" "$pid") || true
  fi
  b0=$(broker_cpu)
  if [ "$sys" = copy ]; then
    wait "$pid" || echo "peers: tally copy failed: $(tail -n 3 "$work/$id.log")" >&2
    t1=$(now); b1=$(broker_cpu)
    read -r c1 hwm < <(awk '{ print $1 + $2, $3 }' "$work/$id.time") || true
  else
    "$tally" lag --group-id "$group" --input-topic "$id-in" --wait-for "$events" --timeout 900s > /dev/null \
      || echo "peers: $sys: not all committed within 900 s" >&2
    t1=$(now); b1=$(broker_cpu); c1=$(cpu_secs "$pid"); hwm=$(hwm_kib "$pid")
  fi
  if [ -z "$c1" ]; then
    echo "peers: $sys had exited when all was committed: its CPU and RSS are not known" >&2
    c1=$c0 hwm=0
  fi
  stop_system "$pid"

  # The checks, with a read_committed reader and the group's committed offsets.
  local out dlq committed verdict sz
  out=$(pytools count --topic "$id-out"); dlq=$(pytools count --topic "$id-dlq")
  committed=$(pytools committed --topic "$id-in" --group "$group")
  local want_out=$((events - malformed)) want_dlq=$malformed
  [ "$sys" = copy ] && { want_out=$events want_dlq=0; }
  if [ "$out" = "$want_out" ] && [ "$dlq" = "$want_dlq" ] && [ "$committed" = "$events" ]; then
    verdict=OK
  else
    verdict="WRONG(out=$out/$want_out,dlq=$dlq/$want_dlq,committed=$committed/$events)"
  fi
  if [[ $sys == run* ]] && [ "$verdict" = OK ]; then
    "$tally" verify --input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" \
      --insights-topic "$id-ins" --group-id "$group" --complete > /dev/null 2>&1 || verdict="WRONG(tally verify)"
  fi
  # shellcheck disable=SC2046
  sz=$(sizes "$id-in" "$id-out" "$id-dlq" "$id-ins" $(state_topics "$group") | awk -v id="$id" '
    $1 == id "-in" { i = $2; next } $1 == id "-out" || $1 == id "-dlq" { o += $2; next } { s += $2 }
    END { printf "%.3f %.3f", s / i, o / i }')
  drop_topics "$id" "$group"

  # Latency: fresh topics, the processor in its group, then a steady stream.
  local lat="- -"
  if [ "$latency_events" -gt 0 ]; then
    local lid=$id-lat lgroup=$id-lat skip=$((rate * 2)) probe
    fresh_input "$lid" "$partitions" 0 > /dev/null
    port=$(tally_free_port)
    start_system "$sys" "$lid" "$lgroup" "$latency_events" "$port"
    local lpid=$pid
    if [[ $sys == run* ]]; then
      for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
        sleep 0.1
      done
    elif [ "$sys" = copy ]; then
      sleep 6 # joined the group (no readiness endpoint)
    else
      [[ $sys == streams* ]] && streams_started "$work/$lid.out" "$lpid" > /dev/null
      pytools wait-group --group "$lgroup" --topic "$lid-in" --timeout 120 \
        || echo "peers: $sys: its group did not settle; latency measured anyway" >&2
    fi
    local want=$((latency_events * 90 / 100 - skip))
    [ "$sys" = copy ] && want=$((latency_events * 95 / 100 - skip))
    "$tally" latency --topic "$lid-out" --skip "$skip" --count "$want" > "$work/$lid.json" &
    probe=$!
    sleep 1
    "$tally" generate --topic "$lid-in" --count "$latency_events" --rate "$rate" --invalid-ratio 0.05 \
      --huge false --seed 8 > /dev/null 2>&1
    wait "$probe" || true
    stop_system "$lpid"
    lat=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["p50_ms"], d["p99_ms"])' \
      "$work/$lid.json" 2>/dev/null || echo "- -")
    drop_topics "$lid" "$lgroup"
  fi

  python3 - "$sys" "$events" "$t0" "$t1" "$c0" "$c1" "$hwm" "$b0" "$b1" "$broker_pid" $lat $sz "$verdict" <<'EOF'
import sys
sys_, n, t0, t1, c0, c1, hwm, b0, b1, broker, p50, p99, state, out, verdict = sys.argv[1:]
n = int(n)
brk = f"{(float(b1) - float(b0)) / n * 1e6:.1f}" if broker else "-"
rss = f"{int(hwm) / 1024:.1f}" if int(hwm or 0) else "-"
cpu = f"{(float(c1) - float(c0)) / n * 1e6:.2f}" if int(hwm or 0) else "-"
print(f"{sys_:<17} {n / (float(t1) - float(t0)):>10,.0f} {cpu:>10} {rss:>8} {brk:>10} {p50:>7} {p99:>7} {state:>8} {out:>8}  {verdict}")
EOF
}

# A new host after RESTORE_EVENTS records: tally restores from snapshots, Kafka
# Streams from its changelog into an empty state directory. Both are timed from
# process start until ready (tally: /readyz; Kafka Streams: state RUNNING).
restore_row() {
  local sys=$1 id group port t0 t1 extra
  id=peers-restore-$sys-$(date +%s); group=$id
  fresh_input "$id" "$partitions" "$restore_events" > /dev/null
  port=$(tally_free_port)
  # The first host processes everything, then stops (its state directory is not reused).
  if [ "$sys" = run ]; then
    start_system run "$id" "$group" "$restore_events" "$port"
  else
    WARMUP_EVENTS=0 warmup_events=0 start_system streams "$id" "$group" "$restore_events" "$port"
  fi
  "$tally" lag --group-id "$group" --input-topic "$id-in" --wait-for "$restore_events" --timeout 1800s > /dev/null \
    || echo "peers: restore: $sys did not commit everything" >&2
  stop_system "$pid"
  # A Kafka Streams member that stopped stays in the group until its session
  # times out (10 s), and a newcomer's rebalance waits for that: the new host
  # starts once the group is empty, so its time is the restore's alone. tally's
  # new host takes the old one's static membership at once.
  [ "$sys" = run ] || sleep 12
  port=$(tally_free_port)
  t0=$(now)
  if [ "$sys" = run ]; then
    RUST_LOG=info "$tally" run --input-topic "$id-in" --output-topic "$id-out" --dlq-topic "$id-dlq" \
      --insights-topic "$id-ins" --group-id "$group" --instance-id "$group" --state-dir "$work/new-$id" \
      --metrics-addr "127.0.0.1:$port" > /dev/null 2> "$work/$id-new.log" &
    pid=$!; procs+=("$pid")
    for _ in $(seq 1 3000); do
      curl -fs "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break
      sleep 0.02
    done
    t1=$(now)
    extra=$(python3 - "$work/$id-new.log" <<'PY'
import re, sys, datetime
clean = [re.sub(r'\x1b\[[0-9;]*m', '', l) for l in open(sys.argv[1]).read().splitlines()]
ts = lambda l: datetime.datetime.fromisoformat(l.split()[0].replace('Z', '+00:00'))
try:
    assigned = next(ts(l) for l in clean if 'partitions assigned' in l)
    restored = [l for l in clean if 'partition restored' in l]
    paths = sorted(set(re.search(r'path="(\w+)"', l).group(1) for l in restored))
    replayed = sum(int(re.search(r'records=(\d+)', l).group(1)) for l in restored)
    print(f"{len(restored)} partitions restored in {(max(map(ts, restored)) - assigned).total_seconds():.2f} s"
          f" from assignment, paths {','.join(paths)}, {replayed} records replayed")
except (StopIteration, ValueError, AttributeError):
    print("restore lines not found in the log")
PY
)
    stop_system "$pid"
  else
    java -Xms64m -Xmx256m -Dlog4j2.configurationFile="$streams_dir/log4j2.properties" -cp "$java_cp" \
      tally.peers.StreamsPeer restore --bootstrap "$KAFKA_BOOTSTRAP" --app-id "$group" --input "$id-in" \
      --output "$id-out" --dlq "$id-dlq" --state-dir "$work/new-$id" > "$work/$id-new.out" 2> "$work/$id-new.log" &
    pid=$!; procs+=("$pid")
    wait "$pid" || true
    t1=$(now)
    extra=$(awk '/^restored/ { printf "%d changelog records restored in %.2f s", $3, $4 / 1000 }' "$work/$id-new.out")
  fi
  drop_topics "$id" "$group"
  python3 -c 'import sys; s, n, t0, t1, x = sys.argv[1:]; print(f"restore {s:<9} after {int(n):,} records: ready in {float(t1) - float(t0):.2f} s ({x})")' \
    "$sys" "$restore_events" "$t0" "$t1" "$extra"
}

# One row of the write-amplification table: system `$1` (run-<codec>: tally run
# with that producer compression; streams: Kafka Streams, tuned) on `$2`
# partitions at `$3` events/s for AMP_SECONDS. First a day of history: 1,500
# events per partition with event times over the last 24 h, so every partition's
# aggregate holds about a day of minutes, as in steady state (a snapshot's size
# depends on it); then the live stream. The sizes are those the live stream added.
amplification() {
  local sys=$1 parts=$2 r=$3 id group port n pre c0 c1 lpid s0 s1
  n=$((r * ${AMP_SECONDS:-20})); pre=$((parts * 1500))
  id=peers-amp-$sys-$parts-$r-$(date +%s); group=$id
  fresh_input "$id" "$parts" 0 > /dev/null
  "$tally" generate --topic "$id-in" --count "$pre" --invalid-ratio 0.05 --huge false --seed 11 \
    --start-time $(($(date +%s) - 86400)) --events-per-minute $((pre / 1440)) > /dev/null
  port=$(tally_free_port)
  case "$sys" in
    run-*) start_system "$sys" "$id" "$group" "$n" "$port" ;;
    *) warmup_events=0 start_system "$sys" "$id" "$group" "$n" "$port" ;;
  esac
  lpid=$pid
  "$tally" lag --group-id "$group" --input-topic "$id-in" --wait-for "$pre" --timeout 600s > /dev/null \
    || echo "peers: amplification: $sys did not commit the history" >&2
  sleep 7 # the history's last snapshots (tally: --snapshot-quiet after it ends)
  # shellcheck disable=SC2046
  s0=$(sizes "$id-in" "$id-out" "$id-dlq" "$id-ins" $(state_topics "$group") | amp_sums "$id")
  c0=$(cpu_secs "$lpid")
  "$tally" generate --topic "$id-in" --count "$n" --rate "$r" --invalid-ratio 0.05 --huge false --seed 8 > /dev/null 2>&1
  "$tally" lag --group-id "$group" --input-topic "$id-in" --wait-for $((pre + n)) --timeout 300s > /dev/null \
    || echo "peers: amplification: $sys did not commit everything" >&2
  # Steady state: what the stream wrote while it ran, not the one catch-up
  # snapshot per partition once it stops.
  sleep 1
  c1=$(cpu_secs "$lpid")
  # shellcheck disable=SC2046
  s1=$(sizes "$id-in" "$id-out" "$id-dlq" "$id-ins" $(state_topics "$group") | amp_sums "$id")
  stop_system "$lpid"
  python3 -c '
import sys
sys_, parts, r, n, c0, c1 = sys.argv[1:7]
i0, o0, s0, i1, o1, s1 = map(int, sys.argv[7:])
i, o, s, n = i1 - i0, o1 - o0, s1 - s0, int(n)
label = {"streams": "Kafka Streams"}.get(sys_, sys_.replace("run-", "tally run, "))
print(f"{label:<22} {parts:>6} {int(r):>8,} {i / 2**20:>9.1f} {s / n:>10.1f} {s / i:>9.3f} {o / i:>9.3f} {(float(c1) - float(c0)) / n * 1e6:>9.2f}")
' "$sys" "$parts" "$r" "$n" "$c0" "$c1" $s0 $s1
  drop_topics "$id" "$group"
}
# Sizes lines of run `$1` -> "input out+dlq state" bytes.
amp_sums() {
  awk -v id="$1" '$1 == id "-in" { i = $2; next } $1 == id "-out" || $1 == id "-dlq" { o += $2; next } { s += $2 }
    END { printf "%d %d %d", i, o, s }'
}

echo "peers: $events events, $partitions partitions, latency at $rate events/s ($latency_events events); load: $(uptime | sed 's/.*load average: //')" >&2
# A broker's JVM is slower until it has warmed up: one untimed `tally run` row
# first, so the first system measured does not pay for it.
if [ "${BROKER_WARMUP:-1}" != 0 ]; then
  echo "peers: warming the broker up with one untimed tally run row (BROKER_WARMUP=0 skips)" >&2
  latency_events=0 measure run warmup > /dev/null
fi
rows=()
for r in $(seq 1 "${REPEAT:-1}"); do
  for sys in $systems; do
    rows+=("$(measure "$sys" "$r")")
    echo "${rows[-1]}" >&2
  done
done
header() { printf '%-17s %10s %10s %8s %10s %7s %7s %8s %8s  %s\n' system "records/s" "CPU us/rec" "RSS MiB" "brk us/rec" "p50 ms" "p99 ms" "state/in" "out/in" verdict; }
echo "$events events, $partitions partitions, Apache Kafka 4.1.1, $(nproc) cores, load at the end: $(uptime | sed 's/.*load average: //')"
header
printf '%s\n' "${rows[@]}"
if [ "${REPEAT:-1}" -gt 1 ]; then
  echo
  echo "median of $REPEAT rows per system:"
  header
  printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    f = line.split()
    rows.setdefault(f[0], []).append(f[1:])
for name, rs in rows.items():
    def med(i):
        vals = [float(r[i].replace(",", "")) for r in rs if r[i] != "-"]
        return statistics.median(vals) if vals else None
    m = [med(i) for i in range(8)]
    fmt = lambda v, w, p: "-".rjust(w) if v is None else f"{v:>{w},.{p}f}"
    ok = sum(r[8] == "OK" for r in rs)
    print(f"{name:<17} {fmt(m[0],10,0)} {fmt(m[1],10,2)} {fmt(m[2],8,1)} {fmt(m[3],10,1)} {fmt(m[4],7,0)} {fmt(m[5],7,0)} {fmt(m[6],8,3)} {fmt(m[7],8,3)}  {ok}/{len(rs)} OK")
'
fi

if [ "$restore_events" -gt 0 ]; then
  echo
  restores=()
  for _ in $(seq 1 "$restore_repeat"); do
    for sys in $restore_systems; do
      # Not in a subshell: the row's processes must be in `procs` for the trap.
      restore_row "$sys" > "$work/restore.row"
      restores+=("$(cat "$work/restore.row")")
      echo "${restores[-1]}"
    done
  done
  if [ "$restore_repeat" -gt 1 ]; then
    printf '%s\n' "${restores[@]}" | python3 -c '
import sys, statistics
ready = {}
for line in sys.stdin:
    f = line.split()
    ready.setdefault(f[1], []).append(float(f[7]))
print(f"restore, median of {len(next(iter(ready.values())))}: " + ", ".join(
    f"{s} ready in {statistics.median(v):.2f} s" for s, v in ready.items()))
'
  fi
fi

if [ "${AMP:-0}" = 1 ]; then
  echo
  echo "write amplification: bytes stored per input byte, live streams of ${AMP_SECONDS:-20} s"
  printf '%-22s %6s %8s %9s %10s %9s %9s %9s\n' system partitions "events/s" "input MiB" "state B/rec" "state/in" "out/in" "CPU us/rec"
  for parts in ${AMP_PARTITIONS:-6 60}; do
    for r in ${AMP_RATES:-${AMP_HIGH:-2000} ${AMP_LOW:-200}}; do
      for codec in ${AMP_CODECS:-none lz4}; do
        amplification "run-$codec" "$parts" "$r"
      done
      if [ "${AMP_STREAMS:-1}" = 1 ]; then amplification streams "$parts" "$r"; fi
    done
  done
fi
