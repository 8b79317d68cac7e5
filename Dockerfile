# syntax=docker/dockerfile:1
#
# mindoo-replica image. Stages:
#   build    compiles the release binary (RocksDB's C++ needs libclang) and strips it
#   binary   the binary alone; replace it with one built on the host:
#              podman build --build-context binary=<dir with mindoo-replica> .
#   runtime  (default) Debian slim: glibc and libstdc++ for RocksDB, user 10001
#
#   docker build -t mindoo-replica:0.1.0 .

FROM rust:1-bookworm AS build
# libclang follows the base image's Debian release; no pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
COPY proto ./proto
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mindoo-replica \
    && mkdir -p /out \
    && strip -o /out/mindoo-replica target/release/mindoo-replica

FROM scratch AS binary
COPY --from=build /out/mindoo-replica /mindoo-replica

FROM debian:bookworm-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mindoo-replica" \
      org.opencontainers.image.description="Stores and replicates end-to-end-encrypted, content-addressed change entries between servers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The image's default config: listen on every interface, data in the volume.
# A file given with --config (as the Helm chart does) is used instead; it is a
# file rather than environment variables because those would override it.
RUN groupadd --system --gid 10001 mindoo \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mindoo-replica \
       --no-create-home --shell /usr/sbin/nologin mindoo \
    && mkdir -p /var/lib/mindoo-replica /etc/mindoo-replica \
    && chown 10001:10001 /var/lib/mindoo-replica \
    && printf '%s\n' \
       '[server]' \
       'listen = "0.0.0.0:7700"' \
       'metrics_listen = "0.0.0.0:9700"' \
       '' \
       '[storage]' \
       'path = "/var/lib/mindoo-replica"' \
       >/etc/mindoo-replica/config.toml
COPY --from=binary /mindoo-replica /usr/local/bin/mindoo-replica
ENV MINDOO_REPLICA_CONFIG=/etc/mindoo-replica/config.toml
VOLUME ["/var/lib/mindoo-replica"]
WORKDIR /var/lib/mindoo-replica
USER 10001:10001
EXPOSE 7700 9700
ENTRYPOINT ["/usr/local/bin/mindoo-replica"]
CMD ["serve"]
