"""The offline responder: labelled, grounded in recalled context, paced, bounded."""

from __future__ import annotations

import asyncio

from chatplane.agent.llm.base import ContextPassage, Prompt, StopReason, StreamEnd, TextChunk
from chatplane.agent.llm.offline import LABEL, OfflineResponder


def prompt(passages: list[ContextPassage], max_tokens: int = 400) -> Prompt:
    return Prompt(
        system="s",
        passages=passages,
        history=[],
        question="What is my cat called?",
        max_tokens=max_tokens,
        estimated_input_tokens=42,
    )


async def collect(backend: OfflineResponder, p: Prompt) -> tuple[list[TextChunk], StreamEnd]:
    chunks: list[TextChunk] = []
    end: StreamEnd | None = None
    async for item in backend.stream(p):
        if isinstance(item, TextChunk):
            chunks.append(item)
        else:
            end = item
    assert end is not None
    return chunks, end


async def test_answer_is_labelled_and_uses_recalled_passages() -> None:
    backend = OfflineResponder(tokens_per_second=10_000, first_token_seconds=0)
    passage = ContextPassage("m1", "earlier", "My cat is named Bartholomew")
    own = ContextPassage("m2", "earlier", f"{LABEL} an earlier offline answer")
    chunks, end = await collect(backend, prompt([passage, own]))
    text = "".join(c.text for c in chunks)
    assert text.startswith(LABEL)
    assert "Bartholomew" in text
    assert "an earlier offline answer" not in text
    assert end.reason is StopReason.END
    assert end.input_tokens == 42 and end.output_tokens > 0


async def test_pacing_first_token_delay_and_rate() -> None:
    backend = OfflineResponder(tokens_per_second=100, first_token_seconds=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks, _ = await collect(backend, prompt([]))
    elapsed = loop.time() - start
    expected = 0.2 + (len(chunks) - 1) / 100
    assert expected - 0.01 <= elapsed <= expected + 0.5
    stamps = [c.emit_time_ns for c in chunks]
    assert stamps == sorted(stamps)


async def test_max_tokens_truncates() -> None:
    backend = OfflineResponder(tokens_per_second=10_000, first_token_seconds=0)
    chunks, end = await collect(backend, prompt([], max_tokens=5))
    assert len(chunks) == 5
    assert end.reason is StopReason.MAX_TOKENS
