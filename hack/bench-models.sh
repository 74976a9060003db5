#!/usr/bin/env bash
# Makes the extra GGUF files the LLM benchmarks use: SmolLM2-135M-Instruct
# quantized to Q4_0 and Q8_0. Only the Q4_1 file is shipped (hack/models.sh
# smollm2), so the others are requantized from it with llama.cpp's own
# quantizer (llama_model_quantize, allow_requantize=True) through the reference
# venv's llama-cpp-python (bench/peers/quantize.py).
#
#   hack/bench-models.sh          build both if missing; prints nothing on stdout
#   hack/bench-models.sh q4_0     build if missing, print the Q4_0 file's path
#   hack/bench-models.sh q8_0     build if missing, print the Q8_0 file's path
#
# Output: ${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/models/bench/SmolLM2-135M-Instruct.<Q>.gguf
# (<Q> = Q4_0 / Q8_0). Idempotent: an existing file is kept. Progress goes to
# stderr ("==> ..."). Note the weights are a requantization of Q4_1, not a
# quantization of the original f16 weights; both engines read the same files,
# so the comparison is fair, but the quality is that of Q4_1 at best.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir="${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/models/bench"

case "${1:-}" in
  "") want=(q4_0 q8_0) ;;
  q4_0 | q8_0) want=("$1") ;;
  *) echo "hack/bench-models.sh: unknown quantization '$1' (known: q4_0 q8_0)" >&2; exit 2 ;;
esac

path_of() { echo "$outdir/SmolLM2-135M-Instruct.${1^^}.gguf"; }

src=""
py=""
for q in "${want[@]}"; do
  out=$(path_of "$q")
  if [[ ! -f "$out" ]]; then
    [[ -n "$src" ]] || src=$("$root/hack/models.sh" smollm2)
    [[ -n "$py" ]] || py=$("$root/hack/reference-env.sh")
    echo "==> requantizing $(basename "$src") -> $(basename "$out") (llama.cpp llama_model_quantize)" >&2
    mkdir -p "$outdir"
    nice -n 10 "$py" "$root/bench/peers/quantize.py" "$src" "$out" "$q" --threads 2 >&2 2>"$out.log" || {
      echo "hack/bench-models.sh: quantizing to $q failed; last lines of $out.log:" >&2
      tail -n 20 "$out.log" >&2
      exit 1
    }
    echo "==> wrote $out ($(du -h "$out" | cut -f1))" >&2
  fi
done

if [[ $# -gt 0 ]]; then
  path_of "$1"
fi
