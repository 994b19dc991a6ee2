# syntax=docker/dockerfile:1
# Build stage: rocksdb (bindgen needs libclang) and librdkafka (C, OpenSSL) are
# compiled from source by their -sys crates.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY state ./state
COPY src ./src
# Without default features: the test-only failpoints are compiled out.
RUN cargo build --release --locked --no-default-features --bin tally \
 && install -m 0755 target/release/tally /usr/local/bin/tally

# Runtime stage: the binary plus the shared libraries it links (OpenSSL, zlib).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tally --create-home tally \
 && install -d -o tally -g tally /var/lib/tally/state
COPY --from=build /usr/local/bin/tally /usr/local/bin/tally
USER tally
WORKDIR /var/lib/tally
ENV TALLY_STATE_DIR=/var/lib/tally/state
ENTRYPOINT ["tally"]
CMD ["--help"]
