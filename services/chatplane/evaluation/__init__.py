"""The offline evaluation harness (docs/eval.md): a golden suite replayed through the real
Agent path with turns pinned to a registry version, scored per case, compared to a baseline."""
