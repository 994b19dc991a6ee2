#!/usr/bin/env bash
# Local Kafka-protocol test broker: noida-db 0.2.3 (the only broker installable
# here that implements transactions; see ../shared/DESIGN.md for its limits).
#
#   scripts/broker.sh start|stop|status
#
# Environment:
#   BROKER_PORT  port to listen on (default 19092, so a real Kafka on 9092 is left alone)
#   BROKER_DIR   where the broker keeps its data, log and PID (default .broker/)
#   TOOLS_DIR    where the broker binary is installed (default .tools/)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=0.2.3
port=${BROKER_PORT:-19092}
dir=${BROKER_DIR:-$repo/.broker}
tools=${TOOLS_DIR:-$repo/.tools}
bin=$tools/noida-db-$version/noida_db/noida-db
pidfile=$dir/pid

log() { echo "broker: $*" >&2; }

install_broker() {
  [ -x "$bin" ] && return 0
  log "installing noida-db $version into $tools"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "noida-db==$version" -d "$tmp" >&2
  mkdir -p "$tools/noida-db-$version"
  python3 -m zipfile -e "$tmp"/noida_db-"$version"-*.whl "$tools/noida-db-$version"
  chmod +x "$bin"
  rm -rf "$tmp"
}

# The PID file is trusted only while it names a live noida-db using our data dir,
# so a recycled PID never gets killed.
running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "noida-db start .*--data-dir $dir/data" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether process $1 still lives (not gone, not a zombie). During start-up this,
# not running_pid, tells a broker that exited: until the forked shell has exec'd
# noida-db its command line is still the shell's, which running_pid rejects.
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

start() {
  if pid=$(running_pid); then
    log "already running (pid $pid)"
    echo "127.0.0.1:$(cat "$dir/port")"
    return 0
  fi
  install_broker
  if port_open "$port"; then
    log "port $port is taken by another process; set BROKER_PORT"
    exit 1
  fi
  mkdir -p "$dir/data"
  # setsid: a Ctrl+C in the calling terminal must not reach the broker; whoever
  # started it stops it by PID.
  setsid "$bin" start --only kafka --host 127.0.0.1 --kafka-port "$port" \
    --data-dir "$dir/data" >"$dir/log" 2>&1 < /dev/null &
  local child=$!
  echo "$child" > "$pidfile"
  echo "$port" > "$dir/port"
  for _ in $(seq 1 150); do
    if port_open "$port"; then
      log "started (pid $(cat "$pidfile"), log $dir/log)"
      echo "127.0.0.1:$port"
      return 0
    fi
    if ! alive "$child"; then
      log "exited during start-up; its log:"
      cat "$dir/log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.2
  done
  log "port $port did not open within 30 s; see $dir/log"
  stop
  exit 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    log "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "stopped (pid $pid)"
}

status() {
  if pid=$(running_pid); then
    echo "running: pid $pid, bootstrap 127.0.0.1:$(cat "$dir/port"), data $dir/data"
  else
    echo "not running"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
