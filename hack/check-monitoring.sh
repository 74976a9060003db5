#!/usr/bin/env bash
# Checks the chart's monitoring objects with promtool (`make chart`):
#   - the PrometheusRule's alerts, rendered by helm: `promtool check rules`;
#   - every query of the Grafana dashboard (charts/gogrid/dashboards/gogrid.json),
#     turned into recording rules so that promtool parses its PromQL.
# promtool comes with Debian's prometheus package (e2e/cluster/deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || e2e/cluster/deps.sh
helm=$(hack/tool.sh helm)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$helm" template gogrid charts/gogrid --kube-version 1.34.0 \
  --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
  | awk 'found { sub(/^  /, ""); print } /^spec:/ { found = 1 }' > "$tmp/alerts.yaml"

python3 - charts/gogrid/dashboards/gogrid.json > "$tmp/dashboard.yaml" <<'EOF'
import json, sys
dashboard = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        # Grafana's variables, as Grafana would fill them in.
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$namespace", ".*")
        print(f"      - record: gogrid:dashboard:panel{panel['id']}_{target['refId'].lower()}")
        print(f"        expr: {json.dumps(expr)}")
EOF
promtool check rules "$tmp/alerts.yaml" "$tmp/dashboard.yaml"
