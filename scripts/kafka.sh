#!/usr/bin/env bash
# Apache Kafka (KRaft) on 127.0.0.1 for tally's tests, drill and benchmarks.
#
#   scripts/kafka.sh start [--nodes N] [--secure]
#                                        format (first time) and start N nodes (default 1);
#                                        prints the bootstrap servers on stdout
#   scripts/kafka.sh stop                stop every node by PID
#   scripts/kafka.sh status              running nodes and the bootstrap servers
#   scripts/kafka.sh controller          the node id of the active controller
#   scripts/kafka.sh node I stop|kill|start|pause|resume
#                                        one node: clean shutdown, SIGKILL, restart
#                                        with its data, SIGSTOP, SIGCONT
#   scripts/kafka.sh acl ARGS...         kafka-acls.sh's --add/--remove/--list as the admin
#                                        of a --secure cluster (scripts/kafka/Acl.java)
#
# Every node is a combined broker and controller (scripts/kafka/server.properties);
# --nodes 3 makes a 3-voter cluster with replication factor 3 and
# min.insync.replicas=2. Ports are picked free at the first start and kept, so a
# node restarted with `node I start` comes back where it was.
#
# --secure (decided at the first start, like --nodes): the client listener is
# SASL_SSL with SCRAM-SHA-512, every request is authorised by ACLs (StandardAuthorizer,
# allow.everyone.if.no.acl.found=false) and only `admin` is a super user. The
# first start makes, in $KAFKA_DIR/secrets/:
#   ca.pem                 the CA to trust (ssl.ca.location); a throwaway, made here
#   broker.pem             the broker's key and certificate (SAN IP:127.0.0.1, DNS:localhost)
#   USER.password          a random password for admin and each of KAFKA_USERS
#   USER.properties        librdkafka properties for USER (tally -X, kcat -F):
#                          tally --kafka-config secrets/tally.properties
#   USER.java.properties   Java client properties (kafka-acls --command-config)
# Users other than admin can do nothing until ACLs allow it (`acl --add ...`).
# The controller listener stays PLAINTEXT (127.0.0.1, not for clients).
#
# Environment:
#   KAFKA_DIR    the cluster's data, logs and PIDs (default .kafka/)
#   TOOLS_DIR    where Kafka's jars are installed (default .tools/)
#   KAFKA_HEAP   JVM heap flags per node (default -Xms128m -Xmx512m)
#   KAFKA_OPTS   more JVM flags per node (default none)
#   JAVA         the java to run (default: java on PATH)
#   KAFKA_EXTRA_PROPERTIES
#                key=value broker settings, separated by newlines or commas (so
#                no value may hold a comma),
#                appended to every node's server.properties when the cluster is
#                formatted (first start only; a later key overrides the file's),
#                e.g. KAFKA_EXTRA_PROPERTIES=auto.create.topics.enable=true
#   KAFKA_USERS  --secure: SCRAM users besides admin (default: tally tally-reader)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
conf=$repo/scripts/kafka
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$conf/pom.xml")
dir=${KAFKA_DIR:-$repo/.kafka}
tools=${TOOLS_DIR:-$repo/.tools}
libs=$tools/kafka-$version/libs
java=${JAVA:-java}
heap=${KAFKA_HEAP:--Xms128m -Xmx512m}
opts=${KAFKA_OPTS:-}
ready_timeout=${KAFKA_READY_TIMEOUT:-120}
secrets=$dir/secrets
users=${KAFKA_USERS:-tally tally-reader}

log() { echo "kafka: $*" >&2; }
die() { log "$*"; exit 1; }

# Kafka's jars from Maven Central, once; later starts need no network.
install_kafka() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn is missing: run scripts/setup.sh"
  log "installing Apache Kafka $version into $libs (Maven Central)"
  rm -rf "$libs"
  mkdir -p "$tools"
  mvn -B -q -f "$conf/pom.xml" -Dmaven.repo.local="$tools/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >"$tools/kafka-install.log" 2>&1 \
    || { cat "$tools/kafka-install.log" >&2; die "installing Kafka from Maven Central failed"; }
  touch "$libs/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

nodes() { cat "$dir/nodes" 2>/dev/null || echo 0; }
node_dir() { echo "$dir/node$1"; }

