#!/usr/bin/env bash
# The kubelet of the e2e cluster, for GoGrid agents only. Started in the
# background by e2e/cluster/install.sh (pid in e2e/.run/pids/agents.pid).
#
# Every 2 s it lists the agent pods (label app.kubernetes.io/component=agent in
# the GoGrid namespace). kwok marks them Running with an IP X from their node's
# podCIDR; for each such pod on node gg-node-N the supervisor puts X/16 on eth0
# of network namespace gg-node-N and runs `gogrid-agent run` inside it, with the
# pod's identity in its environment. When the pod goes away or changes (another
# uid, IP or node) it stops that agent (SIGTERM, SIGKILL after 10 s) and removes
# the address. An agent that exits is restarted with a back-off (10 s doubling
# to 5 min), as the kubelet would. On SIGTERM it stops all its agents.
#
# State: e2e/.run/agents/<pod> = "pid uid node ip profile restarts started",
# logs: e2e/.run/logs/agent-<node>.log.
set -uo pipefail
# The whole script is one block, read before it runs: editing this file does not
# disturb a supervisor that is already running.
{
# shellcheck source=e2e/cluster/lib.sh
. "$(dirname "$0")/lib.sh"

agent_bin=${GOGRID_AGENT_BIN:-${CARGO_TARGET_DIR:-$GG_ROOT/target}/debug/gogrid-agent}
selector=${GOGRID_AGENT_SELECTOR:-app.kubernetes.io/component=agent}
# shellcheck disable=SC1091
agent_sa=$(. "$GG_RUN/install.env" && echo "$GG_AGENT_SA")
state="$GG_RUN/agents"
mkdir -p "$state" "$GG_LOGS"
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

alive() { # <pid>: our agent process, not a zombie
  local pid=$1
  [ -d "/proc/$pid" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null | sed 's/ (deleted)$//')" = "$agent_bin" ] || return 1
  ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}

ensure_addr() { # <netns> <ip>
  gg_has_addr "$1" eth0 "$2/$GG_PREFIX" || ip -n "$1" addr add "$2/$GG_PREFIX" dev eth0
}

start_agent() { # <pod> <uid> <node> <ip> <profile> <restarts>
  local pod=$1 uid=$2 node=$3 ip=$4 profile=$5 restarts=$6
  local logf="$GG_LOGS/agent-$node.log"
  ensure_addr "$node" "$ip" || { log "pod $pod: cannot add $ip to $node"; return 1; }
  # Like the kubelet's projected token: the agent's ServiceAccount token bound
  # to its pod, so that the API server knows the requester's node (the chart's
  # admission policy lets an agent write its own node's GpuNode only).
  local kubeconfig="$state/.kubeconfig-$pod" token
  if ! token=$(ip netns exec "$GG_CP_NS" kubectl --kubeconfig "$GG_RUN/kubeconfig" create token "$agent_sa" \
      -n "$GG_NAMESPACE" --bound-object-kind Pod --bound-object-name "$pod" --bound-object-uid "$uid" \
      --duration=24h 2>"$state/.token.err"); then
    log "pod $pod: no token: $(tail -n 1 "$state/.token.err")"; return 1
  fi
  gg_write_kubeconfig "$kubeconfig" "system:serviceaccount:$GG_NAMESPACE:$agent_sa" "$token" "$GG_PROXY_PORT"
  echo "=== $(date -Is) starting gogrid-agent for pod $pod (uid $uid) on $node, ip $ip, profile $profile" >> "$logf"
  ip netns exec "$node" env \
    KUBECONFIG="$kubeconfig" NODE_NAME="$node" POD_NAME="$pod" POD_NAMESPACE="$GG_NAMESPACE" POD_IP="$ip" \
    GOGRID_PROFILE="$profile" GOGRID_HTTP_ADDR="$ip:8000" GOGRID_GRPC_ADDR="$ip:8001" \
    GOGRID_METRICS_ADDR="$ip:8002" GOGRID_SIMULATE_GPUS=2x24Gi CANDLE_NUM_THREADS=1 GOGRID_LOG="${GOGRID_LOG:-info}" \
    GOGRID_STATS_SECONDS="${GOGRID_STATS_SECONDS:-2}" \
    "$agent_bin" run >> "$logf" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid $uid $node $ip $profile $restarts $SECONDS" > "$state/$pod"
  log "started agent for pod $pod on $node ($ip, profile $profile): pid $pid"
}

stop_agent() { # <pod> [reason]
  local pod=$1 reason=${2:-pod gone} pid uid node ip profile rest
  read -r pid uid node ip profile rest < "$state/$pod" || { rm -f "$state/$pod"; return; }
  if alive "$pid"; then
    log "stopping agent for pod $pod on $node ($reason): pid $pid"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "  pid $pid still running after 10s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
    wait "$pid" 2>/dev/null
  fi
  rm -f "$state/$pod" "$state/.exited-$pod-"* "$state/.kubeconfig-$pod"
  # remove the address unless another agent on that node still uses it
  if ! cat "$state"/* 2>/dev/null | awk -v n="$node" -v a="$ip" '$3 == n && $4 == a {f=1} END {exit !f}'; then
    ip -n "$node" addr del "$ip/$GG_PREFIX" dev eth0 2>/dev/null
  fi
}

running=true
trap 'running=false' TERM INT
log "agent supervisor: $agent_bin, pods -n $GG_NAMESPACE -l $selector"

tmpl='{{range .items}}{{if and .spec.nodeName .status.podIP (eq .status.phase "Running") (not .metadata.deletionTimestamp)}}'
tmpl+='{{.metadata.name}} {{.metadata.uid}} {{.spec.nodeName}} {{.status.podIP}} {{or (index .metadata.labels "gogrid.io/profile") "-"}}{{"\n"}}{{end}}{{end}}'
declare -A warned=()

while $running; do
  if desired=$(ip netns exec "$GG_CP_NS" kubectl --kubeconfig "$GG_RUN/kubeconfig" get pods \
      -n "$GG_NAMESPACE" -l "$selector" -o go-template="$tmpl" 2>"$state/.kubectl.err"); then
    declare -A want=()
    while read -r pod uid node ip profile; do
      [ -n "$pod" ] || continue
      if [ ! -e "/run/netns/$node" ]; then
        [ -n "${warned[$pod]:-}" ] || log "pod $pod is on $node, which has no network namespace here: not started"
        warned[$pod]=1; continue
      fi
      want[$pod]="$uid $node $ip $profile"
    done <<< "$desired"

    # stop agents whose pod is gone or changed
    for f in "$state"/*; do
      [ -f "$f" ] || continue
      pod=${f##*/}
      read -r pid uid node ip profile restarts started < "$f"
      if [ -z "${want[$pod]:-}" ]; then stop_agent "$pod" "pod gone"
      elif [ "${want[$pod]}" != "$uid $node $ip $profile" ]; then stop_agent "$pod" "pod changed"
      fi
    done

    # start agents for new pods; restart exited ones with a back-off
    for pod in "${!want[@]}"; do
      read -r uid node ip profile <<< "${want[$pod]}"
      if [ ! -f "$state/$pod" ]; then
        start_agent "$pod" "$uid" "$node" "$ip" "$profile" 0
        continue
      fi
      read -r pid _ _ _ _ restarts started < "$state/$pod"
      alive "$pid" && continue
      exited="$state/.exited-$pod-$pid"
      if [ ! -f "$exited" ]; then
        wait "$pid" 2>/dev/null; code=$?
        log "agent for pod $pod on $node (pid $pid) exited with status $code"
        echo "=== $(date -Is) gogrid-agent (pid $pid) exited with status $code" >> "$GG_LOGS/agent-$node.log"
        # like the kubelet: the back-off starts again after 10 min of running
        [ $((SECONDS - started)) -lt 600 ] || restarts=0
        echo "$SECONDS $restarts" > "$exited"
      fi
      read -r exited_at restarts < "$exited"
      backoff=$((10 << (restarts < 5 ? restarts : 5))); [ "$backoff" -le 300 ] || backoff=300
      if [ $((SECONDS - exited_at)) -ge "$backoff" ]; then
        rm -f "$exited"
        start_agent "$pod" "$uid" "$node" "$ip" "$profile" $((restarts + 1))
      fi
    done
    unset want
  else
    log "kubectl get pods failed: $(tail -n 1 "$state/.kubectl.err")"
  fi
  sleep 2 & wait $! 2>/dev/null
done

log "agent supervisor: stopping every agent"
# Signal them all first: each drains for a few seconds, in parallel.
for f in "$state"/*; do
  [ -f "$f" ] || continue
  read -r pid _ < "$f" || continue
  alive "$pid" && kill -TERM "$pid" 2>/dev/null
done
for f in "$state"/*; do [ -f "$f" ] && stop_agent "${f##*/}" "supervisor stopping"; done
rm -f "$state"/.exited-* "$state/.kubectl.err"
log "agent supervisor: done"
exit 0
}
