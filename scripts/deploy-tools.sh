#!/usr/bin/env bash
# The tools that validate istio/ (tests/deploy): kustomize, built from the Go module proxy, and
# the Istio CRD schemas, from the istio.io/api module (kubernetes/customresourcedefinitions.gen.yaml).
# Both pinned, cached in ~/.cache/chatplane (CHATPLANE_CACHE). Prints `kustomize=PATH` and
# `istio_crds=PATH`. Idempotent: builds or downloads only what is missing.
set -euo pipefail
KUSTOMIZE_VERSION=v5.8.2 # v5.8.3 needs Go 1.27
ISTIO_API_VERSION=v1.31.4

command -v go >/dev/null 2>&1 || PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null 2>&1 || { echo "deploy-tools: Go is required (the Go toolchain)" >&2; exit 1; }
cache="${CHATPLANE_CACHE:-$HOME/.cache/chatplane}"
export GOMODCACHE="$cache/gomod" GOFLAGS=-modcacherw GOTOOLCHAIN=local GOPATH="$cache/gopath"
mkdir -p "$cache/bin"

kustomize="$cache/bin/kustomize-$KUSTOMIZE_VERSION"
if [ ! -x "$kustomize" ]; then
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  echo "deploy-tools: building kustomize $KUSTOMIZE_VERSION (once)" >&2
  GOBIN="$build" nice -n 10 go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2
  mv "$build/kustomize" "$kustomize"
fi

dir="$(cd /tmp && go mod download -json "istio.io/api@$ISTIO_API_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
crds="$dir/kubernetes/customresourcedefinitions.gen.yaml"
[ -f "$crds" ] || { echo "deploy-tools: $crds missing" >&2; exit 1; }

echo "kustomize=$kustomize"
echo "istio_crds=$crds"