# The PID file is trusted only while it names a live JVM running this node's
# config, so a recycled PID is never signalled.
node_pid() {
  local nd pid
  nd=$(node_dir "$1")
  [ -f "$nd/pid" ] || return 1
  pid=$(cat "$nd/pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $nd/server.properties" || return 1
  echo "$pid"
}

secure() { [ -f "$dir/secure" ]; }

# The admin's Java client properties on a --secure cluster.
admin_config() { echo "$secrets/admin.java.properties"; }

# --secure, first start: a CA, the broker's certificate signed by it, and a
# random password and client property files for admin and each user. Prints
# the StorageTool --add-scram arguments that create the users.
make_secrets() {
  local u pw
  mkdir -p "$secrets"
  chmod 700 "$secrets"
  (
    umask 077
    cd "$secrets"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=tally test CA" -keyout ca.key -out ca.pem
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=localhost" -keyout broker.key -out broker.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth,clientAuth" > broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.crt
    cat broker.key broker.crt > broker.pem
  ) >"$secrets/openssl.log" 2>&1 || { cat "$secrets/openssl.log" >&2; die "making the certificates failed"; }
  for u in admin $users; do
    pw=$(openssl rand -hex 16)
    (
      umask 077
      echo "$pw" > "$secrets/$u.password"
      printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
        "sasl.username=$u" "sasl.password=$pw" "ssl.ca.location=$secrets/ca.pem" \
        "ssl.endpoint.identification.algorithm=https" > "$secrets/$u.properties"
      printf '%s\n' "security.protocol=SASL_SSL" "sasl.mechanism=SCRAM-SHA-512" \
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$u\" password=\"$pw\";" \
        "ssl.truststore.type=PEM" "ssl.truststore.location=$secrets/ca.pem" > "$secrets/$u.java.properties")
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$u,password=$pw]"
  done
}

bootstrap() {
  local i out=
  for i in $(seq 1 "$(nodes)"); do
    out+="${out:+,}127.0.0.1:$(cat "$(node_dir "$i")/port")"
  done
  echo "$out"
}

