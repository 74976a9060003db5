#!/usr/bin/env bash
# Brings up the local, real Kubernetes control plane of the end-to-end tests
# (`make cluster-up`): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok inside network namespace gg-cp, GOGRID_NODES (3) fake
# GPU nodes gg-node-N with a network namespace each, then GoGrid itself
# (e2e/cluster/install.sh). Idempotent: what already runs is left alone.
# e2e/README.md describes the layout; e2e/cluster/down.sh removes it all.
#
# Environment: GOGRID_NODES (3), GOGRID_CACHE (~/.cache/gogrid: built tools),
# GOGRID_SKIP_INSTALL=1 (control plane and nodes only), GOGRID_HOLLOW_NODES (0:
# that many more kwok nodes gg-hollow-NNNN labelled gogrid.io/hollow=true, with
# no network namespace, for the hollow agents of hack/bench-scale.sh),
# GOGRID_AUDIT_READS=1 (the audit log records GoGrid's reads too, not only its
# writes), and those of install.sh.
set -euo pipefail
# shellcheck source=e2e/cluster/lib.sh
. "$(dirname "$0")/lib.sh"
gg_need_root
cd "$GG_ROOT"
total_start=$SECONDS

[[ "$GG_NODES" =~ ^[0-9]+$ ]] && [ "$GG_NODES" -ge 1 ] && [ "$GG_NODES" -le 200 ] \
  || gg_die "GOGRID_NODES must be 1..200 (got $GG_NODES)"
hollow_nodes=${GOGRID_HOLLOW_NODES:-0}
[[ "$hollow_nodes" =~ ^[0-9]+$ ]] && [ "$hollow_nodes" -le 5000 ] \
  || gg_die "GOGRID_HOLLOW_NODES must be 0..5000 (got $hollow_nodes)"

# --- 1. packages and tools ---------------------------------------------------
gg_log "[1/8] Debian packages (etcd-server, prometheus, iproute2)"
"$GG_ROOT/e2e/cluster/deps.sh"

