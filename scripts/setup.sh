#!/usr/bin/env bash
# Installs what building and testing tally needs on a fresh Debian machine with
# Rust: libclang (bindgen, for the rocksdb crate), a C/C++ toolchain, pkg-config,
# OpenSSL and zlib headers (librdkafka). Skips whatever is already there.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in libclang-dev build-essential pkg-config libssl-dev zlib1g-dev; do
  have_pkg "$pkg" || need+=("$pkg")
done
# python3 (any, e.g. pyenv's) is only needed to fetch the test broker with pip.
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >&2
fi
