# syntax=docker/dockerfile:1.7
# One image for every clew role: ghcr.io/clew-dev/clew:<version>, binaries in /usr/local/bin.
#   docker build -t ghcr.io/clew-dev/clew:dev .

FROM rust:1.90-bookworm AS build
WORKDIR /src
# The binaries of the image contract; the build fails if one is missing.
ARG BINARIES="clew-collector clew-sidecar clew-visualizer clew-operator service-a service-b service-c clew-traffic"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for b in $BINARIES; do \
      test -x "target/release/$b" || { echo "binary $b was not built" >&2; exit 1; }; \
      cp "target/release/$b" /out/; \
    done

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# Writable state lives in volumes the operator mounts (collector WAL, sidecar spill).
ENTRYPOINT ["/usr/local/bin/clew-operator"]
