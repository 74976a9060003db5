#!/usr/bin/env bash
# Tears down the e2e cluster (`make cluster-down`): stops every process up.sh
# and install.sh started (by their recorded pids: the agent supervisor first,
# which stops its agents, then the operator, kwok, scheduler, controller-manager,
# apiserver, etcd), then anything still running inside the harness's own network
# namespaces, deletes the namespaces gg-cp and gg-node-* (and with them the
# bridge and the veths) and removes e2e/.run. The build cache stays.
# Idempotent: safe when nothing runs.
set -euo pipefail
# shellcheck source=e2e/cluster/lib.sh
. "$(dirname "$0")/lib.sh"
gg_need_root

if [ -d "$GG_PIDS" ]; then
  for name in agents operator kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if gg_alive "$name"; then
      gg_log "stopping $name (pid $(gg_pid "$name"))"
      case $name in agents) gg_stop "$name" 60 ;; *) gg_stop "$name" 20 ;; esac
    fi
  done
  # agents whose supervisor was gone (their pids are recorded in e2e/.run/agents)
  for f in "$GG_RUN"/agents/*; do
    [ -f "$f" ] || continue
    read -r pid _ < "$f" || continue
    if [ -d "/proc/$pid" ] && readlink "/proc/$pid/exe" | grep -q gogrid-agent; then
      gg_log "stopping agent of pod ${f##*/} (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  # anything else recorded (e.g. a process a test started with gg_start)
  for f in "$GG_PIDS"/*.pid; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .pid)
    gg_alive "$name" && { gg_log "stopping $name (pid $(gg_pid "$name"))"; gg_stop "$name" 20; }
    rm -f "$f"
  done
fi

# The namespaces are the harness's own: whatever still runs in them was started
# by it (a leftover of an interrupted run). Stop those by pid, then delete them.
mapfile -t namespaces < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^($GG_CP_NS|gg-node-[0-9]+)$" || true)
for ns in "${namespaces[@]}"; do
  mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
  if [ ${#pids[@]} -gt 0 ]; then
    gg_log "stopping leftover processes in netns $ns: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
  fi
done
for ns in "${namespaces[@]}"; do
  for _ in $(seq 50); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.2; done
  mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
  [ ${#pids[@]} -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
done
for ns in "${namespaces[@]}"; do
  gg_log "deleting netns $ns"
  ip netns del "$ns" 2>/dev/null || true
done

if [ -d "$GG_RUN" ]; then
  gg_log "removing $GG_RUN"
  rm -rf "$GG_RUN"
fi
gg_log "cluster down"
