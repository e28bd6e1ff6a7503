"""The raw chat-completions chunk reader: SSE framing, [DONE], errors inside the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from chatplane.agent.llm.completion_chunks import StreamedError, completion_chunks, usage_counts


async def _lines(lines: Iterable[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _read(lines: Iterable[str]) -> list[dict[str, Any]]:
    return [chunk async for chunk in completion_chunks(_lines(lines))]


async def test_events_are_dispatched_by_the_blank_line_and_comments_are_skipped() -> None:
    chunks = await _read(
        [
            ": ping",
            "",
            'data: {"choices": [{"delta": {"content": "Hel"}}]}',
            "",
            "event: completion",
            'data:{"choices": [{"delta": {"content": "lo"}}]}',
            "",
        ]
    )
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel", "lo"]


async def test_data_lines_of_one_event_are_joined() -> None:
    chunks = await _read(['data: {"choices":', 'data: [], "usage": null}', ""])
    assert chunks == [{"choices": [], "usage": None}]


async def test_nothing_after_done_is_yielded_but_every_line_is_read() -> None:
    read: list[str] = []
    lines = ['data: {"a": 1}', "", "data: [DONE]", "", 'data: {"b": 2}', ""]

    async def counted() -> AsyncIterator[str]:
        for line in lines:
            read.append(line)
            yield line

    chunks = [chunk async for chunk in completion_chunks(counted())]
    assert chunks == [{"a": 1}]
    assert read == lines


async def test_a_last_event_without_its_blank_line_is_still_read() -> None:
    assert await _read(['data: {"a": 1}']) == [{"a": 1}]


async def test_an_error_member_ends_the_stream_with_its_message() -> None:
    with pytest.raises(StreamedError, match="The server is overloaded"):
        await _read(
            [
                'data: {"choices": [{"delta": {"content": "x"}}]}',
                "",
                'data: {"error": {"message": "The server is overloaded", "type": "x"}}',
                "",
            ]
        )


@pytest.mark.parametrize("payload", ["{not json", "[1, 2]"])
async def test_a_chunk_that_is_not_a_json_object_is_a_stream_error(payload: str) -> None:
    with pytest.raises(StreamedError):
        await _read([f"data: {payload}", ""])


def test_usage_counts_subtract_cached_prompt_tokens() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 12},
    }
    assert usage_counts(usage) == (18, 12, 7)
    assert usage_counts({"prompt_tokens": 5, "completion_tokens": 2}) == (5, 0, 2)
    assert usage_counts(None) is None
