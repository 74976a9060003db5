#!/usr/bin/env bash
# Creates (once) the Python environment that runs the reference implementations
# (sentence-transformers on PyTorch CPU, llama-cpp-python) and the Python side of
# the benchmarks (onnxruntime, KServe's python server), and prints its python.
#
#   hack/reference-env.sh                 build if needed, print the venv's python path
#   $(hack/reference-env.sh) script.py    run something in it
#
# The venv lives outside the repo, in
#   ${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/pyenv-<hash>
# where <hash> covers the pinned lock below, the llama.cpp build flags and the
# Python version; a change to any of them makes a fresh venv. Idempotent: a
# second run only prints. Progress goes to stderr ("==> ..."), the path to stdout.
#
# Every package is pinned (a full lock, resolved once from the top-level pins
# marked "top" below) and installed with --no-deps, so the set is exactly this.
#
# Torch. PyPI has no CPU-only Linux x86_64 torch wheel: torch 2.15.0's wheel
# (540 MB) is the CUDA 13.2 build and `pip install torch` pulls ~20 nvidia-*,
# cuda-toolkit, cuda-bindings and triton packages. The CPU-only index is not
# reachable from here. `pip install --no-deps torch` alone does NOT import: the
# CPU library itself (libtorch_cpu.so) links libcudart/libcupti, and
# libtorch.so/libtorch_python.so link libtorch_cuda.so, whose DT_NEEDED list is
# cudart, cublas(Lt), cufft, cufile, cusparse, cusparseLt, cusolver, cudnn,
# nccl, nvrtc, nvshmem (+ nvJitLink, needed by cusparse/cusolver); import fails
# with "ValueError: libcublasLt.so.*[0-9] not found". Older torch is no help:
# every wheel for Python 3.11 (1.13+) links split-out nvidia-* libraries too.
# So the lightest thing that works is: torch --no-deps plus exactly the 13
# nvidia runtime wheels whose libraries torch links, leaving out triton,
# cuda-bindings, cuda-pathfinder, cuda-toolkit, nvidia-cuda-cccl, nvidia-nvtx
# (only used for GPU compilation/profiling). On a machine without a GPU these
# libraries are only loaded, never used; torch.cuda.is_available() is False.
# The venv comes to ~5.2 GB (torch 1.2 GB, nvidia libs 3 GB); `pip check`
# reports the left-out torch requirements, which is expected.
#
# llama-cpp-python is built from its source package (the sdist on PyPI; it
# vendors llama.cpp) with explicit x86 flags: a native build picks up
# instructions the CPUs of some of our (virtualised) AMD EPYC hosts fault on.
# The option names below are those of the vendored llama.cpp's
# ggml/CMakeLists.txt at llama-cpp-python 0.3.36 (vendored llama.cpp commit
# 0c1e57098bba). The build compiles ~190 files: ~15 min of CPU time, 36 min
# wall on 2 busy shared cores; it is niced.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON=${PYTHON:-python3}

LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
LLAMA_PIN="llama-cpp-python==0.3.36"
# Build-time requirements of the llama-cpp-python sdist (its isolated build env).
LLAMA_BUILD_PINS="scikit-build-core==1.1.2
pathspec==1.1.1
packaging==26.3"

# torch and the CUDA runtime libraries it links (see above).
TORCH_PINS="torch==2.15.0
nvidia-cublas==13.4.1.3
nvidia-cuda-cupti==13.2.86
nvidia-cuda-nvrtc==13.2.86
nvidia-cuda-runtime==13.2.86
nvidia-cudnn-cu13==9.26.0.51
nvidia-cufft==12.2.0.57
nvidia-cufile==1.17.1.22
nvidia-cusolver==12.2.0.11
nvidia-cusparse==12.7.10.12
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.30.7
nvidia-nvjitlink==13.5.37
nvidia-nvshmem-cu13==3.7.2"

