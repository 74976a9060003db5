#!/usr/bin/env bash
# Builds the Go tools of one tooling module under e2e/tools/ (every `tool` line
# of its go.mod) into a cache outside the repository and prints the path of one
# binary. The cache folder is keyed by the module's go.mod, go.sum and the
# ldflags, so a second call with the same inputs builds nothing.
#
#   hack/tool.sh helm                 -> .../tools/helm-<key>/helm
#   hack/tool.sh kube kube-apiserver  -> .../tools/kube-<key>/kube-apiserver
#   hack/tool.sh kube                 -> .../tools/kube-<key> (the folder: no tool is named kube)
#   hack/tool.sh kwok                 -> .../tools/kwok-<key>/kwok
#
# The cache is ${GOGRID_CACHE:-$HOME/.cache/gogrid}/tools. Builds run with
# GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0; progress goes to stderr, the path
# alone to stdout.
set -euo pipefail

usage() { echo "usage: hack/tool.sh <module under e2e/tools> [binary]" >&2; exit 2; }
name=${1:-}
[ -n "$name" ] || usage
want=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
module="$root/e2e/tools/$name"
[ -f "$module/go.mod" ] || { echo "hack/tool.sh: no tooling module e2e/tools/$name" >&2; exit 2; }

export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

# The `tool` packages of the module, from `tool pkg` lines and `tool ( ... )` blocks.
mapfile -t pkgs < <(awk '
  /^tool[ \t]*\(/ { block = 1; next }
  block && /^\)/  { block = 0; next }
  block && NF     { sub(/\/\/.*/, ""); if (NF) print $1; next }
  /^tool[ \t]+[^(]/ { print $2 }
' "$module/go.mod")
[ ${#pkgs[@]} -gt 0 ] || { echo "hack/tool.sh: e2e/tools/$name/go.mod has no tool lines" >&2; exit 2; }

# version and time of the module that provides a package (read from go.mod and
# the module cache; the first call downloads the module's .info).
modinfo() { # <module path> -> "<version> <time>"
  (cd "$module" && go list -m -f '{{.Version}} {{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$1")
}

# Per-module ldflags (part of the cache key) and a hint of the cold build time.
ldflags="-s -w"
hint=""
case $name in
  helm)
    read -r version _ < <(modinfo helm.sh/helm/v3)
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$version"
    hint="cold build ~2 min on 2 cores" ;;
  kube)
    read -r version date < <(modinfo k8s.io/kubernetes)
    minor=$(echo "$version" | cut -d. -f2)
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
    done
    hint="cold build ~10 min on 2 cores for the first binary, ~1-2 min for the others" ;;
  kwok)
    read -r version _ < <(modinfo sigs.k8s.io/kwok)
    # pkg/consts.Version is already the release's own version in the tagged source.
    hint="cold build ~2 min on 2 cores" ;;
  *)
    version=$(cd "$module" && go list -m -f '{{.Version}}' "$(go list -f '{{.Module.Path}}' "${pkgs[0]}")") ;;
esac

key=$( { cat "$module/go.mod" "$module/go.sum"; echo "$ldflags"; } | sha256sum | cut -c1-16)
cache="${GOGRID_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gogrid}/tools/$name-$key"

# The path to print: the named binary, the one named like the module, else the folder.
out=$cache
for pkg in "${pkgs[@]}"; do
  bin=${pkg##*/}
  if [ -n "$want" ] && [ "$bin" = "$want" ]; then out="$cache/$bin"; fi
  if [ -z "$want" ] && [ "$bin" = "$name" ]; then out="$cache/$bin"; fi
done
[ -z "$want" ] || [ "$out" != "$cache" ] || { echo "hack/tool.sh: e2e/tools/$name has no tool $want" >&2; exit 2; }

built() { for pkg in "${pkgs[@]}"; do [ -x "$cache/${pkg##*/}" ] || return 1; done; }
if built; then echo "$out"; exit 0; fi

mkdir -p "$cache"
# One build at a time per cache folder (two shells running up.sh at once).
exec 9>"$cache.lock"
flock 9
if ! built; then
  for pkg in "${pkgs[@]}"; do
    bin=${pkg##*/}
    [ -x "$cache/$bin" ] && continue
    echo "hack/tool.sh: building $bin $version (${hint:-may take minutes}; cached in $cache) ..." >&2
    start=$(date +%s)
    (cd "$module" && go build -trimpath -o "$cache/$bin.tmp" -ldflags "$ldflags" "$pkg")
    mv "$cache/$bin.tmp" "$cache/$bin"
    echo "hack/tool.sh: built $bin in $(( $(date +%s) - start ))s" >&2
  done
fi
exec 9>&-
echo "$out"
