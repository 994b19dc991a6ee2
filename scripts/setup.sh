#!/usr/bin/env bash
# Installs what building and testing tally needs on a fresh Debian machine with
# Rust: libclang (bindgen, for the rocksdb crate), a C/C++ toolchain, pkg-config,
# OpenSSL and zlib headers (librdkafka); a Java 17 JDK and Maven for the test
# broker, Apache Kafka (scripts/kafka.sh fetches its jars from Maven Central);
# for the operations tests, Prometheus (which ships promtool) from Debian and,
# in a venv under .tools/venv, the validators of the deploy files
# (kubernetes-validate, check-jsonschema). Skips whatever is already there.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# GNU time: the benchmarks' CPU time and peak RSS of a process. openssl: the
# secured test broker's throwaway CA and certificate (kafka.sh start --secure).
for pkg in libclang-dev build-essential pkg-config libssl-dev zlib1g-dev prometheus time openssl; do
  have_pkg "$pkg" || need+=("$pkg")
done
# python3 (any, e.g. pyenv's): free ports for the broker, the deploy validators.
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
# Kafka 4.1 runs on Java 17 or newer; the JDK (not a JRE) because the broker's
# readiness probe runs as a single Java source file.
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }
if ! command -v javac >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  need+=(openjdk-17-jdk-headless)
fi
command -v mvn >/dev/null 2>&1 || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# The validators of deploy/ (Kubernetes manifests, docker-compose.yml), pinned.
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${TOOLS_DIR:-$repo/.tools}/venv
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1 \
   || ! "$venv/bin/check-jsonschema" --version >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate and check-jsonschema into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 check-jsonschema==0.39.0 >&2
fi
