"""The offline responder: the default backend when no model provider is configured. It says
so, then answers from the recalled context, streamed word by word at a real model's pace."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator

from chatplane.agent.llm.base import (
    LlmBackend,
    Prompt,
    StopReason,
    StreamEnd,
    StreamItem,
    StreamStart,
    TextChunk,
)
from chatplane.agent.tokens import estimate_tokens

MODEL_NAME = "chatplane-offline-1"
LABEL = "[offline model]"

_WORD = re.compile(r"\S+\s*")
_EXCERPT_CHARS = 160


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[: _EXCERPT_CHARS - 1] + "…"


def compose_answer(prompt: Prompt) -> str:
    """The offline answer: a clear label, how to plug in a model, and what memory recalled."""
    lines = [
        f"{LABEL} I am chatplane's offline responder: no language model is "
        "configured, so I answer from what memory recalled instead of generating an answer. "
        "To answer with a real model, configure an LLM backend (see the README).",
        "",
        f'You asked: "{_excerpt(prompt.question)}"',
    ]
    # Its own earlier offline answers are recalled too; repeating them helps nobody.
    passages = [p for p in prompt.passages if not p.text.startswith(LABEL)]
    if passages:
        lines.append("")
        lines.append("From memory, the most relevant things I know:")
        lines.extend(f"- {_excerpt(p.text)}" for p in passages)
    elif prompt.history:
        lines.append("")
        lines.append("Earlier in this conversation:")
        lines.extend(
            f"- {line.speaker.value}: {_excerpt(line.text)}" for line in prompt.history[-4:]
        )
    else:
        lines.append("")
        lines.append("I have nothing in memory about this yet.")
    return "\n".join(lines)


class OfflineResponder(LlmBackend):
    """Streams `compose_answer` one word at a time: the first after `first_token_seconds`,
    then `tokens_per_second`, so streaming, cancellation and latency are exercised for real."""

    def __init__(
        self, *, tokens_per_second: float, first_token_seconds: float, max_tokens: int = 400
    ) -> None:
        self._interval = 1.0 / tokens_per_second
        self._first_token_seconds = first_token_seconds
        self._max_tokens = max_tokens

    @property
    def model(self) -> str:
        return MODEL_NAME

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        yield StreamStart(model=MODEL_NAME)
        words = _WORD.findall(compose_answer(prompt))
        limit = min(prompt.max_tokens, self._max_tokens)
        truncated = len(words) > limit
        words = words[:limit]
        loop = asyncio.get_running_loop()
        # Emission times are scheduled against a fixed start, so pacing does not drift with
        # scheduling delays, like a model server's steady decode rate.
        start = loop.time()
        for index, word in enumerate(words):
            due = start + self._first_token_seconds + index * self._interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield TextChunk(text=word, emit_time_ns=time.time_ns())
        yield StreamEnd(
            reason=StopReason.MAX_TOKENS if truncated else StopReason.END,
            input_tokens=prompt.estimated_input_tokens,
            output_tokens=sum(estimate_tokens(w) for w in words),
        )
