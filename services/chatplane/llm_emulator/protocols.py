"""The wire formats the emulator speaks: Anthropic's Messages API (SSE events message_start,
content_block_start, ping, content_block_delta, content_block_stop, message_delta,
message_stop, error) and OpenAI's chat completions (`data:` chunks, a usage chunk, `[DONE]`).
Shapes follow the published references listed in docs/llm.md."""

from __future__ import annotations

import abc
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any


def estimate_tokens(text: str) -> int:
    """One token per four characters, rounded up (the estimate chatplane documents)."""
    return math.ceil(len(text) / 4)


@dataclass(frozen=True, slots=True)
class PromptTokens:
    """Input tokens of a request, split the way the provider bills them."""

    input_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the emulated model: its words, why it stopped, the prompt's tokens."""

    words: list[str]
    prompt: PromptTokens
    stop_reason: str
    stop_sequence: str | None


class Protocol(abc.ABC):
    """Encodes one answer of one protocol."""

    content_type = "text/event-stream"
    # HTTP status and error type per fault.
    http_faults: dict[str, tuple[int, str]]

    def __init__(self, model: str) -> None:
        self.model = model
        self.message_id = f"msg_emu_{uuid.uuid4().hex[:20]}"

    @abc.abstractmethod
    def error_body(self, error_type: str, message: str) -> dict[str, Any]:
        """The JSON body of an HTTP error."""

    @abc.abstractmethod
    def start(self, prompt: PromptTokens) -> list[bytes]:
        """Events before the first token."""

    @abc.abstractmethod
    def token(self, text: str) -> bytes:
        """One token's event."""

    @abc.abstractmethod
    def end(self, stop_reason: str, stop_sequence: str | None, output_tokens: int) -> list[bytes]:
        """Events after the last token."""

    @abc.abstractmethod
    def error_event(self, error_type: str) -> bytes:
        """An error reported inside the stream."""

    @abc.abstractmethod
    def ping(self) -> bytes | None:
        """A keep-alive event, where the protocol has one."""

    @abc.abstractmethod
    def whole(self, answer: Answer) -> dict[str, Any]:
        """The non-streaming response."""


def _sse(event: str | None, data: object) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class AnthropicMessages(Protocol):
    """POST /v1/messages."""

    http_faults = {
        "rate_limit": (429, "rate_limit_error"),
        "overloaded": (529, "overloaded_error"),
        "server_error": (500, "api_error"),
    }
    stop_reasons = {"end": "end_turn", "max_tokens": "max_tokens", "stop": "stop_sequence"}

    def error_body(self, error_type: str, message: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": f"req_emu_{uuid.uuid4().hex[:20]}",
        }

    def _usage(self, prompt: PromptTokens, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": prompt.input_tokens,
            "cache_creation_input_tokens": prompt.cache_creation_input_tokens,
            "cache_read_input_tokens": prompt.cache_read_input_tokens,
            "output_tokens": output_tokens,
        }

    def _message(self, content: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }

    def start(self, prompt: PromptTokens) -> list[bytes]:
        return [
            _sse(
                "message_start",
                {"type": "message_start", "message": self._message([], self._usage(prompt, 1))},
            ),
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            _sse("ping", {"type": "ping"}),
        ]

    def token(self, text: str) -> bytes:
        return _sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def end(self, stop_reason: str, stop_sequence: str | None, output_tokens: int) -> list[bytes]:
        return [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": self.stop_reasons[stop_reason],
                        "stop_sequence": stop_sequence,
                    },
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]

    def error_event(self, error_type: str) -> bytes:
        return _sse("error", self.error_body(error_type, "Overloaded"))

    def ping(self) -> bytes | None:
        return _sse("ping", {"type": "ping"})

    def whole(self, answer: Answer) -> dict[str, Any]:
        message = self._message(
            [{"type": "text", "text": "".join(answer.words)}],
            self._usage(answer.prompt, len(answer.words)),
        )
        message["stop_reason"] = self.stop_reasons[answer.stop_reason]
        message["stop_sequence"] = answer.stop_sequence
        return message


class OpenAiChat(Protocol):
    """POST /v1/chat/completions."""

    http_faults = {
        "rate_limit": (429, "rate_limit_exceeded"),
        "overloaded": (503, "server_overloaded"),
        "server_error": (500, "server_error"),
    }
    finish_reasons = {"end": "stop", "max_tokens": "length", "stop": "stop"}

    def __init__(self, model: str, *, include_usage: bool) -> None:
        super().__init__(model)
        self.message_id = f"chatcmpl-emu{uuid.uuid4().hex[:20]}"
        self._include_usage = include_usage
        self._created = int(time.time())
        self._prompt = PromptTokens(0)

    def error_body(self, error_type: str, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": error_type, "param": None, "code": None}}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        prompt_tokens = self._prompt.input_tokens + self._prompt.cache_read_input_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": self._prompt.cache_read_input_tokens},
        }

    def start(self, prompt: PromptTokens) -> list[bytes]:
        self._prompt = prompt
        return [_sse(None, self._chunk({"role": "assistant", "content": ""}, None))]

    def token(self, text: str) -> bytes:
        return _sse(None, self._chunk({"content": text}, None))

    def end(self, stop_reason: str, stop_sequence: str | None, output_tokens: int) -> list[bytes]:
        events = [_sse(None, self._chunk({}, self.finish_reasons[stop_reason]))]
        if self._include_usage:
            usage = {**self._chunk({}, None), "choices": [], "usage": self._usage(output_tokens)}
            events.append(_sse(None, usage))
        events.append(b"data: [DONE]\n\n")
        return events

    def error_event(self, error_type: str) -> bytes:
        return _sse(None, self.error_body(error_type, "The server is overloaded"))

    def ping(self) -> bytes | None:
        return None

    def whole(self, answer: Answer) -> dict[str, Any]:
        self._prompt = answer.prompt
        return {
            "id": self.message_id,
            "object": "chat.completion",
            "created": self._created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(answer.words)},
                    "finish_reason": self.finish_reasons[answer.stop_reason],
                }
            ],
            "usage": self._usage(len(answer.words)),
        }
