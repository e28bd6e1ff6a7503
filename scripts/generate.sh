#!/usr/bin/env bash
# Regenerates everything under gen/ (and third_party/googleapis) from proto/.
# Generated files are never edited by hand; `make check-generate` fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"
site=$("$PY" -c 'import google.api.annotations_pb2 as m, os; print(os.path.dirname(m.__file__))')
wkt=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')

mkdir -p third_party/googleapis/google/api
cp "$site/annotations.proto" "$site/http.proto" third_party/googleapis/google/api/

rm -rf gen/python gen/descriptors
mkdir -p gen/python gen/descriptors
"$PY" -m grpc_tools.protoc \
  -I proto -I third_party/googleapis -I "$wkt" \
  --python_out=gen/python \
  --mypy_out=gen/python \
  --grpc_python_out=gen/python \
  --mypy_grpc_out=gen/python \
  proto/chatplane/v1/*.proto proto/chatplane/internal/v1/*.proto
# A descriptor set of the public package with every import, for Envoy's gRPC-JSON transcoder
# (the edge exposes only public services; internal ones never reach it).
"$PY" -m grpc_tools.protoc \
  -I proto -I third_party/googleapis -I "$wkt" \
  --include_imports --include_source_info \
  --descriptor_set_out=gen/descriptors/chatplane.binpb \
  proto/chatplane/v1/*.proto
touch gen/python/chatplane/v1/py.typed gen/python/chatplane/internal/v1/py.typed

# Go (gen/go) and TypeScript (gen/ts) clients from buf.gen.yaml, with the pinned plugins
# (installed once, cached in ~/.cache/chatplane). gen/go/go.mod and go.sum are kept: they pin
# the Go runtime the generated code needs.
plugins=$(./scripts/codegen-plugins.sh)
rm -rf gen/go/chatplane gen/ts
PATH="$plugins:$PATH" buf generate
