# Shared by the e2e/cluster scripts (sourced, not run). Paths, addresses,
# ports, logging and the handling of the background processes the harness
# starts. Everything lives under e2e/.run/ (gitignored).
# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this

GG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
GG_RUN="$GG_ROOT/e2e/.run"
GG_LOGS="$GG_RUN/logs"
GG_PIDS="$GG_RUN/pids"
GG_PKI="$GG_RUN/pki"

# The harness network: everything below lives in network namespaces it creates.
GG_CP_NS=gg-cp                 # control plane namespace, bridge br0
GG_BRIDGE=br0
GG_CP_IP=10.244.0.1            # br0 in gg-cp: apiserver, operator, gateway of the nodes
GG_PREFIX=16                   # 10.244.0.0/16: the whole harness network
GG_NODES=${GOGRID_NODES:-3}    # fake nodes gg-node-1..N

# Ports inside gg-cp (its own network namespace, so none of them can clash
# with anything on the machine).
GG_ETCD_PORT=2379
GG_ETCD_PEER_PORT=2380
GG_APISERVER_PORT=6443
GG_KCM_PORT=10257
GG_SCHEDULER_PORT=10259
GG_KWOK_PORT=10247
GG_OPERATOR_HTTP="$GG_CP_IP:8080"
# GoGrid's processes reach the apiserver through the harness's TCP proxy
# (e2e/src/bin/apiproxy.rs), so that fault tests can cut their connections;
# its control endpoint is on loopback.
GG_PROXY_PORT=6444
GG_PROXY_CONTROL=127.0.0.1:6445

GG_NAMESPACE=${GOGRID_NAMESPACE:-gogrid-system}
GG_RELEASE=${GOGRID_RELEASE:-gogrid}

gg_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
gg_die() { printf 'error: %s\n' "$*" >&2; exit 1; }
gg_need_root() { [ "$(id -u)" = 0 ] || gg_die "the e2e cluster scripts run as root (network namespaces)"; }

# gg-node-N: name, netns and the node's own address (its InternalIP, on eth0 of
# its namespace next to the agent pod's IP). Node IPs are 10.244.0.(10+N), pod
# IPs come from spec.podCIDR 10.244.N.0/24, so they never collide.
gg_node_name() { echo "gg-node-$1"; }
gg_node_ip() { echo "10.244.0.$((10 + $1))"; }
# Whether netns <ns> device <dev> has the address <ip>/<prefix>. Not
# `ip | grep -q`: grep exits at the first match, ip can die of SIGPIPE, and
# under pipefail the address looks missing (then `ip addr add` fails with
# "Address already assigned").
gg_has_addr() { # <ns> <dev> <ip/prefix>
  local out
  out=$(ip -n "$1" addr show dev "$2")
  [[ $out == *"inet $3 "* ]]
}
gg_node_cidr() { echo "10.244.$1.0/24"; }

gg_in_cp() { ip netns exec "$GG_CP_NS" "$@"; }
gg_kubectl() { ip netns exec "$GG_CP_NS" kubectl --kubeconfig "$GG_RUN/kubeconfig" "$@"; }

# --- background processes -------------------------------------------------
# A process is recorded as $GG_PIDS/<name>.pid holding "<pid> <executable>".

# gg_alive <name>: the recorded process is still the one we started.
gg_alive() {
  local f="$GG_PIDS/$1.pid" pid exe
  [ -f "$f" ] || return 1
  read -r pid exe < "$f" || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  # guard against a reused pid: same executable as recorded
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null | sed 's/ (deleted)$//')" = "$exe" ]
}

gg_pid() { local pid _; read -r pid _ < "$GG_PIDS/$1.pid"; echo "$pid"; }

# gg_start <name> <netns> [VAR=value ...] -- <command...>
# Starts the command in its own session (a ^C on up.sh does not reach it),
# inside network namespace <netns>, with the given extra environment, output to
# $GG_LOGS/<name>.log, and records its pid. `ip netns exec` and `env` exec, so
# the recorded pid is the command's own.
gg_start() {
  local name=$1 ns=$2; shift 2
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  [ "${1:-}" = -- ] && shift
  local exe
  exe=$(readlink -f "$(command -v "$1")") || gg_die "$1: not found"
  mkdir -p "$GG_LOGS" "$GG_PIDS"
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner bash
  setsid bash -c 'echo "$$ $1" > "$2"; shift 2; exec "$@"' _ "$exe" "$GG_PIDS/$name.pid" \
    ip netns exec "$ns" env "${envs[@]}" "$@" >> "$GG_LOGS/$name.log" 2>&1 < /dev/null &
  # wait for the pid file (written by the child before it execs)
  local _i
  for _i in $(seq 50); do [ -s "$GG_PIDS/$name.pid" ] && break; sleep 0.1; done
  # the recorded executable is the final one; fix it up once exec has happened
  local pid; pid=$(gg_pid "$name")
  for _i in $(seq 50); do
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null | sed 's/ (deleted)$//')" = "$exe" ] && break
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
}

# gg_stop <name> [timeout seconds]: SIGTERM, then SIGKILL after the timeout.
gg_stop() {
  local name=$1 timeout=${2:-15} pid
  if gg_alive "$name"; then
    pid=$(gg_pid "$name")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((timeout * 10))); do gg_alive "$name" || break; sleep 0.1; done
    if gg_alive "$name"; then
      gg_log "  $name (pid $pid) did not stop in ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$GG_PIDS/$name.pid"
}

# gg_wait <what> <timeout seconds> <command...>: poll until the command succeeds,
# printing dots; on timeout print the tail of the log named in $GG_WAIT_LOG.
gg_wait() {
  local what=$1 timeout=$2; shift 2
  local start=$SECONDS
  printf '%s   waiting for %s ' "$(date +%H:%M:%S)" "$what" >&2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$timeout" ]; then
      printf ' timed out after %ss\n' "$timeout" >&2
      if [ -n "${GG_WAIT_LOG:-}" ] && [ -f "$GG_WAIT_LOG" ]; then
        echo "--- last lines of $GG_WAIT_LOG" >&2; tail -n 30 "$GG_WAIT_LOG" >&2
      fi
      return 1
    fi
    printf '.' >&2; sleep 1
  done
  printf ' ok (%ss)\n' $((SECONDS - start)) >&2
}

# A kubeconfig for <server> that authenticates with <token>.
gg_write_kubeconfig() { # <file> <user> <token> [port: the apiserver's, or the proxy's]
  local file=$1 user=$2 token=$3 port=${4:-$GG_APISERVER_PORT}
  umask 077
  cat > "$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gogrid-e2e
  cluster:
    server: https://$GG_CP_IP:$port
    certificate-authority: $GG_PKI/ca.crt
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@gogrid-e2e
  context:
    cluster: gogrid-e2e
    user: $user
current-context: $user@gogrid-e2e
EOF
  mv "$file.tmp" "$file"
}
