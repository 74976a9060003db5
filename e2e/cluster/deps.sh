#!/usr/bin/env bash
# Installs the Debian packages the local control plane needs (etcd-server,
# prometheus, iproute2, openssl), idempotently, and makes sure Debian's own etcd
# and prometheus services neither run nor start at boot: the harness starts its
# own instances on its own ports inside netns gg-cp. Runs as root; apt-get
# update only when a package is missing. Works with and without systemd.
set -euo pipefail

pkgs=(etcd-server prometheus iproute2 openssl)
services=(etcd prometheus)

[ "$(id -u)" = 0 ] || { echo "e2e/cluster/deps.sh: run as root" >&2; exit 1; }

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e/cluster/deps.sh: installing ${missing[*]} ..." >&2
  # Keep the packages' maintainer scripts from starting services where no init
  # system would stop them: a policy-rc.d that denies every start, only while
  # installing, and only when the machine has none of its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; own_policy=true
    trap '[ "$own_policy" = true ] && rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Stop and disable Debian's services, whatever the init system.
for s in "${services[@]}"; do
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet "$s" 2>/dev/null || systemctl is-active --quiet "$s" 2>/dev/null; then
      echo "e2e/cluster/deps.sh: stopping and disabling the system service $s" >&2
      systemctl disable --now "$s" >/dev/null 2>&1 || true
    fi
  else
    if [ -x "/etc/init.d/$s" ]; then
      if "/etc/init.d/$s" status >/dev/null 2>&1; then
        echo "e2e/cluster/deps.sh: stopping the system service $s" >&2
        "/etc/init.d/$s" stop >/dev/null 2>&1 || true
      fi
      if ls /etc/rc[2-5].d/S*"$s" >/dev/null 2>&1 && command -v update-rc.d >/dev/null; then
        update-rc.d "$s" disable >/dev/null 2>&1 || true
      fi
    fi
  fi
done

# A service started anyway (no init script, no systemd) shows up as a process
# owned by the package's user: stop those too. Ours run as root.
for pair in etcd:etcd prometheus:prometheus; do
  user=${pair%%:*} comm=${pair##*:}
  id "$user" >/dev/null 2>&1 || continue
  for pid in $(pgrep -u "$user" -x "$comm" 2>/dev/null); do
    echo "e2e/cluster/deps.sh: stopping the system $comm (pid $pid)" >&2
    kill "$pid" 2>/dev/null || true
  done
done

for c in etcd prometheus ip openssl; do
  command -v "$c" >/dev/null || { echo "e2e/cluster/deps.sh: $c missing after install" >&2; exit 1; }
done
