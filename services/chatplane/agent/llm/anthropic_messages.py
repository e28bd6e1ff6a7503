"""Claude through the official `anthropic` SDK: Messages API streaming, with the system prompt
and the recalled passages (fenced as data) as a cached prefix, usage including prompt-cache
tokens, and the SDK's own retries before the first byte (capped per call)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, TypeVar

import anthropic
import httpx2

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
from chatplane.agent.llm.provider_sdk import (
    RetryCappedClients,
    StatusMeaning,
    translate_sdk_error,
)
from chatplane.agent.llm.ready_batches import ready_batches
from chatplane.agent.llm.turns import alternating_turns
from chatplane.agent.prompt import render_passages

T = TypeVar("T")
_log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
_STOP_REASONS = {
    "max_tokens": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
}
# The prefix that stays the same from one turn to the next is cached by the provider.
_CACHE_CONTROL: dict[str, Any] = {"type": "ephemeral"}


def request_body(prompt: Prompt, *, model: str, prompt_caching: bool) -> dict[str, Any]:
    """The Messages API parameters for a prompt: system prompt and passages as system blocks
    (the stable prefix, with a cache breakpoint after it), then the conversation."""
    system: list[dict[str, Any]] = [{"type": "text", "text": prompt.system}]
    if prompt.passages:
        system.append({"type": "text", "text": render_passages(prompt.passages)})
    if prompt_caching:
        system[-1]["cache_control"] = _CACHE_CONTROL
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": prompt.max_tokens,
        "system": system,
        "messages": [
            {"role": "user" if speaker is Speaker.USER else "assistant", "content": text}
            for speaker, text in alternating_turns(prompt)
        ],
    }
    if prompt.temperature is not None:
        body["temperature"] = prompt.temperature
    if prompt.stop_sequences:
        body["stop_sequences"] = list(prompt.stop_sequences)
    return body


def _retry_after(response: httpx2.Response) -> float:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                continue
    return 1.0


def _meaning(error: anthropic.APIStatusError) -> StatusMeaning:
    status, kind = error.status_code, error.type or ""
    if status == 429 or kind == "rate_limit_error":
        return StatusMeaning.RATE_LIMITED
    if status in (400, 413, 422) or kind in ("invalid_request_error", "request_too_large"):
        return StatusMeaning.REJECTED
    if status in (401, 403, 404) or kind in (
        "authentication_error",
        "permission_error",
        "not_found_error",
    ):
        # Configuration, not load: say so to operators (never with the key).
        _log.error("anthropic rejected the credentials or model", extra={"status": status})
    return StatusMeaning.UNAVAILABLE


def translate_error(error: Exception) -> llm_errors.LlmError:
    """The one boundary between the SDK's exceptions and chatplane's provider failures."""
    return translate_sdk_error(
        error,
        status_error=anthropic.APIStatusError,
        connection_error=anthropic.APIConnectionError,
        meaning=_meaning,
        retry_after=_retry_after,
    )


async def _each(events: AsyncIterable[T]) -> AsyncGenerator[T]:
    """The SDK's event stream as an async generator (what ready_batches reads ahead)."""
    async for event in events:
        yield event


class AnthropicBackend(LlmBackend):
    """One Claude model behind the Messages API."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str,
        max_retries: int,
        connect_timeout: float,
        read_timeout: float,
        prompt_caching: bool,
    ) -> None:
        self._model = model
        self._base_url = base_url or DEFAULT_BASE_URL
        self._prompt_caching = prompt_caching
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=self._base_url,
            max_retries=max_retries,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
        )
        self._clients = RetryCappedClients(self._client, max_retries)

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return f"anthropic {self._base_url}"

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        body = request_body(prompt, model=self._model, prompt_caching=self._prompt_caching)
        client = self._clients.for_attempts(max_attempts)
        # The pinned SDK's create() has no `temperature` parameter (a TypeError, seen when an
        # A/B variant sets one); the Messages API reads it from the JSON body.
        extra_body = {"temperature": body.pop("temperature")} if "temperature" in body else None
        try:
            events = await client.messages.create(**body, stream=True, extra_body=extra_body)
        except anthropic.APIError as error:
            raise translate_error(error) from error
        usage: dict[str, int] = {}
        reason = StopReason.END
        try:
            # Text deltas that arrived while the last token was being relayed go on as one.
            batches = ready_batches(_each(events))
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    texts: list[str] = []
                    for event in batch:
                        if event.type == "message_start":
                            start = event.message.usage
                            usage["input"] = start.input_tokens
                            usage["cache_read"] = start.cache_read_input_tokens or 0
                            usage["cache_creation"] = start.cache_creation_input_tokens or 0
                            yield StreamStart(model=self._model)
                        elif (
                            event.type == "content_block_delta" and event.delta.type == "text_delta"
                        ):
                            if event.delta.text:
                                texts.append(event.delta.text)
                        elif event.type == "message_delta":
                            reason = _STOP_REASONS.get(
                                event.delta.stop_reason or "", StopReason.END
                            )
                            delta = event.usage
                            usage["output"] = delta.output_tokens
                            if delta.input_tokens is not None:
                                usage["input"] = delta.input_tokens
                            if delta.cache_read_input_tokens is not None:
                                usage["cache_read"] = delta.cache_read_input_tokens
                            if delta.cache_creation_input_tokens is not None:
                                usage["cache_creation"] = delta.cache_creation_input_tokens
                    if texts:
                        yield TextChunk(text="".join(texts), emit_time_ns=time.time_ns())
        except (anthropic.APIError, httpx2.HTTPError) as error:
            raise translate_error(error) from error
        finally:
            # Closes the HTTP response now: a client that went away stops the generation.
            await events.close()
        if "output" not in usage:
            raise llm_errors.ProviderUnavailable("the model provider ended the answer early")
        yield StreamEnd(
            reason=reason,
            input_tokens=usage.get("input", prompt.estimated_input_tokens),
            output_tokens=usage["output"],
            cache_read_input_tokens=usage.get("cache_read", 0),
            cache_creation_input_tokens=usage.get("cache_creation", 0),
        )

    async def close(self) -> None:
        await self._client.close()
