# syntax=docker/dockerfile:1
#
# The GoGrid node agent, CUDA flavor (ghcr.io/gogrid/gogrid-agent:<version>-cuda):
# NVIDIA GPUs through CUDA (candle, cudarc) and NVML. Build from the repository
# root (BuildKit; no GPU is needed to build):
#
#   docker build --platform linux/amd64 -f docker/agent-cuda.Dockerfile \
#     -t ghcr.io/gogrid/gogrid-agent:0.1.0-cuda .
#
# The CUDA kernels are compiled for one compute capability, CUDA_COMPUTE_CAP
# (default 80: Ampere; newer GPUs run them through PTX JIT). Set
# --build-arg CUDA_COMPUTE_CAP=75 for Turing (RTX 20xx, T4) workstations.
#
# At run time the NVIDIA container toolkit mounts the driver (libcuda,
# libnvidia-ml) into the container; the runtime base image brings cudart and
# cuBLAS. The node needs a driver that supports CUDA 12.4.

ARG CUDA_VERSION=12.4.1

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable \
 && cargo --version
WORKDIR /src
COPY . .
# Without a GPU in the build, the kernel build scripts cannot ask nvidia-smi
# for the compute capability; this says it.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
# Cargo features of the agent: `cuda` is candle's CUDA kernels (compiled here
# with the toolkit of this image) plus NVML and CUDA driver discovery (`gpu`).
# `--build-arg AGENT_FEATURES=gpu` builds discovery alone, pipelines on the CPU.
ARG AGENT_FEATURES="cuda"
RUN --mount=type=cache,id=gogrid-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=gogrid-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=gogrid-target-agent-cuda,target=/src/target \
    cargo build --release --locked -p gogrid-agent ${AGENT_FEATURES:+--features "$AGENT_FEATURES"} \
 && install -D -m 0755 target/release/gogrid-agent /out/gogrid-agent

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04
ARG CUDA_VERSION
LABEL org.opencontainers.image.title="gogrid-agent" \
      org.opencontainers.image.description="GoGrid node agent (CUDA ${CUDA_VERSION})" \
      org.opencontainers.image.source="https://github.com/gogrid/gogrid" \
      org.opencontainers.image.licenses="Apache-2.0"
# compute: CUDA; utility: NVML (GPU memory, utilisation, other processes).
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/gogrid-agent /usr/local/bin/gogrid-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gogrid-agent"]
