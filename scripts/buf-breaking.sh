#!/usr/bin/env bash
# buf breaking (FILE rules) against the main branch, and against the previous commit when
# there is one with contracts, so a change of an already-published contract fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
checked=0
for ref in main HEAD~1; do
  if git rev-parse --verify -q "$ref^{commit}" >/dev/null \
     && git cat-file -e "$ref:buf.yaml" 2>/dev/null; then
    "$BUF" breaking --against ".git#ref=$ref"
    echo "buf breaking: no breaking change against $ref"
    checked=1
  fi
done
[ "$checked" = 1 ] || echo "buf breaking: no earlier contracts to compare against"
