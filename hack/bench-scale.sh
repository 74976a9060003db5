#!/usr/bin/env bash
# GoGrid's cost as the fleet grows (issue 9): for 100 and 1000 kwok nodes, each
# played by a hollow agent (`gogrid-agent hollow`, one process for all), it
# brings the local cluster up with that many hollow nodes, installs GoGrid and
# runs the `scale` bench binary (e2e/src/bin/scale.rs): the controller-manager's
# DaemonSet pace, ResourceProfile -> DaemonSet -> agent pods Ready, as many
# InferenceDeployments as nodes (create -> status written, the operator's own
# reconcile histogram), canary weight edits to every hollow agent, the requests
# sent to the API server while idle (its audit log), resident memory.
#
#   hack/bench-scale.sh                          100 and 1000 nodes (~25 min)
#   GOGRID_SCALE_NODES=100 hack/bench-scale.sh   one size (the report keeps the others)
#   GOGRID_SCALE_TAG=-before ...                 writes scale-<n>-before.json: the report
#                                                compares it with scale-<n>.json
#
# Writes docs/bench/scale-<n>.json, docs/bench/scale.md (the table),
# docs/bench/scale.json and docs/bench/scale-*.png (the charts). Leaves the
# cluster down. Needs root (network namespaces), like make e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${GOGRID_SCALE_NODES:-"100 1000"}
out=${GOGRID_BENCH_OUT:-docs/bench}
edits=${GOGRID_SCALE_EDITS:-20}
idle=${GOGRID_SCALE_IDLE:-120}
tag=${GOGRID_SCALE_TAG:-}
# Release builds, as a cluster runs them (GOGRID_SCALE_PROFILE=debug for the
# figures of a debug build, e.g. the first 100-node run in docs/benchmarks.md).
profile=${GOGRID_SCALE_PROFILE:-release}
case $profile in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) echo "GOGRID_SCALE_PROFILE must be release or debug (got $profile)" >&2; exit 2 ;;
esac
bin=${CARGO_TARGET_DIR:-target}/$profile
log() { printf '==> %s\n' "$*" >&2; }

# 1000 watches and clients in one process, and as many in the API server.
ulimit -n "$(ulimit -Hn)"

log "building the operator, the agent and the scale bench (cargo build, $profile)"
cargo build "${cargo_profile[@]}" -p gogrid-operator -p gogrid-agent
cargo build "${cargo_profile[@]}" -p gogrid-e2e --bin scale --bin apiproxy
export GOGRID_OPERATOR_BIN=$bin/gogrid-operator GOGRID_AGENT_BIN=$bin/gogrid-agent GOGRID_APIPROXY_BIN=$bin/apiproxy
mkdir -p "$out"
. e2e/cluster/lib.sh

for n in $sizes; do
  log "$n hollow nodes: cluster up (kwok nodes, watch cache on, GoGrid's reads audited)"
  e2e/cluster/down.sh >/dev/null 2>&1 || true
  GOGRID_NODES=1 GOGRID_HOLLOW_NODES=$n GOGRID_SKIP_INSTALL=1 GOGRID_APISERVER_WATCH_CACHE=true \
    GOGRID_AUDIT_READS=1 e2e/cluster/up.sh >&2
  # The hollow agents share one token of the agents' ServiceAccount, bound to
  # no pod: the admission policy that ties an agent to its own node's GpuNode
  # (agent.ownGpuNodeOnly) needs a pod-bound token per node, so it is off here.
  # The agent supervisor leaves the hollow nodes' pods alone.
  GOGRID_AGENT_SELECTOR='app.kubernetes.io/component=agent,gogrid.io/profile!=scale' \
    GOGRID_HELM_ARGS="--set agent.ownGpuNodeOnly=false" GOGRID_SKIP_CARGO=1 e2e/cluster/install.sh >&2
  # shellcheck disable=SC1091
  agent_sa=$(. "$GG_RUN/install.env" && echo "$GG_AGENT_SA")
  # Straight to the API server, not through the fault tests' proxy.
  gg_write_kubeconfig "$GG_RUN/kubeconfig-hollow" "$agent_sa" \
    "$(gg_kubectl create token "$agent_sa" -n "$GG_NAMESPACE" --duration=24h)"
  log "$n hollow nodes: measuring (progress below)"
  ip netns exec "$GG_CP_NS" env KUBECONFIG="$GG_RUN/kubeconfig" \
    "$bin/scale" --nodes "$n" --deployments "$n" --edits "$edits" --idle "$idle" \
    --agent "$bin/gogrid-agent" --agent-kubeconfig "$GG_RUN/kubeconfig-hollow" \
    --hollow-addr 127.0.0.1:9102 --dir "$GG_RUN" \
    --agent-namespace "$GG_NAMESPACE" > "$out/scale-$n$tag.json.tmp"
  mv "$out/scale-$n$tag.json.tmp" "$out/scale-$n$tag.json"
done
e2e/cluster/down.sh >/dev/null 2>&1 || true

log "the report and the charts"
python3 hack/scale-report.py "$out"
"$(hack/plot-env.sh)" bench/plot/plot.py "$out/scale.json" "$out" >&2
log "done: $out/scale.md, $out/scale-*.json, $out/scale-*.png"
