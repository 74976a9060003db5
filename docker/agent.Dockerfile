# syntax=docker/dockerfile:1
#
# The GoGrid node agent, CPU flavor (ghcr.io/gogrid/gogrid-agent:<version>):
# no GPU code; models run on the CPU. Build from the repository root (BuildKit):
#
#   docker build --platform linux/amd64 -f docker/agent.Dockerfile \
#     -t ghcr.io/gogrid/gogrid-agent:0.1.0 .
#
# Compiled for x86-64-v3 (AVX2, FMA, F16C; Intel Haswell / AMD Excavator and
# newer) so the CPU kernels vectorise; the image is linux/amd64 only and the
# agent does not start on older CPUs. The CUDA flavor is agent-cuda.Dockerfile.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN --mount=type=cache,id=gogrid-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=gogrid-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=gogrid-target-agent,target=/src/target \
    cargo build --release --locked -p gogrid-agent \
 && install -D -m 0755 target/release/gogrid-agent /out/gogrid-agent

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gogrid-agent" \
      org.opencontainers.image.description="GoGrid node agent (CPU, x86-64-v3)" \
      org.opencontainers.image.source="https://github.com/gogrid/gogrid" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/gogrid-agent /usr/local/bin/gogrid-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gogrid-agent"]
