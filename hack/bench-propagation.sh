#!/usr/bin/env bash
# How long a canary weight edit (and a blue-green switch) takes from the API
# server to the split in force on every agent, at 1, 10 and 100 nodes of the
# local e2e cluster (issue 6, point 8). For each size it brings the cluster up
# with that many fake nodes and agents, runs the `propagation` bench binary
# (e2e/src/bin/propagation.rs), and at the end draws the charts.
#
#   hack/bench-propagation.sh                 1, 10 and 100 nodes (~10 min)
#   GOGRID_PROPAGATION_NODES="10" hack/bench-propagation.sh   one size (the charts keep the others)
#
# Writes docs/bench/propagation-<n>.json, docs/bench/propagation.json (the
# chart report) and docs/bench/propagation-*.png. Leaves the cluster down.
# Needs root (network namespaces), like make e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${GOGRID_PROPAGATION_NODES:-"1 10 100"}
out=${GOGRID_BENCH_OUT:-docs/bench}
edits=${GOGRID_PROPAGATION_EDITS:-40}
switches=${GOGRID_PROPAGATION_SWITCHES:-10}
target=${CARGO_TARGET_DIR:-target}
log() { printf '==> %s\n' "$*" >&2; }

log "building the operator, the agent and the bench binaries"
cargo build -q -p gogrid-operator -p gogrid-agent
cargo build -q -p gogrid-e2e --bin propagation
cargo build -q -p gogrid-bench
mkdir -p "$out"
model_dir=$(mktemp -d /tmp/gogrid-propagation-XXXXXX)
trap 'rm -rf "$model_dir"' EXIT
"$target/debug/gogrid-bench" tiny-llama --out "$model_dir/tiny.gguf" >/dev/null
chmod -R a+rX "$model_dir"

for n in $sizes; do
  log "$n node(s): cluster up"
  e2e/cluster/down.sh >/dev/null 2>&1 || true
  # The API server's watch cache on, as in any real control plane (the e2e
  # tests run without it because they restart the API server).
  GOGRID_NODES=$n GOGRID_SKIP_INSTALL=1 GOGRID_APISERVER_WATCH_CACHE=true e2e/cluster/up.sh >&2
  GOGRID_SKIP_CARGO=1 e2e/cluster/install.sh >&2
  for node in $(e2e/bin/kubectl get nodes -o name); do
    e2e/bin/kubectl label --overwrite "$node" gogrid.io/preset=default >/dev/null
  done
  log "$n node(s): waiting for $n agents to report"
  for _ in $(seq 300); do
    reporting=$(e2e/bin/kubectl get gpunodes -o jsonpath='{range .items[*]}{.status.agent.podIP}{"\n"}{end}' 2>/dev/null | grep -c . || true)
    [ "$reporting" -ge "$n" ] && break
    sleep 2
  done
  [ "$reporting" -ge "$n" ] || { log "only $reporting of $n agents report"; exit 1; }
  log "$n node(s): $edits weight edits and $switches blue-green switches"
  ip netns exec gg-cp env KUBECONFIG="$PWD/e2e/.run/kubeconfig" \
    "$target/debug/propagation" --model "$model_dir/tiny.gguf" --edits "$edits" --switches "$switches" \
    > "$out/propagation-$n.json"
done
e2e/cluster/down.sh >/dev/null 2>&1 || true

log "drawing the charts"
# The charts cover every size measured so far (a run of one size keeps the others).
python3 - "$out" 1 10 100 <<'EOF'
import json, platform, sys, datetime
out, sizes = sys.argv[1], sys.argv[2:]
import os
runs = [json.load(open(f"{out}/propagation-{n}.json")) for n in sizes if os.path.exists(f"{out}/propagation-{n}.json")]
def rows(key, goal_of):
    rows = []
    for r in runs:
        s = r[key]
        goal = goal_of(r["nodes"])
        values = {"GoGrid p50": round(s["p50_ms"], 1), "GoGrid p99": round(s["p99_ms"], 1)}
        row = {"label": f'{r["nodes"]} node{"s" if r["nodes"] > 1 else ""}', "values": values}
        if goal:
            values["goal (p99)"] = goal
            row["goal"] = "<= 1.0x goal (p99)"
        rows.append(row)
    return rows
report = {
    "machine": f"{platform.machine()}, {len(open('/proc/cpuinfo').read().split('processor')) - 1} CPUs, e2e harness (kube-apiserver + kwok, agents as processes)",
    "date": datetime.date.today().isoformat(),
    "primary": "GoGrid p99",
    "groups": [
        {"id": "propagation-edit", "title": "Canary weight edit: API server to every agent", "unit": "ms",
         "higher_is_better": False,
         "note": "patch sent to the last agent routing the new weight (its split_applied timestamp); goal p99 <= 500 ms at 10, < 1 s at 100",
         "rows": rows("weight_edit_to_all_agents", lambda n: 500 if n <= 10 else 1000)},
        {"id": "propagation-switch", "title": "Blue-green switch: API server to every agent", "unit": "ms",
         "higher_is_better": False, "note": "promote and rollback alternately, previous version still loaded",
         "rows": rows("blue_green_switch_to_all_agents", lambda n: None)},
    ],
}
json.dump(report, open(f"{out}/propagation.json", "w"), indent=2)
EOF
"$(hack/plot-env.sh)" bench/plot/plot.py "$out/propagation.json" "$out" >&2
log "done: $out/propagation-*.json, $out/propagation-edit.png, $out/propagation-switch.png"
