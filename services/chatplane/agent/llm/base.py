"""The streaming interface every LLM backend implements: the offline responder, Anthropic's
Messages API and OpenAI-compatible chat-completions servers plug in behind it (docs/llm.md)."""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass


class Speaker(enum.Enum):
    """Who said a line of the conversation history."""

    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """One earlier message of the conversation."""

    speaker: Speaker
    text: str


@dataclass(frozen=True, slots=True)
class ContextPassage:
    """A recalled piece of memory given to the model as data (never as instructions)."""

    source_id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """Everything a backend needs for one answer."""

    system: str
    passages: Sequence[ContextPassage]
    history: Sequence[HistoryLine]
    question: str
    max_tokens: int
    estimated_input_tokens: int
    # Sampling temperature; None leaves the provider's default.
    temperature: float | None = None
    # Strings that end the answer when the model produces them.
    stop_sequences: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The first item of a stream: the model that answers (after any fallback)."""

    model: str


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of the answer, with the wall-clock time the backend emitted it."""

    text: str
    emit_time_ns: int


class StopReason(enum.Enum):
    """Why the backend ended the answer."""

    END = "end"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: why it ended and the token counts."""

    reason: StopReason
    input_tokens: int
    output_tokens: int
    # Prompt-cache tokens, as the provider reports them (not included in input_tokens).
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


StreamItem = StreamStart | TextChunk | StreamEnd


class LlmBackend(abc.ABC):
    """A model that streams an answer to a prompt."""

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """The model's name as reported to clients."""

    @property
    def provider(self) -> str:
        """Where the model runs (kind and endpoint): backends of one provider share a circuit
        breaker, since an outage takes all of its models down."""
        return self.model

    @abc.abstractmethod
    def stream(self, prompt: Prompt, *, max_attempts: int = 1) -> AsyncGenerator[StreamItem]:
        """Streams one StreamStart, text chunks, then exactly one StreamEnd. Before the first
        byte of the answer the backend may retry, making at most `max_attempts` upstream
        requests; failures raise `chatplane.agent.llm.errors.LlmError`. Closing the iterator
        early (the client went away) must release the backend's connection promptly."""

    async def close(self) -> None:  # noqa: B027 — optional hook, most backends hold nothing
        """Releases connections."""
