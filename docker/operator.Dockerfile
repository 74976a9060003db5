# syntax=docker/dockerfile:1
#
# The GoGrid operator image (ghcr.io/gogrid/gogrid-operator).
# Build from the repository root (BuildKit):
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/gogrid/gogrid-operator:0.1.0 .
#
# The binary links only glibc and libgcc (kube uses rustls with ring, no
# OpenSSL), so it runs on distroless/cc as the nonroot user 65532, the UID the
# chart's securityContext asks for.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds; the binary is
# copied out of target/ in the same step because a cache mount is not part of
# the image.
RUN --mount=type=cache,id=gogrid-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=gogrid-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=gogrid-target-operator,target=/src/target \
    cargo build --release --locked -p gogrid-operator \
 && install -D -m 0755 target/release/gogrid-operator /out/gogrid-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gogrid-operator" \
      org.opencontainers.image.description="GoGrid operator: reconciles ResourceProfiles and InferenceDeployments" \
      org.opencontainers.image.source="https://github.com/gogrid/gogrid" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/gogrid-operator /usr/local/bin/gogrid-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gogrid-operator"]
CMD ["run"]
