# syntax=docker/dockerfile:1
# The sipstream gateway image (README "Deploy"; docker-compose.yml builds it as `gateway`).
#   builder: the Rust toolchain; scripts/deps.sh build, then cargo build --release
#   runtime: debian:bookworm-slim, scripts/deps.sh runtime, the binary, non-root user
# Needs BuildKit (the default builder of current Docker): cache and bind mounts below.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Build tools from the project's own list (cmake for libopus), as on a developer's machine.
RUN --mount=type=bind,source=scripts/deps.sh,target=/tmp/deps.sh \
    bash /tmp/deps.sh build \
 && rm -rf /var/lib/apt/lists/*
# The whole tree minus .dockerignore: the crate embeds web/ and reads benches/ from its
# manifest, and a new folder it needs should not break this file.
COPY . .
# The registry and target/ live in BuildKit caches, so a rebuild after a source change
# recompiles only sipstream; the binary is copied out of the cache in the same step.
# Cargo.toml's release profile keeps debug info for profiling (benchmarks); the image does
# without it (about a fifth of the size; panics still name their functions).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --bin sipstream \
 && install -D -m 0755 target/release/sipstream /out/sipstream

FROM debian:bookworm-slim AS runtime
# Run-time packages from the project's own list (CA certificates, curl for the
# HEALTHCHECK); the binary links only libc, libm and libgcc_s. The user owns nothing but
# its data folder.
RUN --mount=type=bind,source=scripts/deps.sh,target=/tmp/deps.sh \
    bash /tmp/deps.sh runtime \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-log-init --uid 10001 --user-group --home-dir /var/lib/sipstream \
      --no-create-home --shell /usr/sbin/nologin sipstream \
 && install -d -o sipstream -g sipstream -m 0750 \
      /var/lib/sipstream /var/lib/sipstream/records /var/lib/sipstream/sounds

COPY --from=builder /out/sipstream /usr/local/bin/sipstream
# The shipped properties (every key with its default). The web pages and the API docs are
# compiled into the binary: there is no web/ folder to copy.
COPY properties/sipstream.properties /etc/sipstream/sipstream.properties

# Container defaults, as SIPSTREAM_<KEY> variables over the properties file (README
# "Properties"). The REST API must listen on every address of the container to be
# published at all; who reaches it is decided where the port is published and by api_keys:
# without SIPSTREAM_API_KEYS the gateway refuses to start on 0.0.0.0 unless
# SIPSTREAM_REST_INSECURE_BIND=true (the compose demo, published on 127.0.0.1 only).
ENV SIPSTREAM_REST_ADDRESS=0.0.0.0 \
    SIPSTREAM_RECORD_DIR=/var/lib/sipstream/records \
    SIPSTREAM_SOUND_DIR=/var/lib/sipstream/sounds

WORKDIR /var/lib/sipstream
USER 10001:10001
# REST API; SIP (UDP and TCP); RTP/RTCP (rtp_port_min..max); WebRTC players
# (webrtc_port_min..max). Change them together with the properties.
EXPOSE 9091/tcp 5060/udp 5060/tcp 31000-32999/udp 33000-33999/udp
# /health answers 200 once the API is up (it stays open when api_keys is set). A shell, for
# the port: SIPSTREAM_REST_PORT may move it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null http://127.0.0.1:${SIPSTREAM_REST_PORT:-9091}/health || exit 1"]
# `sipstream serve` is the gateway; `docker compose exec gateway sipstream call list` etc. is
# the CLI against it.
ENTRYPOINT ["sipstream"]
CMD ["serve", "--config", "/etc/sipstream/sipstream.properties"]
