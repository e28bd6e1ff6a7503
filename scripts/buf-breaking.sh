#!/usr/bin/env bash
# buf breaking (FILE rules) against the main branch, and against the previous commit when
# there is one with contracts, so a change of an already-published contract fails the check.
# Both packages are guarded: proto/chatplane/v1 (public) and proto/chatplane/internal/v1.
#
# One documented exception (docs/api.md, "Breaking changes"): the split of the contracts into
# the public and the internal package moved files and renamed messages once. A base that has
# no proto/chatplane/internal tree predates that split, so there is nothing it can be compared
# with file by file; it is skipped with a message. Every base after the split is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}
checked=0
for ref in main HEAD~1; do
  if git rev-parse --verify -q "$ref^{commit}" >/dev/null \
     && git cat-file -e "$ref:buf.yaml" 2>/dev/null; then
    if ! git cat-file -e "$ref:proto/chatplane/internal" 2>/dev/null; then
      echo "buf breaking: $ref predates the public/internal split of the contracts; not compared"
      continue
    fi
    "$BUF" breaking --against ".git#ref=$ref"
    echo "buf breaking: no breaking change against $ref"
    checked=1
  fi
done
[ "$checked" = 1 ] || echo "buf breaking: no earlier contracts to compare against"
