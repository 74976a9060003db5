#!/usr/bin/env bash
# Draws the Grafana dashboard's panels from real data into docs/dashboard/:
# runs the prometheus e2e test on a fresh local cluster (a real Prometheus
# scraping real agents under load, SmolLM2 generating, a canary at 30% then
# 70%) with GOGRID_E2E_DASHBOARD_DIR set, so that it saves every panel's
# series, then hack/render-dashboard.py draws them. Root, like make e2e.
#
#   hack/dashboard-png.sh        (make dashboard-png; ~5 min with the tools built)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/gogrid-dashboard-XXXXXX)
trap 'rm -rf "$dir"' EXIT
chmod a+rwx "$dir"
echo "==> the prometheus e2e test, saving each panel's series to $dir" >&2
GOGRID_E2E_DASHBOARD_DIR=$dir e2e/run-tests.sh prometheus
echo "==> drawing docs/dashboard/ (hack/render-dashboard.py)" >&2
"$(hack/plot-env.sh)" hack/render-dashboard.py "$dir/panels.json" docs/dashboard
