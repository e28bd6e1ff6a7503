"""Token counts for budgets and usage when the backend does not report them: a documented
estimate of one token per four characters (rounded up), the rule of thumb for English text
with BPE tokenizers; see docs/decisions.md."""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    """Estimated tokens of `text` (at least 1 for non-empty text)."""
    return (len(text) + 3) // 4
