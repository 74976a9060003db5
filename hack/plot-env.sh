#!/usr/bin/env bash
# Creates (once) the small Python environment that draws the benchmark charts
# (bench/plot/plot.py: matplotlib only) and prints its python.
#
#   hack/plot-env.sh                                  build if needed, print the venv's python path
#   $(hack/plot-env.sh) bench/plot/plot.py REPORT.json OUTDIR
#
# Kept apart from hack/reference-env.sh's 5 GB venv (whose lock must not
# change). Lives in ${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/plotenv-<hash>,
# <hash> covering the pins below and the Python version. Every package is
# pinned (matplotlib and its full dependency closure, resolved from PyPI) and
# installed with --no-deps. Idempotent: a second run only prints. Progress goes
# to stderr ("==> ..."), the path to stdout. ~40 MB download, ~200 MB on disk, ~20 s.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

PYTHON=${PYTHON:-python3}

PINS="matplotlib==3.11.2
contourpy==1.3.3
cycler==0.12.1
fonttools==4.68.0
kiwisolver==1.5.1
numpy==2.4.6
packaging==26.3
pillow==13.0.0
pyparsing==3.3.3
python-dateutil==4.0.0
tzdata==2026.6"

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$(printf '%s\n' "python=$pyver" "$PINS" | sha256sum | cut -c1-12)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/gogrid/plotenv-$key"
py="$dir/bin/python"

if [[ ! -f "$dir/.complete" ]]; then
  log="$dir.log"
  mkdir -p "$(dirname "$dir")"
  : >"$log"
  fail() { echo "hack/plot-env.sh: $1 failed; last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }
  start=$SECONDS
  echo "==> creating venv $dir (python $pyver; log: $log)" >&2
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir" >>"$log" 2>&1 || fail "venv"
  echo "==> installing matplotlib 3.11.2 and its pinned dependencies" >&2
  nice -n 10 "$py" -m pip install --no-deps --no-input --only-binary :all: \
    -r <(printf '%s\n' "$PINS") >>"$log" 2>&1 || fail "package install"
  echo "==> smoke test" >&2
  MPLBACKEND=Agg "$py" - >>"$log" 2>&1 <<'PYEOF' || fail "smoke test"
import io
import matplotlib
import matplotlib.pyplot as plt
fig, ax = plt.subplots()
ax.bar(["a", "b"], [1, 2])
buf = io.BytesIO()
fig.savefig(buf, format="png")
assert buf.getvalue()[:4] == b"\x89PNG"
print("matplotlib", matplotlib.__version__)
PYEOF
  tail -n 1 "$log" | sed 's/^/==> /' >&2
  echo "==> venv ready in $((SECONDS - start)) s ($(du -sh "$dir" | cut -f1))" >&2
  touch "$dir/.complete"
fi

echo "$py"
