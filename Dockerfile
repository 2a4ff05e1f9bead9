# syntax=docker/dockerfile:1
# mlpipe as a container: `docker build -t mlpipe .` then
#   docker run --rm -e MLPIPE_DATA=s3://bucket/data -e MLPIPE_ARTIFACTS=s3://bucket/runs \
#     -e MLPIPE_REGISTRY=s3://bucket/models mlpipe run
# The final image is distroless (glibc, CA certificates, no shell) and runs as a non-root user.

FROM rust:1.95-slim-bookworm AS build
# aws-lc-sys (TLS for S3) builds C code with cmake. Build-stage tools only, never in the final
# image: pinning their Debian versions would break the build at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
# No debug info in the image, and a stripped binary: it stays well under the 100 MB target.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mlpipe \
    && cp target/release/mlpipe /usr/local/bin/mlpipe

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/mlpipe /usr/local/bin/mlpipe
WORKDIR /app
COPY pipelines ./pipelines
# distroless's `nonroot` user, numerically so the host can check it is not root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mlpipe"]
CMD ["run", "--log-format", "json"]