# Writes every node's server.properties and formats its storage (first start
# only); $2 = 1: --secure.
format() {
  local n=$1 sec=$2 i voters= cid rf=1 isr=1 scram=()
  [ "$n" -ge 3 ] && { rf=3; isr=2; }
  mkdir -p "$dir"
  if [ "$sec" = 1 ]; then
    mapfile -t scram < <(make_secrets)
    [ ${#scram[@]} -gt 0 ] || die "making the secrets failed"
    echo "admin $users" > "$dir/secure"
  fi
  echo "$n" > "$dir/nodes"
  for i in $(seq 1 "$n"); do
    mkdir -p "$(node_dir "$i")"
    free_port > "$(node_dir "$i")/port"
    free_port > "$(node_dir "$i")/controller_port"
    voters+="${voters:+,}$i@127.0.0.1:$(cat "$(node_dir "$i")/controller_port")"
  done
  cid=$("$java" -cp "$libs/*" -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" \
    kafka.tools.StorageTool random-uuid)
  for i in $(seq 1 "$n"); do
    local nd
    nd=$(node_dir "$i")
    sed -e "s|@NODE_ID@|$i|" -e "s|@VOTERS@|$voters|" \
      -e "s|@PORT@|$(cat "$nd/port")|" -e "s|@CONTROLLER_PORT@|$(cat "$nd/controller_port")|" \
      -e "s|@LOG_DIR@|$nd/data|" -e "s|@RF@|$rf|" -e "s|@MIN_ISR@|$isr|" \
      "$conf/server.properties" > "$nd/server.properties"
    if [ "$sec" = 1 ]; then
      # The secure listeners replace the PLAINTEXT ones.
      sed -i -e '/^listeners=/d' -e '/^advertised.listeners=/d' -e '/^inter.broker.listener.name=/d' \
        -e '/^listener.security.protocol.map=/d' "$nd/server.properties"
      { echo; sed -e "s|@PORT@|$(cat "$nd/port")|" -e "s|@CONTROLLER_PORT@|$(cat "$nd/controller_port")|" \
          -e "s|@SECRETS@|$secrets|" -e "s|@ADMIN_PASSWORD@|$(cat "$secrets/admin.password")|" \
          "$conf/secure.properties"; } >> "$nd/server.properties"
      chmod 600 "$nd/server.properties"
    fi
    if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
      printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" | tr ',' '\n' \
        >> "$nd/server.properties"
    fi
    "$java" -cp "$libs/*" -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" \
      kafka.tools.StorageTool format -t "$cid" -c "$nd/server.properties" "${scram[@]}" >"$nd/format.log" 2>&1 \
      || { cat "$nd/format.log" >&2; die "formatting node $i failed"; }
  done
}

# Starts node $1 detached (setsid: a Ctrl+C in the caller's terminal must not
# reach it; whoever started it stops it by PID).
launch() {
  local nd pid
  nd=$(node_dir "$1")
  if pid=$(node_pid "$1"); then
    log "node $1 already running (pid $pid)"
    return 0
  fi
  port_open "$(cat "$nd/port")" && die "node $1's port $(cat "$nd/port") is taken by another process"
  mkdir -p "$nd/logs"
  # shellcheck disable=SC2086
  setsid "$java" $heap $opts -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dkafka.logs.dir="$nd/logs" \
    -Dlog4j2.configurationFile="$conf/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$nd/server.properties" >"$nd/logs/stdout.log" 2>&1 </dev/null &
  echo $! > "$nd/pid"
}

# Waits until every started node listens and the cluster answers for groups and
# transactions; on failure prints the logs of nodes that died.
wait_ready() {
  local i n deadline
  n=$(nodes)
  deadline=$((SECONDS + ready_timeout))
  for i in $(seq 1 "$n"); do
    while ! port_open "$(cat "$(node_dir "$i")/port")"; do
      if ! node_pid "$i" >/dev/null && ! kill -0 "$(cat "$(node_dir "$i")/pid")" 2>/dev/null; then
        log "node $i exited during start-up; the end of its log:"
        tail -n 40 "$(node_dir "$i")/logs/server.log" "$(node_dir "$i")/logs/stdout.log" >&2 || true
        return 1
      fi
      [ $SECONDS -lt $deadline ] || { log "node $i did not listen within ${ready_timeout} s"; return 1; }
      sleep 0.2
    done
  done
  local as=()
  if secure; then as=("$(admin_config)"); fi
  "$java" -cp "$libs/*" -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" \
    "$conf/Ready.java" "$(bootstrap)" "$n" $((deadline - SECONDS > 10 ? deadline - SECONDS : 10)) "${as[@]}"
}

start() {
  local n=1 sec=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) n=$2; shift 2 ;;
      --secure) sec=1; shift ;;
      *) die "unknown option $1" ;;
    esac
  done
  install_kafka
  if [ -f "$dir/nodes" ]; then
    [ "$(nodes)" = "$n" ] || die "$dir holds a $(nodes)-node cluster; stop it and remove $dir for $n nodes"
    if secure && [ $sec = 0 ]; then
      die "$dir holds a --secure cluster; start it with --secure, or stop it and remove $dir"
    elif ! secure && [ $sec = 1 ]; then
      die "$dir holds a cluster without --secure; stop it and remove $dir for a secure one"
    fi
  else
    format "$n" "$sec"
  fi
  local t0=$SECONDS i
  for i in $(seq 1 "$n"); do launch "$i"; done
  if ! wait_ready; then
    stop
    exit 1
  fi
  log "started $n node(s) in $((SECONDS - t0)) s: $(bootstrap) (logs $dir/node*/logs)"
  if secure; then
    log "SASL_SSL; users $(cat "$dir/secure") (admin: super user); client properties in" \
      "$secrets/USER.properties (librdkafka) and USER.java.properties (Java); ACLs: $0 acl --add ..."
  fi
  bootstrap
}

# Stops nodes $2... at once (SIGTERM, a clean shutdown), SIGKILL after $1
# seconds. The last nodes of a stopping cluster wait for a controller quorum
# that is gone, so a whole cluster gets a short grace, one node a long one.
stop_nodes() {
  local grace=$1 i pid pids=()
  shift
  for i in "$@"; do
    if pid=$(node_pid "$i"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 $((grace * 5))); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running ${grace} s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for i in "$@"; do rm -f "$(node_dir "$i")/pid"; done
}

