"""Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama, …) through
the official `openai` SDK: streaming with `stream_options.include_usage`, the system prompt
and fenced passages as the system message, and the SDK's retries before the first byte."""

from __future__ import annotations

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


def _attempts(request: httpx2.Request | None) -> int:
    if request is None:
        return 1
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) + 1
    except ValueError:
        return 1


def translate_error(error: Exception) -> llm_errors.LlmError:
    """The one boundary between the SDK's exceptions and chatplane's provider failures."""
    if isinstance(error, openai.APIStatusError):
        attempts = _attempts(error.response.request)
        status = error.status_code
        if status == 429:
            retry_after = error.response.headers.get("retry-after", "1")
            try:
                seconds = max(float(retry_after), 0.0)
            except ValueError:
                seconds = 1.0
            return llm_errors.ProviderRateLimited(
                "the model provider's rate limit is reached; retry later",
                retry_after=seconds,
                attempts=attempts,
            )
        if status in (400, 413, 422):
            return llm_errors.ProviderRejected(
                "the model provider rejected the request", attempts=attempts
            )
        if status in (401, 403, 404):
            _log.error(
                "the OpenAI-compatible server rejected the key or model", extra={"status": status}
            )
        return llm_errors.ProviderUnavailable(
            "the model provider is unavailable", attempts=attempts
        )
    if isinstance(error, openai.APIConnectionError):
        return llm_errors.ProviderUnavailable(
            "the model provider cannot be reached", attempts=_attempts(error.request)
        )
    return llm_errors.ProviderUnavailable("the model provider failed mid-answer")


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
        self._max_retries = max_retries
        # One client per retry allowance, sharing the connection pool (made once, not per call).
        self._clients = {
            retries: self._client.with_options(max_retries=retries)
            for retries in range(max_retries + 1)
        }

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return f"openai_compatible {self._base_url}"

    async def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        retries = max(0, min(self._max_retries, max_attempts - 1))
        try:
            chunks = await self._clients[retries].chat.completions.create(
                **request_body(prompt, model=self._model), stream=True
            )
        except openai.APIError as error:
            raise translate_error(error) from error
        reason = StopReason.END
        input_tokens = cached = output_tokens = -1
        output_chars = 0
        try:
            yield StreamStart(model=self._model)
            async for chunk in chunks:
                for choice in chunk.choices or ():  # some servers send null with usage
                    text = choice.delta.content if choice.delta else None
                    if text:
                        output_chars += len(text)
                        yield TextChunk(text=text, emit_time_ns=time.time_ns())
                    if choice.finish_reason:
                        reason = _STOP_REASONS.get(choice.finish_reason, StopReason.END)
                if chunk.usage is not None:
                    details = chunk.usage.prompt_tokens_details
                    cached = (details.cached_tokens or 0) if details else 0
                    input_tokens = chunk.usage.prompt_tokens - cached
                    output_tokens = chunk.usage.completion_tokens
        except (openai.APIError, httpx2.HTTPError) as error:
            raise translate_error(error) from error
        finally:
            await chunks.close()
        yield StreamEnd(
            reason=reason,
            # A server that ignores include_usage gets the documented estimate.
            input_tokens=input_tokens if input_tokens >= 0 else prompt.estimated_input_tokens,
            output_tokens=output_tokens if output_tokens >= 0 else (output_chars + 3) // 4,
            cache_read_input_tokens=max(cached, 0),
        )

    async def close(self) -> None:
        await self._client.close()
