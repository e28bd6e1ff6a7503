"""The chunks of a chat-completions stream read from its raw SSE lines with one `json.loads`
each. The `openai` SDK builds a typed (pydantic) ChatCompletionChunk per event, about 100 µs
of CPU per token and the largest part of the Agent's CPU per token (docs/chain-latency.md);
the SDK still makes the request, with its retries and error statuses, and only the body of a
successful response is read here."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

_DATA = "data:"
_DONE = "[DONE]"


class StreamedError(Exception):
    """The server reported an error inside the stream (a chunk with an `error` member, as
    OpenAI's protocol does), or sent a chunk that is not a JSON object."""


def _chunk(payload: str) -> dict[str, Any]:
    try:
        chunk = json.loads(payload)
    except ValueError as error:
        raise StreamedError("the model server sent a malformed chunk") from error
    if not isinstance(chunk, dict):
        raise StreamedError("the model server sent a chunk that is not an object")
    failure = chunk.get("error")
    if failure:
        message = failure.get("message") if isinstance(failure, dict) else None
        raise StreamedError(message if isinstance(message, str) else "error in the stream")
    return chunk


async def completion_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[dict[str, Any]]:
    """Each event's JSON object, in order, until `[DONE]`; the lines after it are read (so an
    HTTP/1.1 connection goes back to the pool) and ignored. Only `data` fields matter: an
    event's data lines are joined with newlines and the blank line dispatches it (the SSE
    rules); comments (`: ping`), `event:` and `id:` lines are skipped."""
    data: list[str] = []
    done = False
    async for line in lines:
        if line.startswith(_DATA):
            value = line[len(_DATA) :]
            data.append(value[1:] if value.startswith(" ") else value)
            continue
        if line or not data:
            continue
        payload = "\n".join(data)
        data.clear()
        if done:
            continue
        if payload.startswith(_DONE):
            done = True
            continue
        yield _chunk(payload)
    if data and not done and not data[0].startswith(_DONE):
        yield _chunk("\n".join(data))


def usage_counts(usage: Any) -> tuple[int, int, int] | None:
    """(input tokens not read from the cache, cache-read input tokens, output tokens) of a
    chunk's `usage` member, or None when it has none."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = usage.get("prompt_tokens") or 0
    return int(prompt) - int(cached), int(cached), int(usage.get("completion_tokens") or 0)
