#!/usr/bin/env bash
# Runs the request-decoding fuzz targets (node-agent/serve/fuzz) for a bounded
# time each; a crash fails the run and leaves the input under
# node-agent/serve/fuzz/artifacts/<target>/ (make it a regression test).
#
#   hack/fuzz.sh            30 s per target (CI's short pass)
#   hack/fuzz.sh 600        10 minutes per target (make fuzz)
#
# cargo-fuzz is installed once into ${GOGRID_CACHE:-~/.cache/gogrid}/tools/
# cargo-fuzz-<version>; the fuzz build goes to .../target-fuzz (outside the
# repo, reused by the next run). cargo-fuzz passes nightly flags: with a stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. `-s none`: the crate forbids
# `unsafe`, so the bugs to find are panics and wrong element counts, which
# libFuzzer catches without AddressSanitizer.
set -euo pipefail
seconds=${1:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${GOGRID_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gogrid}
version=0.13.2
tools="$cache/tools/cargo-fuzz-$version"
if [ "$(cargo-fuzz --version 2>/dev/null)" = "cargo-fuzz $version" ]; then
  tools=$(dirname "$(dirname "$(command -v cargo-fuzz)")")
elif [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "==> installing cargo-fuzz $version into $tools (once, ~2 min)" >&2
  cargo install --locked --quiet --root "$tools" cargo-fuzz --version "$version" >&2
fi
export PATH="$tools/bin:$PATH"
export CARGO_TARGET_DIR="$cache/target-fuzz" RUSTC_BOOTSTRAP=1
cd "$root/node-agent/serve/fuzz"
# A corpus per target, kept outside the repo so that each run starts where the
# last one stopped.
for target in rest_json rest_binary tensor_raw grpc_request; do
  corpus="$cache/fuzz-corpus/$target"
  mkdir -p "$corpus"
  echo "==> fuzzing $target for ${seconds}s (build first if needed; corpus $corpus)" >&2
  # grep hides libFuzzer's per-unit chatter; the status is cargo's.
  set +e
  cargo fuzz run "$target" -s none --release "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==|INFO: (Running|Seed)|.*(panicked|crash|ERROR|SUMMARY|error))'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "hack/fuzz.sh: $target failed (exit $status); the input is under node-agent/serve/fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "==> fuzzing: no crash in ${seconds}s per target" >&2
