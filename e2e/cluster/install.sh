#!/usr/bin/env bash
# Installs GoGrid into the running e2e cluster (called by up.sh; tests may call
# it again, it is idempotent):
#   1. the Prometheus Operator CRDs ServiceMonitor and PrometheusRule, from the
#      Go module github.com/prometheus-operator/prometheus-operator (pinned below),
#      applied server-side: before the chart, whose ServiceMonitor needs them;
#   2. the chart: helm upgrade --install <release> <chart> -n <namespace>
#      --create-namespace --wait=false;
#   3. the operator as a local process in netns gg-cp, the way the kubelet would
#      run it, authenticated as the chart's operator ServiceAccount;
#   4. e2e/cluster/agents.sh in the background: it runs one gogrid-agent per
#      agent pod that kwok marks Running, inside that node's network namespace.
#
# Environment:
#   GOGRID_CHART (charts/gogrid), GOGRID_RELEASE (gogrid),
#   GOGRID_NAMESPACE (gogrid-system), GOGRID_HELM_ARGS (extra helm arguments,
#   word-split, e.g. "--set operator.logLevel=debug"),
#   GOGRID_OPERATOR_BIN / GOGRID_AGENT_BIN (default target/debug/gogrid-*,
#   built with cargo unless GOGRID_SKIP_CARGO=1), GOGRID_LOG (info),
#   GOGRID_SKIP_PROCESSES=1 (chart and CRDs only: no operator, no agents).
set -euo pipefail
# shellcheck source=e2e/cluster/lib.sh
. "$(dirname "$0")/lib.sh"
gg_need_root
cd "$GG_ROOT"

PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_OPERATOR_CRDS=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

chart=${GOGRID_CHART:-charts/gogrid}
if [ ! -f "$GG_RUN/kubeconfig" ] || ! gg_kubectl get --raw /readyz >/dev/null 2>&1; then
  gg_die "the e2e cluster is not running: make cluster-up"
fi
helm=$(hack/tool.sh helm)
gg_helm() { ip netns exec "$GG_CP_NS" "$helm" --kubeconfig "$GG_RUN/kubeconfig" "$@"; }

# --- 1. Prometheus Operator CRDs ------------------------------------------------------
gg_log "   Prometheus Operator CRDs ($PROMETHEUS_OPERATOR_VERSION): ServiceMonitor, PrometheusRule"
po_dir=$(cd /tmp && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod \
  go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$po_dir/example/prometheus-operator-crd" ] || gg_die "prometheus-operator module not found in the module cache"
crd_args=()
for f in "${PROMETHEUS_OPERATOR_CRDS[@]}"; do crd_args+=(-f "$po_dir/example/prometheus-operator-crd/$f"); done
gg_kubectl apply --server-side --force-conflicts --field-manager gogrid-e2e "${crd_args[@]}" >/dev/null
gg_kubectl wait --for condition=Established --timeout 60s \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null

# --- 2. the chart -----------------------------------------------------------------------
# The monitoring objects on: the Prometheus Operator's CRDs are installed above,
# and the e2e Prometheus test scrapes what the ServiceMonitors select.
monitoring="--set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true --set metrics.dashboards.enabled=true"
gg_log "   helm upgrade --install $GG_RELEASE $chart -n $GG_NAMESPACE $monitoring ${GOGRID_HELM_ARGS:-}"
helm_install() {
  # shellcheck disable=SC2086 # $monitoring and GOGRID_HELM_ARGS are word lists on purpose
  gg_helm upgrade --install "$GG_RELEASE" "$chart" -n "$GG_NAMESPACE" --create-namespace \
    --wait=false $monitoring ${GOGRID_HELM_ARGS:-} >>"$GG_LOGS/helm-install.log" 2>&1
}
: >"$GG_LOGS/helm-install.log"
if ! helm_install; then
  # On a first install the preset ResourceProfiles are a post-install hook; when
  # the API server has not yet served the just-created CRDs to Helm's discovery,
  # Helm fails with "no matches for kind". The release is left failed with the
  # CRDs in place: once they are Established, an upgrade completes it (the
  # presets are then ordinary release objects). docs/operations.md says so too.
  grep -q "no matches for kind" "$GG_LOGS/helm-install.log" \
    || { tail -n 30 "$GG_LOGS/helm-install.log" >&2; gg_die "helm install failed (log $GG_LOGS/helm-install.log)"; }
  gg_log "   the CRDs were not discoverable yet when Helm ran the presets hook: waiting for them, then upgrading"
  gg_kubectl wait --for condition=Established --timeout 60s crd --all >/dev/null
  helm_install || { tail -n 30 "$GG_LOGS/helm-install.log" >&2; gg_die "helm install failed (log $GG_LOGS/helm-install.log)"; }
fi

# The chart's ServiceAccounts, found by their labels (names depend on fullname).
sa_of() { # <component>
  gg_kubectl get serviceaccount -n "$GG_NAMESPACE" \
    -l "app.kubernetes.io/instance=$GG_RELEASE,app.kubernetes.io/component=$1" \
    -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true
}
operator_sa=$(sa_of operator); operator_sa=${operator_sa:-$GG_RELEASE-operator}
agent_sa=$(sa_of agent); agent_sa=${agent_sa:-$GG_RELEASE-agent}
gg_log "   ServiceAccounts: $operator_sa (operator), $agent_sa (agents)"
cat > "$GG_RUN/install.env" <<EOF
# written by e2e/cluster/install.sh
GG_RELEASE=$GG_RELEASE
GG_NAMESPACE=$GG_NAMESPACE
GG_OPERATOR_SA=$operator_sa
GG_AGENT_SA=$agent_sa
EOF

[ "${GOGRID_SKIP_PROCESSES:-}" = 1 ] && { gg_log "   operator and agents: skipped (GOGRID_SKIP_PROCESSES=1)"; exit 0; }

# --- 3. binaries ----------------------------------------------------------------------------
operator_bin=${GOGRID_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$GG_ROOT/target}/debug/gogrid-operator}
agent_bin=${GOGRID_AGENT_BIN:-${CARGO_TARGET_DIR:-$GG_ROOT/target}/debug/gogrid-agent}
if [ "${GOGRID_SKIP_CARGO:-}" != 1 ] && [ -z "${GOGRID_OPERATOR_BIN:-}${GOGRID_AGENT_BIN:-}" ]; then
  gg_log "   cargo build -p gogrid-operator -p gogrid-agent, apiproxy (incremental; log $GG_LOGS/cargo-build.log)"
  # Two invocations: `--bin` would narrow the first to that one binary.
  if ! { cargo build -p gogrid-operator -p gogrid-agent && cargo build -p gogrid-e2e --bin apiproxy; } >"$GG_LOGS/cargo-build.log" 2>&1; then
    if [ -x "$operator_bin" ] && [ -x "$agent_bin" ]; then
      gg_log "   WARNING: cargo build failed; using the binaries already in target/debug (see $GG_LOGS/cargo-build.log)"
    else
      tail -n 30 "$GG_LOGS/cargo-build.log" >&2
      gg_die "cargo build failed and no earlier binaries exist (log $GG_LOGS/cargo-build.log)"
    fi
  fi
