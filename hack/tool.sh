#!/usr/bin/env bash
# Builds a Go tool from one of the tooling modules under e2e/tools/ into a cache
# outside the repository, keyed by that module's go.mod and go.sum, and prints
# the binary's path. A second call with the same inputs builds nothing.
#
#   hack/tool.sh helm            -> path of a helm built from e2e/tools/helm
set -euo pipefail

name=${1:?usage: hack/tool.sh <tool>}
root=$(cd "$(dirname "$0")/.." && pwd)
module="$root/e2e/tools/$name"
[ -f "$module/go.mod" ] || { echo "hack/tool.sh: no tooling module e2e/tools/$name" >&2; exit 2; }

key=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-16)
cache="${GOGRID_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gogrid}/tools/$name-$key"
if [ -x "$cache/$name" ]; then
  echo "$cache/$name"
  exit 0
fi

mkdir -p "$cache"
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
pkg=$(sed -n 's/^tool //p' "$module/go.mod" | head -n1)
version=$(cd "$module" && go list -m -f '{{.Version}}' "$(go list -f '{{.Module.Path}}' "$pkg")")
echo "hack/tool.sh: building $name $version from $pkg (cached in $cache) ..." >&2
start=$(date +%s)
(cd "$module" && go build -trimpath -o "$cache/$name.tmp" \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" "$pkg")
mv "$cache/$name.tmp" "$cache/$name"
echo "hack/tool.sh: built $name in $(( $(date +%s) - start ))s" >&2
echo "$cache/$name"