# Everything else: resolved from the top-level pins
#   numpy==2.4.6 sentence-transformers==6.2.0 transformers==5.23.0
#   onnxruntime==1.32.0 kserve==0.21.0 llama-cpp-python==0.3.36 (its deps)
LOCK_PINS="numpy==2.4.6
sentence-transformers==6.2.0
transformers==5.23.0
tokenizers==0.23.3
huggingface_hub==2.4.0
hf-xet==1.8.0
safetensors==0.8.0
onnxruntime==1.32.0
kserve==0.21.0
aiohappyeyeballs==2.7.1
aiohttp-retry==2.9.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cloudevents==1.13.0
cloudpickle==3.1.2
cryptography==50.0.2
deprecation==2.1.0
diskcache==5.6.3
durationpy==0.11
fastapi==0.165.0
filelock==4.2.12
flatbuffers==25.12.19
frozenlist==1.8.0
fsspec==2026.9.0
grpc-interceptor==0.15.4
grpcio-tools==1.81.1
grpcio==1.85.1
h11==0.16.0
httpcore2==2.16.2
httpcore==1.0.9
httptools==0.9.0
httpx2==2.16.2
httpx==0.28.1
idna==3.20
jinja2==3.1.6
joblib==1.6.0
kubernetes==37.0.1
markdown-it-py==4.3.0
markupsafe==3.0.4
mdurl==0.1.2
mpmath==1.3.0
multidict==7.2.1
narwhals==2.29.0
networkx==3.6.1
oauthlib==4.0.1
opentelemetry-api==1.45.2
orjson==3.13.0
packaging==26.3
pandas==2.3.3
pillow==13.0.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==6.33.6
psutil==5.9.8
pyasn1==0.6.5
pycparser==3.12
pydantic==2.14.3
pydantic_core==2.50.4
pygments==2.21.0
pyjwt==2.15.1
python-dateutil==2.9.0.post0
python-dotenv==1.2.4
python-multipart==0.0.34
pytz==2026.6
pyyaml==6.0.3
regex==2026.11.15
requests-oauthlib==2.0.0
requests==2.34.2
rich==15.0.0
scikit-learn==1.9.1
scipy==1.17.1
setuptools==84.2.1
shellingham==1.5.4
six==1.17.0
starlette==1.10.0
sympy==1.14.0
tabulate==0.10.0
threadpoolctl==3.8.0
timing-asgi==0.3.2
tqdm==4.70.1
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
websocket-client==1.9.2
websockets==17.4
yarl==1.25.1"

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$(printf '%s\n' "python=$pyver" "$TORCH_PINS" "$LOCK_PINS" "$LLAMA_PIN" "$LLAMA_BUILD_PINS" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/pyenv-$key"
py="$dir/bin/python"

if [[ ! -f "$dir/.complete" ]]; then
  log="$dir.log"
  mkdir -p "$(dirname "$dir")"
  : >"$log"
  fail() { echo "hack/reference-env.sh: $1 failed; last lines of $log:" >&2; tail -n 40 "$log" >&2; exit 1; }
  pipi() { "$py" -m pip install --no-deps --no-input "$@" >>"$log" 2>&1; }
  start=$SECONDS

  echo "==> creating venv $dir (python $pyver; log: $log)" >&2
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir" >>"$log" 2>&1 || fail "venv"

  echo "==> installing torch 2.15.0 (--no-deps) + the CUDA runtime libraries it links (~3.5 GB download)" >&2
  pipi -r <(printf '%s\n' "$TORCH_PINS") || fail "torch install"

  echo "==> installing numpy, sentence-transformers, transformers, onnxruntime, kserve and their locked deps" >&2
  pipi -r <(printf '%s\n' "$LOCK_PINS") || fail "package install"

  echo "==> building $LLAMA_PIN from its source package (niced, 2 jobs; takes minutes)" >&2
  t0=$SECONDS
  constraints="$dir/llama-build-constraints.txt"
  printf '%s\n' "$LLAMA_BUILD_PINS" >"$constraints"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 PIP_CONSTRAINT="$constraints" \
    nice -n 10 "$py" -m pip install --no-deps --no-input --no-binary llama-cpp-python \
    --no-cache-dir -v "$LLAMA_PIN" >>"$log" 2>&1 || fail "llama-cpp-python build"
  echo "==> llama-cpp-python built in $((SECONDS - t0)) s" >&2

  echo "==> smoke test" >&2
  "$py" - >>"$log" 2>&1 <<'EOF' || fail "smoke test"
import importlib.metadata, numpy, torch, sentence_transformers, transformers, onnxruntime, kserve, llama_cpp
assert not torch.cuda.is_available()
assert float(torch.ones(4) @ torch.ones(4)) == 4.0
print("numpy", numpy.__version__, "torch", torch.__version__,
      "sentence-transformers", sentence_transformers.__version__,
      "transformers", transformers.__version__, "onnxruntime", onnxruntime.__version__,
      "kserve", importlib.metadata.version("kserve"),
      "llama-cpp-python", llama_cpp.__version__)
EOF
  tail -n 1 "$log" | sed 's/^/==> /' >&2
  echo "==> venv ready in $((SECONDS - start)) s ($(du -sh "$dir" | cut -f1))" >&2
  touch "$dir/.complete"
fi

echo "$py"