fi
[ -x "$operator_bin" ] || gg_die "no operator binary at $operator_bin"
[ -x "$agent_bin" ] || gg_die "no agent binary at $agent_bin"

proxy_bin=${GOGRID_APIPROXY_BIN:-${CARGO_TARGET_DIR:-$GG_ROOT/target}/debug/apiproxy}
[ -x "$proxy_bin" ] || gg_die "no apiproxy binary at $proxy_bin (cargo build -p gogrid-e2e --bin apiproxy)"

# --- 4. the API proxy and the operator -------------------------------------------------------
if ! gg_alive apiproxy; then
  gg_start apiproxy "$GG_CP_NS" -- "$proxy_bin" --listen "$GG_CP_IP:$GG_PROXY_PORT" \
    --upstream "$GG_CP_IP:$GG_APISERVER_PORT" --control "$GG_PROXY_CONTROL"
  gg_log "   API proxy started (pid $(gg_pid apiproxy), $GG_CP_IP:$GG_PROXY_PORT -> :$GG_APISERVER_PORT, control $GG_PROXY_CONTROL)"
fi

# A token of the operator's ServiceAccount: the operator runs with exactly the
# chart's RBAC, as it would in a pod.
gg_write_kubeconfig "$GG_RUN/kubeconfig-operator" "$operator_sa" \
  "$(gg_kubectl create token "$operator_sa" -n "$GG_NAMESPACE" --duration=24h)" "$GG_PROXY_PORT"
# A newer binary (cargo rebuilt it) replaces a running operator.
if gg_alive operator && [ "$operator_bin" -nt "$GG_PIDS/operator.pid" ]; then
  gg_log "   operator binary changed: restarting the operator"
  gg_stop operator
fi
if gg_alive operator; then
  gg_log "   operator already running (pid $(gg_pid operator))"
else
  gg_start operator "$GG_CP_NS" \
    KUBECONFIG="$GG_RUN/kubeconfig-operator" POD_NAMESPACE="$GG_NAMESPACE" POD_NAME=gogrid-operator-local-0 \
    GOGRID_HTTP_ADDR="$GG_OPERATOR_HTTP" GOGRID_AGENT_NAMESPACE="$GG_NAMESPACE" GOGRID_LOG="${GOGRID_LOG:-info}" \
    -- "$operator_bin" run
  gg_log "   operator started (pid $(gg_pid operator), http $GG_OPERATOR_HTTP, log $GG_LOGS/operator.log)"
  sleep 1
  gg_alive operator || { tail -n 30 "$GG_LOGS/operator.log" >&2; gg_die "the operator exited at once (log $GG_LOGS/operator.log)"; }
fi

# --- 5. the agent supervisor ----------------------------------------------------------
# A token of the agents' ServiceAccount bound to no pod, for tests; the
# supervisor gives each agent a token bound to its pod, as the kubelet does.
gg_write_kubeconfig "$GG_RUN/kubeconfig-agent" "$agent_sa" \
  "$(gg_kubectl create token "$agent_sa" -n "$GG_NAMESPACE" --duration=24h)"
if gg_alive agents && [ "$agent_bin" -nt "$GG_PIDS/agents.pid" ]; then
  gg_log "   agent binary changed: restarting the agent supervisor and its agents"
  gg_stop agents 30
fi
if gg_alive agents; then
  gg_log "   agent supervisor already running (pid $(gg_pid agents))"
else
  gg_start agents "$GG_CP_NS" GOGRID_AGENT_BIN="$agent_bin" -- bash "$GG_ROOT/e2e/cluster/agents.sh"
  gg_log "   agent supervisor started (pid $(gg_pid agents), log $GG_LOGS/agents.log; agents log to $GG_LOGS/agent-<node>.log)"
fi
