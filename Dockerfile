# syntax=docker/dockerfile:1
# One image with the three binaries: medallion (client), medallion-coordinator and
# medallion-executor. The Helm chart and k8s/manifests run it (image
# ghcr.io/medallion-data/medallion). Build: `docker build -t ghcr.io/medallion-data/medallion:0.1.0 .`

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# protoc: our gRPC code generation and etcd-client's run it at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The manifests first, so a change of source alone reuses the layer of fetched crates.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY pipeline pipeline
COPY sources sources
COPY lake lake
COPY cluster cluster
COPY coordinator coordinator
COPY executor executor
COPY client client
COPY tests tests
COPY examples examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo fetch --locked
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --offline --bins \
    && mkdir -p /out \
    && cp target/release/medallion target/release/medallion-coordinator \
          target/release/medallion-executor /out/

# glibc, libgcc and CA certificates (for object storage over TLS), no shell; runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/medallion /out/medallion-coordinator /out/medallion-executor /usr/local/bin/
COPY examples /opt/medallion/examples
USER 65532:65532
WORKDIR /tmp
# gRPC (coordinator, executor), metrics (coordinator, executor), Ballista (scheduler, Flight, gRPC).
EXPOSE 7070 7071 9470 9471 50050 50051 50052
ENTRYPOINT []
CMD ["medallion-coordinator"]
