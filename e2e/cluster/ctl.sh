#!/usr/bin/env bash
# Drives the running e2e cluster for tests that need processes to die and come
# back (e2e/tests/restarts.rs, leader.rs, gpunodes.rs):
#   ctl.sh stop|start|kill operator           the operator (POD_NAME gogrid-operator-local-0)
#   ctl.sh start|stop|kill operator-standby   a second replica (gogrid-operator-local-1, http :8081)
#   ctl.sh restart apiserver                  stop kube-apiserver and start it again (up.sh)
#   ctl.sh node-add N                         re-create node gg-node-N (up.sh) in the default preset
#   ctl.sh term agent NODE                    SIGTERM the agent of NODE (it drains and exits;
#                                             the supervisor starts it again, as the kubelet would)
#   ctl.sh kill agent NODE                    SIGKILL the agent of NODE (restarted the same way)
#   ctl.sh stop apiserver | start apiserver   kube-apiserver down / up again (up.sh)
#   ctl.sh restart etcd                       stop etcd and start it again (up.sh)
#   ctl.sh proxy cut|block|unblock|stats      the API proxy between GoGrid and the apiserver:
#                                             cut every connection / also refuse new ones / accept again
set -euo pipefail
# shellcheck source=e2e/cluster/lib.sh
. "$(dirname "$0")/lib.sh"
gg_need_root
cd "$GG_ROOT"

operator_bin=${GOGRID_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$GG_ROOT/target}/debug/gogrid-operator}

start_operator() { # <process name> <pod name> <http addr>
  gg_alive "$1" && return 0
  gg_start "$1" "$GG_CP_NS" \
    KUBECONFIG="$GG_RUN/kubeconfig-operator" POD_NAMESPACE="$GG_NAMESPACE" POD_NAME="$2" \
    GOGRID_HTTP_ADDR="$3" GOGRID_AGENT_NAMESPACE="$GG_NAMESPACE" GOGRID_LOG="${GOGRID_LOG:-info}" \
    -- "$operator_bin" run
  sleep 1
  gg_alive "$1" || { tail -n 20 "$GG_LOGS/$1.log" >&2; gg_die "$1 exited at once"; }
  gg_log "$1 started (pid $(gg_pid "$1"))"
}

kill_now() { # <process name>
  if gg_alive "$1"; then kill -KILL "$(gg_pid "$1")"; gg_log "$1 killed"; fi
  rm -f "$GG_PIDS/$1.pid"
}

case "${1:-} ${2:-}" in
  "start operator") start_operator operator gogrid-operator-local-0 "$GG_OPERATOR_HTTP" ;;
  "start operator-standby") start_operator operator-standby gogrid-operator-local-1 "$GG_CP_IP:8081" ;;
  "stop operator" | "stop operator-standby") gg_stop "$2"; gg_log "$2 stopped" ;;
  "kill operator" | "kill operator-standby") kill_now "$2" ;;
  "restart apiserver")
    gg_stop kube-apiserver
    gg_log "kube-apiserver stopped; starting it again"
    GOGRID_SKIP_INSTALL=1 "$GG_ROOT/e2e/cluster/up.sh" >"$GG_LOGS/ctl-up.log" 2>&1 \
      || { tail -n 20 "$GG_LOGS/ctl-up.log" >&2; gg_die "up.sh failed"; } ;;
  "node-add "*)
    node=$(gg_node_name "$2")
    GOGRID_NODES=$(( $2 > GG_NODES ? $2 : GG_NODES )) GOGRID_SKIP_INSTALL=1 "$GG_ROOT/e2e/cluster/up.sh" >"$GG_LOGS/ctl-up.log" 2>&1 \
      || { tail -n 20 "$GG_LOGS/ctl-up.log" >&2; gg_die "up.sh failed"; }
    gg_kubectl label --overwrite node "$node" gogrid.io/preset=default >/dev/null
    gg_log "node $node is back" ;;
  "term agent" | "kill agent")
    node=${3:?usage: ctl.sh term|kill agent NODE}
    pid=$(awk -v n="$node" '$3 == n {print $1}' "$GG_RUN"/agents/* 2>/dev/null | head -n 1)
    [ -n "$pid" ] || gg_die "no agent runs on $node"
    if [ "$1" = term ]; then kill -TERM "$pid"; else kill -KILL "$pid"; fi
    gg_log "agent on $node (pid $pid) sent SIG${1^^}" ;;
  "stop apiserver") gg_stop kube-apiserver; gg_log "kube-apiserver stopped" ;;
  "start apiserver" | "restart etcd")
    [ "$2" = etcd ] && { gg_stop etcd; gg_log "etcd stopped; starting it again"; }
    GOGRID_SKIP_INSTALL=1 "$GG_ROOT/e2e/cluster/up.sh" >"$GG_LOGS/ctl-up.log" 2>&1 \
      || { tail -n 20 "$GG_LOGS/ctl-up.log" >&2; gg_die "up.sh failed"; }
    gg_log "$2 running again" ;;
  "proxy "*)
    case $2 in cut | block | unblock) method=POST ;; stats) method=GET ;; *) gg_die "ctl.sh proxy cut|block|unblock|stats" ;; esac
    gg_in_cp curl -sS -X "$method" "http://$GG_PROXY_CONTROL/$2" ;;
  *) echo "usage: ctl.sh start|stop|kill operator|operator-standby | restart|stop|start apiserver | restart etcd | node-add N | term|kill agent NODE | proxy cut|block|unblock|stats" >&2; exit 2 ;;
esac
