# syntax=docker/dockerfile:1
# Base images are pinned to exact versions (the Rust toolchain tally is tested
# with, Debian 12's point release); bump them deliberately, e.g. with Renovate,
# or pin by digest (`image@sha256:...`) where a registry mirror requires it.
#
# Build stage: rocksdb (bindgen needs libclang) and librdkafka (C, OpenSSL, zlib,
# zstd) are compiled from source by their -sys crates.
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything the workspace's manifests name: members, targets (benches/ holds
# the `core` bench; cargo refuses a manifest whose targets are missing).
# tests/deploy.rs checks that these paths make a complete workspace.
COPY Cargo.toml Cargo.lock ./
COPY state ./state
COPY src ./src
COPY benches ./benches
# The default features: the test-only failpoints are not among them.
RUN cargo build --release --locked --bin tally \
 && install -m 0755 target/release/tally /usr/local/bin/tally

# Runtime stage: the binary plus the shared libraries it links (OpenSSL, zlib;
# zstd is linked statically).
FROM debian:12.12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tally \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tally --create-home tally \
 && install -d -o 10001 -g 10001 /var/lib/tally/state
COPY --from=build /usr/local/bin/tally /usr/local/bin/tally
# Numeric, so Kubernetes' runAsNonRoot can check it without resolving a name.
USER 10001:10001
WORKDIR /var/lib/tally
ENV TALLY_STATE_DIR=/var/lib/tally/state
ENTRYPOINT ["tally"]
CMD ["--help"]