stop() {
  [ -f "$dir/nodes" ] || { log "not running"; return 0; }
  # shellcheck disable=SC2046
  stop_nodes 15 $(seq 1 "$(nodes)")
  log "stopped"
}

status() {
  local i pid up=0
  [ -f "$dir/nodes" ] || { echo "not running"; return 3; }
  for i in $(seq 1 "$(nodes)"); do
    if pid=$(node_pid "$i"); then
      echo "node $i: running, pid $pid, 127.0.0.1:$(cat "$(node_dir "$i")/port")"
      up=$((up + 1))
    else
      echo "node $i: stopped"
    fi
  done
  echo "bootstrap $(bootstrap), data $dir"
  if secure; then echo "secure: SASL_SSL, users $(cat "$dir/secure"), client properties in $secrets"; fi
  [ $up -gt 0 ] || return 3
}

# The active controller's node id: the quorum leader of the highest epoch any
# node has recorded (a stopped node's record is older, never newer); -1 when
# none is known.
controller() {
  local f best=-1 epoch=-1 id e
  [ -f "$dir/nodes" ] || die "not running"
  for f in "$dir"/node*/data/__cluster_metadata-0/quorum-state; do
    [ -f "$f" ] || continue
    id=$(sed -n 's/.*"leaderId":\(-\{0,1\}[0-9]*\).*/\1/p' "$f")
    e=$(sed -n 's/.*"leaderEpoch":\([0-9]*\).*/\1/p' "$f")
    if [ -n "$id" ] && [ -n "$e" ] && [ "$e" -gt "$epoch" ] && [ "$id" -ge 0 ]; then
      epoch=$e
      best=$id
    fi
  done
  echo "$best"
}

node() {
  local i=${1:-} action=${2:-} pid
  [ -n "$i" ] && [ -d "$(node_dir "$i")" ] || die "no node '$i' in $dir"
  case "$action" in
    stop) stop_nodes 60 "$i"; log "node $i stopped" ;;
    kill)
      pid=$(node_pid "$i") || die "node $i is not running"
      kill -KILL "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
      rm -f "$(node_dir "$i")/pid"
      log "node $i killed (pid $pid)" ;;
    pause) pid=$(node_pid "$i") || die "node $i is not running"; kill -STOP "$pid"; log "node $i paused" ;;
    resume) pid=$(node_pid "$i") || die "node $i is not running"; kill -CONT "$pid"; log "node $i resumed" ;;
    start)
      launch "$i"
      wait_ready || die "node $i did not come back"
      log "node $i started" ;;
    *) die "usage: $0 node I stop|kill|start|pause|resume" ;;
  esac
}

# kafka-acls as the admin of a --secure cluster (scripts/kafka/Acl.java).
acl() {
  local i up=0
  [ -f "$dir/nodes" ] || die "not running"
  secure || die "$dir holds a cluster without --secure: it has no ACLs"
  for i in $(seq 1 "$(nodes)"); do node_pid "$i" >/dev/null && up=1; done
  [ $up = 1 ] || die "not running: $0 start --secure"
  local classes=$dir/acl-classes
  # Compiled once (a JVM compiling the source at each call takes 3 s more).
  if [ ! -f "$classes/Acl.class" ] || [ "$conf/Acl.java" -nt "$classes/Acl.class" ]; then
    mkdir -p "$classes"
    "$(dirname "$(readlink -f "$(command -v "$java")")")/javac" -nowarn -cp "$libs/*" -d "$classes" "$conf/Acl.java" >&2 || die "compiling Acl.java failed"
  fi
  "$java" -cp "$classes:$libs/*" -Dlog4j2.configurationFile="$conf/tools-log4j2.properties" \
    Acl --bootstrap-server "$(bootstrap)" --command-config "$(admin_config)" "$@"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  acl) shift; acl "$@" ;;
  stop) stop ;;
  status) status ;;
  node) shift; node "$@" ;;
  controller) controller ;;
  *) echo "usage: $0 start [--nodes N] [--secure] | stop | status | controller | node I stop|kill|start|pause|resume | acl ARGS..." >&2; exit 2 ;;
esac
