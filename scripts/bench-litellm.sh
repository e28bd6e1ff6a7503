#!/usr/bin/env bash
# Installs LiteLLM's proxy (requirements/bench-litellm.txt) into its own virtualenv, kept apart
# from the services' .venv, and prints the path of its `litellm` command. Cached: runs pip only
# when the requirements file changed. Used by `make bench` (bench/llm_chain.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BOOT=${PYTHON_BOOT:-python3}
VENV=${CHATPLANE_LITELLM_VENV:-$HOME/.cache/chatplane/litellm-venv}
REQS=requirements/bench-litellm.txt
# Only the requirement lines count: editing a comment does not reinstall.
STAMP="$VENV/.installed-$(grep -v '^#' "$REQS" | sha256sum | cut -c1-16)"
if [[ ! -f "$STAMP" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PYTHON_BOOT" -m venv "$VENV"
  rm -f "$VENV"/.installed-*
  "$VENV/bin/pip" install -q --disable-pip-version-check pip==25.3 >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/litellm"