gg_log "[2/8] tools (built once into ${GOGRID_CACHE:-$HOME/.cache/gogrid}/tools)"
apiserver=$(hack/tool.sh kube kube-apiserver)
kcm=$(hack/tool.sh kube kube-controller-manager)
scheduler=$(hack/tool.sh kube kube-scheduler)
kwok=$(hack/tool.sh kwok)
helm=$(hack/tool.sh helm)
kwok_dir=$(cd e2e/tools/kwok && GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod \
  go mod download -json sigs.k8s.io/kwok | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$kwok_dir/kustomize/stage" ] || gg_die "kwok module source not found (go mod download sigs.k8s.io/kwok)"
gg_log "   kube-apiserver $("$apiserver" --version | awk '{print $2}'), kwok $("$kwok" --version 2>/dev/null | awk '{print $3; exit}'), etcd $(etcd --version | awk '/etcd Version/ {print $3}')"

mkdir -p "$GG_RUN" "$GG_LOGS" "$GG_PIDS" "$GG_PKI"
cat > "$GG_RUN/env" <<EOF
# written by e2e/cluster/up.sh: paths and addresses of the running harness
GG_HELM=$helm
GG_KUBE_APISERVER=$apiserver
GG_KWOK=$kwok
GG_SERVER=https://$GG_CP_IP:$GG_APISERVER_PORT
GG_NODES=$GG_NODES
EOF

# --- 2. certificates, tokens, kubeconfigs -----------------------------------------
gg_log "[3/8] certificates and tokens in $GG_PKI"
(
  cd "$GG_PKI"
  umask 077
  if [ ! -f ca.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=gogrid-e2e-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
  fi
  if [ ! -f apiserver.crt ]; then
    cat > apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$GG_CP_IP,IP:10.96.0.1,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -sha256 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
  fi
  if [ ! -f sa.key ]; then
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  fi
  if [ ! -f tokens.csv ]; then
    # token,user,uid,"group1,group2"
    {
      echo "$(openssl rand -hex 24),admin,admin-uid,\"system:masters\""
      echo "$(openssl rand -hex 24),system:kube-controller-manager,kcm-uid"
      echo "$(openssl rand -hex 24),system:kube-scheduler,scheduler-uid"
      echo "$(openssl rand -hex 24),kwok-controller,kwok-uid,\"system:masters\""
    } > tokens.csv
  fi
)
token_of() { awk -F, -v u="$1" '$2 == u {print $1}' "$GG_PKI/tokens.csv"; }
gg_write_kubeconfig "$GG_RUN/kubeconfig" admin "$(token_of admin)"
gg_write_kubeconfig "$GG_RUN/kubeconfig-kcm" system:kube-controller-manager "$(token_of system:kube-controller-manager)"
gg_write_kubeconfig "$GG_RUN/kubeconfig-scheduler" system:kube-scheduler "$(token_of system:kube-scheduler)"
gg_write_kubeconfig "$GG_RUN/kubeconfig-kwok" kwok-controller "$(token_of kwok-controller)"

# --- 3. network namespaces ---------------------------------------------------
gg_log "[4/8] network: netns $GG_CP_NS ($GG_BRIDGE $GG_CP_IP/$GG_PREFIX) and gg-node-1..$GG_NODES"
ns_exists() { [ -e "/run/netns/$1" ]; }
# IPv4 only: no IPv6 link-local chatter, even inside the harness's own namespaces
ns_add() {
  ns_exists "$1" && return 0
  ip netns add "$1"
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
}
ns_add "$GG_CP_NS"
ip -n "$GG_CP_NS" link set lo up
ip -n "$GG_CP_NS" link show "$GG_BRIDGE" >/dev/null 2>&1 || ip -n "$GG_CP_NS" link add "$GG_BRIDGE" type bridge
gg_has_addr "$GG_CP_NS" "$GG_BRIDGE" "$GG_CP_IP/$GG_PREFIX" \
  || ip -n "$GG_CP_NS" addr add "$GG_CP_IP/$GG_PREFIX" dev "$GG_BRIDGE"
ip -n "$GG_CP_NS" link set "$GG_BRIDGE" up
for n in $(seq "$GG_NODES"); do
  ns=$(gg_node_name "$n") peer="veth-n$n"
  ns_add "$ns"
  ip -n "$ns" link set lo up
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip -n "$GG_CP_NS" link del "$peer" 2>/dev/null || true
    ip -n "$GG_CP_NS" link add "$peer" type veth peer name eth0 netns "$ns"
  fi
  ip -n "$GG_CP_NS" link set "$peer" master "$GG_BRIDGE" up
  ip -n "$ns" link set eth0 up
  gg_has_addr "$ns" eth0 "$(gg_node_ip "$n")/$GG_PREFIX" \
    || ip -n "$ns" addr add "$(gg_node_ip "$n")/$GG_PREFIX" dev eth0
  ip -n "$ns" route replace default via "$GG_CP_IP" dev eth0
done
# nodes beyond GOGRID_NODES from an earlier, larger run are left as they are

# --- 4. etcd and kube-apiserver ---------------------------------------------------
gg_log "[5/8] etcd and kube-apiserver"
if gg_alive etcd; then
  gg_log "   etcd already running (pid $(gg_pid etcd))"
else
  gg_start etcd "$GG_CP_NS" -- etcd --name gogrid-e2e --data-dir "$GG_RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$GG_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$GG_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$GG_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$GG_ETCD_PEER_PORT" \
    --initial-cluster "gogrid-e2e=http://127.0.0.1:$GG_ETCD_PEER_PORT" \
    --listen-metrics-urls "http://127.0.0.1:2381" --quota-backend-bytes 2147483648 \
    --auto-compaction-retention 1 --logger zap --log-level warn
  gg_log "   etcd started (pid $(gg_pid etcd), log $GG_LOGS/etcd.log)"
fi
GG_WAIT_LOG="$GG_LOGS/etcd.log" gg_wait "etcd http://127.0.0.1:$GG_ETCD_PORT/health" 60 \
  gg_in_cp curl -sf "http://127.0.0.1:$GG_ETCD_PORT/health"

# Debian's etcd 3.4.23 lacks the progress notifications behind the apiserver's
# RequestWatchProgress, so the apiserver refuses streaming lists. With its
# WatchList gate on (the default), it also turns every plain watch from
# resourceVersion "" or "0" into one (sendInitialEvents=true) and fails it:
# kwok's watches all do that, so its caches went stale, its lease renewals
# conflicted and the nodes flapped NotReady. WatchList=false keeps the classic
# LIST+WATCH that etcd 3.4 supports.
# For the same reason the watch cache is off: after an API server restart a
# resource's cache only moves on when that resource is written (etcd 3.4 sends
# no progress notifications to move it), so a client that watches again from
# the resourceVersion it already saw gets "Too large resource version" for
# minutes. Without the cache, watches are served from etcd itself.
# GOGRID_APISERVER_WATCH_CACHE=true turns it back on where no API server
# restarts (hack/bench-propagation.sh: a real control plane fans one write out
# to many watchers from the cache, not from one etcd watch per watcher).
watch_cache=${GOGRID_APISERVER_WATCH_CACHE:-false}
# The audit log is the fault tests' oracle for writes: every write by a
# ServiceAccount of GoGrid's namespace (the operator, the agents, test
# accounts), at Metadata level (who, what, when, the answer), nothing else.
# GOGRID_AUDIT_READS=1 records their reads as well (the scale bench counts
# every request GoGrid sends).
reads_rule=""
if [ "${GOGRID_AUDIT_READS:-}" = 1 ]; then
  reads_rule="  - level: Metadata
    userGroups: [\"system:serviceaccounts:$GG_NAMESPACE\"]"
fi
cat > "$GG_RUN/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
$reads_rule
  - level: Metadata
    userGroups: ["system:serviceaccounts:$GG_NAMESPACE"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
EOF
if gg_alive kube-apiserver; then
  gg_log "   kube-apiserver already running (pid $(gg_pid kube-apiserver))"
else
  gg_start kube-apiserver "$GG_CP_NS" -- "$apiserver" \
    --etcd-servers "http://127.0.0.1:$GG_ETCD_PORT" \
    --bind-address "$GG_CP_IP" --advertise-address "$GG_CP_IP" --secure-port "$GG_APISERVER_PORT" \
    --tls-cert-file "$GG_PKI/apiserver.crt" --tls-private-key-file "$GG_PKI/apiserver.key" \
    --client-ca-file "$GG_PKI/ca.crt" --token-auth-file "$GG_PKI/tokens.csv" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$GG_PKI/sa.pub" --service-account-signing-key-file "$GG_PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --feature-gates WatchList=false --watch-cache="$watch_cache" --profiling=false --v 1 \
    --audit-policy-file "$GG_RUN/audit-policy.yaml" --audit-log-path "$GG_LOGS/audit.log" \
    --audit-log-format json --audit-log-maxsize 1024 --audit-log-maxbackup 2
  gg_log "   kube-apiserver started (pid $(gg_pid kube-apiserver), log $GG_LOGS/kube-apiserver.log)"
fi
GG_WAIT_LOG="$GG_LOGS/kube-apiserver.log" gg_wait "kube-apiserver https://$GG_CP_IP:$GG_APISERVER_PORT/readyz" 180 \
  gg_kubectl get --raw /readyz

# --- 5. controller-manager, scheduler, kwok ---------------------------------------
gg_log "[6/8] kube-controller-manager, kube-scheduler, kwok"
if gg_alive kube-controller-manager; then
  gg_log "   kube-controller-manager already running (pid $(gg_pid kube-controller-manager))"
else
  gg_start kube-controller-manager "$GG_CP_NS" -- "$kcm" \
    --kubeconfig "$GG_RUN/kubeconfig-kcm" \
    --authentication-kubeconfig "$GG_RUN/kubeconfig-kcm" --authorization-kubeconfig "$GG_RUN/kubeconfig-kcm" \
    --bind-address 127.0.0.1 --secure-port "$GG_KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$GG_PKI/sa.key" --root-ca-file "$GG_PKI/ca.crt" \
    --cluster-signing-cert-file "$GG_PKI/ca.crt" --cluster-signing-key-file "$GG_PKI/ca.key" \
    --profiling=false --v 1
  gg_log "   kube-controller-manager started (pid $(gg_pid kube-controller-manager))"
fi
if gg_alive kube-scheduler; then
  gg_log "   kube-scheduler already running (pid $(gg_pid kube-scheduler))"
else
  gg_start kube-scheduler "$GG_CP_NS" -- "$scheduler" \
    --kubeconfig "$GG_RUN/kubeconfig-scheduler" \
    --authentication-kubeconfig "$GG_RUN/kubeconfig-scheduler" --authorization-kubeconfig "$GG_RUN/kubeconfig-scheduler" \
    --bind-address 127.0.0.1 --secure-port "$GG_SCHEDULER_PORT" --leader-elect=false \
    --profiling=false --v 1
  gg_log "   kube-scheduler started (pid $(gg_pid kube-scheduler))"
fi

# kwok: the Stage objects (node initialise and lease heartbeat, pod ready,
# complete and delete) are its config, taken from kwok's own module source.
stages=(node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
        pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml)
{
  echo "# Stages of kwok $kwok_dir, collected by e2e/cluster/up.sh"
  for s in "${stages[@]}"; do echo "---"; cat "$kwok_dir/kustomize/stage/$s"; done
  # kwok v0.8.0 reserves a pod's IP in its per-node pool only when a stage
  # patches that pod, and its pools live in memory: after a restart of kwok the
  # IPs of pods already Running were handed out again. This stage matches those
  # pods and rewrites their own podIP (no change, so no write), which makes kwok
  # reserve it.
  cat <<'STAGE'
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: gogrid-e2e-pod-keep-ip
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values:
      - 'Running'
    - key: '.status.podIP'
      operator: 'Exists'
    - key: '.metadata.ownerReferences.[].kind'
      operator: 'NotIn'
      values:
      - 'Job'
  next:
    statusTemplate: |
      podIP: {{ .status.podIP | Quote }}
STAGE
} > "$GG_RUN/kwok.yaml"
if gg_alive kwok; then
  gg_log "   kwok already running (pid $(gg_pid kwok))"
else
  # --cidr and --node-ip only serve nodes without spec.podCIDR or an InternalIP
  # (e.g. made by a test): addresses of the harness network that nothing holds.
  gg_start kwok "$GG_CP_NS" -- "$kwok" \
    --kubeconfig "$GG_RUN/kubeconfig-kwok" --config "$GG_RUN/kwok.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --cidr 10.244.255.0/24 \
    --node-ip 10.244.0.254 --server-address "127.0.0.1:$GG_KWOK_PORT"
  gg_log "   kwok started (pid $(gg_pid kwok))"
fi
GG_WAIT_LOG="$GG_LOGS/kube-controller-manager.log" gg_wait "kube-controller-manager https://127.0.0.1:$GG_KCM_PORT/healthz" 120 \
  gg_in_cp curl -skf "https://127.0.0.1:$GG_KCM_PORT/healthz"
GG_WAIT_LOG="$GG_LOGS/kube-scheduler.log" gg_wait "kube-scheduler https://127.0.0.1:$GG_SCHEDULER_PORT/readyz" 120 \
  gg_in_cp curl -skf "https://127.0.0.1:$GG_SCHEDULER_PORT/readyz"
GG_WAIT_LOG="$GG_LOGS/kwok.log" gg_wait "kwok http://127.0.0.1:$GG_KWOK_PORT/healthz" 60 \
  gg_in_cp curl -sf "http://127.0.0.1:$GG_KWOK_PORT/healthz"
GG_WAIT_LOG="$GG_LOGS/kube-controller-manager.log" gg_wait "the default ServiceAccount" 120 \
  gg_kubectl get serviceaccount default -n default

# --- 6. fake GPU nodes ---------------------------------------------------------------
gg_log "[7/8] fake GPU nodes gg-node-1..$GG_NODES (2x NVIDIA GeForce RTX 4090 each)"
for n in $(seq "$GG_NODES"); do
  node=$(gg_node_name "$n")
  gg_kubectl get node "$node" >/dev/null 2>&1 && continue
  # Status is kept on create for Nodes (the kubelet relies on it); kwok's
  # node-initialize stage keeps capacity, allocatable and the InternalIP.
  gg_kubectl create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $node
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "2"
    nvidia.com/gpu.product: NVIDIA-GeForce-RTX-4090
    nvidia.com/gpu.memory: "24564"
spec:
  podCIDR: $(gg_node_cidr "$n")
  podCIDRs: [$(gg_node_cidr "$n")]
status:
  addresses:
  - {type: InternalIP, address: $(gg_node_ip "$n")}
  - {type: Hostname, address: $node}
  capacity: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 500Gi, nvidia.com/gpu: "2"}
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 500Gi, nvidia.com/gpu: "2"}
EOF
  gg_log "   created node $node (podCIDR $(gg_node_cidr "$n"), InternalIP $(gg_node_ip "$n"))"
done
# One list, not `kubectl wait` (one GET per node at kubectl's 5 requests/s).
nodes_ready() {
  local ready
  ready=$(gg_kubectl get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{range .status.conditions[?(@.type=="Ready")]}{.status}{"\n"}{end}{end}' | grep -c True)
  [ "$ready" -ge "$GG_NODES" ]
}
GG_WAIT_LOG="$GG_LOGS/kwok.log" gg_wait "$GG_NODES nodes Ready" 120 nodes_ready

# Hollow nodes (GOGRID_HOLLOW_NODES): kwok nodes without a network namespace,
# written as one manifest (one kubectl call). Their pods get IPs from their
# podCIDR, outside the harness network: nothing connects to a hollow agent.
if [ "$hollow_nodes" -gt 0 ]; then
  gg_log "   $hollow_nodes hollow nodes gg-hollow-0001..$(printf %04d "$hollow_nodes") (label gogrid.io/hollow=true)"
  manifest="$GG_RUN/hollow-nodes.yaml"
  : > "$manifest"
  for i in $(seq "$hollow_nodes"); do
    node=$(printf 'gg-hollow-%04d' "$i") cidr="10.$((100 + i / 256)).$((i % 256)).0/24"
    cat >> "$manifest" <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: $node, kubernetes.io/os: linux, kubernetes.io/arch: amd64,
           type: kwok-hollow, gogrid.io/hollow: "true", nvidia.com/gpu.present: "true", nvidia.com/gpu.count: "2"}
spec: {podCIDR: "$cidr", podCIDRs: ["$cidr"]}
status:
  addresses: [{type: InternalIP, address: "10.250.$((i / 256)).$((i % 256))"}, {type: Hostname, address: $node}]
  capacity: {cpu: "32", memory: 128Gi, pods: "110", nvidia.com/gpu: "2"}
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", nvidia.com/gpu: "2"}
EOF
  done
  gg_kubectl apply -f "$manifest" >/dev/null
  hollow_ready() {
    local ready
    ready=$(gg_kubectl get nodes -l type=kwok-hollow \
      -o jsonpath='{range .items[*]}{range .status.conditions[?(@.type=="Ready")]}{.status}{"\n"}{end}{end}' | grep -c True)
    [ "$ready" -ge "$hollow_nodes" ]
  }
  GG_WAIT_LOG="$GG_LOGS/kwok.log" gg_wait "$hollow_nodes hollow nodes Ready" 600 hollow_ready
fi

# --- 7. GoGrid ----------------------------------------------------------------------------------
if [ "${GOGRID_SKIP_INSTALL:-}" = 1 ]; then
  gg_log "[8/8] GoGrid: skipped (GOGRID_SKIP_INSTALL=1)"
else
  gg_log "[8/8] GoGrid (e2e/cluster/install.sh)"
  "$GG_ROOT/e2e/cluster/install.sh"
fi

cat >&2 <<EOF

Cluster up in $((SECONDS - total_start))s: kube-apiserver https://$GG_CP_IP:$GG_APISERVER_PORT in network namespace $GG_CP_NS.
  kubeconfig (admin):  $GG_RUN/kubeconfig   (usable only inside netns $GG_CP_NS)
  logs and pids:       $GG_LOGS/, $GG_PIDS/
  use the wrappers (they enter the namespace for you):
    e2e/bin/kubectl get nodes
    e2e/bin/helm list -A
  or any command:      ip netns exec $GG_CP_NS <command> (e.g. kubectl --kubeconfig $GG_RUN/kubeconfig ...)
  tear down:           make cluster-down   (e2e/cluster/down.sh)
EOF
