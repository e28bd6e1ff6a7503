#!/usr/bin/env bash
# Debian packages the test suite needs beyond the base image: tmux (drives the interactive
# CLI in a terminal). The engines (PostgreSQL, Kafka, OpenSearch) are installed by
# scripts/infra/engines.py. Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# curl: the edge tests stream Server-Sent Events with `curl -N`, as the README shows.
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
