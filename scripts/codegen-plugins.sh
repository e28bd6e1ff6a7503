#!/usr/bin/env bash
# Installs the pinned buf plugins that generate gen/go and gen/ts, cached under ~/.cache/chatplane:
#   protoc-gen-go and protoc-gen-go-grpc from the Go module proxy into ~/.cache/chatplane/bin,
#   protoc-gen-es (and @bufbuild/protobuf, typescript) from npm into clients/ts/node_modules.
# Each step is skipped when the pinned version is already installed, so `make check-generate`
# stays fast. Prints the PATH entries to prepend (one line).
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

CACHE=${CHATPLANE_CACHE:-$HOME/.cache/chatplane}
BIN="$CACHE/bin"
export GOMODCACHE=${GOMODCACHE_CHATPLANE:-$CACHE/go-mod}
export GOCACHE=${GOCACHE_CHATPLANE:-$CACHE/go-build}
export GOFLAGS=-modcacherw
mkdir -p "$BIN"

command -v go >/dev/null || { echo "go is needed to generate gen/go (https://go.dev/dl)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm (Node.js) is needed to generate gen/ts" >&2; exit 1; }

if [[ "$("$BIN/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]]; then
  GOBIN="$BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION" >&2
fi
if [[ "$("$BIN/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
  GOBIN="$BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION" >&2
fi

# npm ci only when package-lock.json changed since the last install (a stamp holds its hash).
ts=clients/ts
lock_sum=$(sha256sum "$ts/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$ts/node_modules/.chatplane-lock" 2>/dev/null)" != "$lock_sum" ]]; then
  npm ci --prefix "$ts" --no-audit --no-fund --cache "$CACHE/npm" >&2
  echo "$lock_sum" > "$ts/node_modules/.chatplane-lock"
fi

echo "$BIN:$PWD/$ts/node_modules/.bin"
