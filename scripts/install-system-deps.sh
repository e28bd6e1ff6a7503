#!/usr/bin/env bash
# Debian packages the test suite needs beyond the base image: tmux (drives the interactive
# CLI in a terminal). The engines (PostgreSQL, Kafka, OpenSearch) are installed by
# scripts/infra/engines.py. Idempotent: installs only what is missing.
# chromium and chromium-driver: the web chat's end-to-end test (tests/web/).
set -euo pipefail
missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
# curl: the edge tests stream Server-Sent Events with `curl -N`, as the README shows.
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
echo "installing Debian packages: ${missing[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
