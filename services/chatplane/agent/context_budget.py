"""Fitting the context of one answer into the model's window: the system prompt and the
current question always go in (the question is never dropped, even alone over budget); the
conversation's recent turns (newest first) and the recalled passages (best first: earlier
turns of the user and the tenant's document chunks) are then taken alternately while they
fit. The first item of a list that does not fit closes that list, so what is dropped is
always the oldest turns and the least relevant passages, never one in between.

Token counts are a documented estimate (docs/rag.md): UTF-8 bytes / 4, rounded up. For
English that is the usual four characters per token of BPE tokenizers; for other scripts it
overestimates rather than under (a CJK character is three bytes, about one token), so a
prompt estimated to fit does fit. Providers' exact tokenizers need a network call (Anthropic's
count_tokens) and are not used on the path to the first token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

# Role markers and separators a chat API adds around each message.
MESSAGE_OVERHEAD_TOKENS: Final = 4

_H = TypeVar("_H")
_P = TypeVar("_P")


def estimate_prompt_tokens(text: str) -> int:
    """Tokens `text` may take in a prompt: UTF-8 bytes / 4, rounded up."""
    return (len(text.encode("utf-8")) + 3) // 4


@dataclass(frozen=True, slots=True)
class FittedContext(Generic[_H, _P]):
    """What fits: history oldest first, passages best first, and the tokens of it all."""

    history: list[_H]
    passages: list[_P]
    tokens: int


def context_budget(
    *, budget_tokens: int, context_window_tokens: int | None, max_output_tokens: int
) -> int:
    """The tokens a prompt may take: the configured budget, and never more than the model's
    window less the tokens reserved for the answer."""
    if context_window_tokens is None:
        return budget_tokens
    return max(0, min(budget_tokens, context_window_tokens - max_output_tokens))


def fit_context(
    *,
    fixed_tokens: int,
    history: Sequence[_H],
    passages: Sequence[_P],
    budget_tokens: int,
    history_cost: Callable[[_H], int],
    passage_cost: Callable[[_P], int],
) -> FittedContext[_H, _P]:
    """The newest history (given oldest first) and best passages (given best first) that fit
    in `budget_tokens` beside `fixed_tokens` (system prompt and question), taken alternately
    (one turn, one passage, …) so neither starves the other."""
    used = fixed_tokens
    newest_first = list(reversed(history))
    kept_history: list[_H] = []
    kept_passages: list[_P] = []
    h = p = 0
    history_open = passages_open = True
    while (history_open and h < len(newest_first)) or (passages_open and p < len(passages)):
        if history_open and h < len(newest_first):
            cost = history_cost(newest_first[h])
            if used + cost <= budget_tokens:
                kept_history.append(newest_first[h])
                used += cost
                h += 1
            else:
                history_open = False
        if passages_open and p < len(passages):
            cost = passage_cost(passages[p])
            if used + cost <= budget_tokens:
                kept_passages.append(passages[p])
                used += cost
                p += 1
            else:
                passages_open = False
    kept_history.reverse()
    return FittedContext(history=kept_history, passages=kept_passages, tokens=used)
