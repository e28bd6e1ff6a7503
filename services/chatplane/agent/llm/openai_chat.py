"""Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama, …) through
the official `openai` SDK: streaming with `stream_options.include_usage`, the system prompt
and fenced passages as the system message, and the SDK's retries before the first byte; the
streamed body is read as raw chunks (completion_chunks.py), not as the SDK's typed ones."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai

from chatplane.agent.llm import errors as llm_errors
from chatplane.agent.llm.base import (
    LlmBackend,
    Prompt,
    Speaker,
    StopReason,
    StreamEnd,
    StreamItem,
    StreamStart,
    TextChunk,
)
from chatplane.agent.llm.completion_chunks import StreamedError, completion_chunks, usage_counts
from chatplane.agent.llm.provider_sdk import (
    RetryCappedClients,
    StatusMeaning,
    translate_sdk_error,
)
from chatplane.agent.llm.ready_batches import ready_batches
from chatplane.agent.llm.turns import alternating_turns
from chatplane.agent.prompt import render_passages

_log = logging.getLogger(__name__)

# Local servers take any key; the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"
_STOP_REASONS = {"length": StopReason.MAX_TOKENS}


def request_body(prompt: Prompt, *, model: str) -> dict[str, Any]:
    """The chat-completions parameters for a prompt."""
    system = prompt.system
    if prompt.passages:
        system = f"{system}\n\n{render_passages(prompt.passages)}"
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    messages.extend(
        {"role": "user" if speaker is Speaker.USER else "assistant", "content": text}
        for speaker, text in alternating_turns(prompt)
    )
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": prompt.max_tokens,
        "stream_options": {"include_usage": True},
    }
    if prompt.temperature is not None:
        body["temperature"] = prompt.temperature
    if prompt.stop_sequences:
        body["stop"] = list(prompt.stop_sequences)
    return body


def _retry_after(response: httpx2.Response) -> float:
    try:
        return max(float(response.headers.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


def _meaning(error: openai.APIStatusError) -> StatusMeaning:
    status = error.status_code
    if status == 429:
        return StatusMeaning.RATE_LIMITED
    if status in (400, 413, 422):
        return StatusMeaning.REJECTED
    if status in (401, 403, 404):
        _log.error(
            "the OpenAI-compatible server rejected the key or model", extra={"status": status}
        )
    return StatusMeaning.UNAVAILABLE


def translate_error(error: Exception) -> llm_errors.LlmError:
    """The one boundary between the SDK's exceptions and chatplane's provider failures."""
    return translate_sdk_error(
        error,
        status_error=openai.APIStatusError,
        connection_error=openai.APIConnectionError,
        meaning=_meaning,
        retry_after=_retry_after,
    )


class OpenAiChatBackend(LlmBackend):
    """One model of an OpenAI-compatible server."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str,
        max_retries: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._model = model
        self._base_url = base_url
        self._client = openai.AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            max_retries=max_retries,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
        )
        self._clients = RetryCappedClients(self._client, max_retries)

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return f"openai_compatible {self._base_url}"

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        client = self._clients.for_attempts(max_attempts)
        reason = StopReason.END
        input_tokens = cached = output_tokens = -1
        output_chars = 0
        async with contextlib.AsyncExitStack() as exits:
            try:
                # The SDK sends the request (retries, error statuses); the body is read raw.
                response = await exits.enter_async_context(
                    client.chat.completions.with_streaming_response.create(
                        **request_body(prompt, model=self._model), stream=True
                    )
                )
            except openai.APIError as error:
                raise translate_error(error) from error
            try:
                yield StreamStart(model=self._model)
                # Chunks that arrived while the last token was being relayed go on as one.
                batches = ready_batches(completion_chunks(response.iter_lines()))
                async with contextlib.aclosing(batches):
                    async for batch in batches:
                        texts: list[str] = []
                        for chunk in batch:
                            for choice in chunk.get("choices") or ():  # some servers send null
                                delta = choice.get("delta")
                                text = delta.get("content") if delta else None
                                if text:
                                    texts.append(text)
                                finish = choice.get("finish_reason")
                                if finish:
                                    reason = _STOP_REASONS.get(finish, StopReason.END)
                            counts = usage_counts(chunk.get("usage"))
                            if counts is not None:
                                input_tokens, cached, output_tokens = counts
                        if texts:
                            text = "".join(texts)
                            output_chars += len(text)
                            yield TextChunk(text=text, emit_time_ns=time.time_ns())
            except (openai.APIError, httpx2.HTTPError, StreamedError) as error:
                raise translate_error(error) from error
        yield StreamEnd(
            reason=reason,
            # A server that ignores include_usage gets the documented estimate.
            input_tokens=input_tokens if input_tokens >= 0 else prompt.estimated_input_tokens,
            output_tokens=output_tokens if output_tokens >= 0 else (output_chars + 3) // 4,
            cache_read_input_tokens=max(cached, 0),
        )

    async def close(self) -> None:
        await self._client.close()
