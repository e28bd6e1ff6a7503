"""The streaming interface every LLM backend implements (offline responder now; Anthropic and
OpenAI-compatible servers plug in behind the same interface)."""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
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


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of the answer, with the wall-clock time the backend emitted it."""

    text: str
    emit_time_ns: int


class StopReason(enum.Enum):
    """Why the backend ended the answer."""

    END = "end"
    MAX_TOKENS = "max_tokens"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: why it ended and the token counts."""

    reason: StopReason
    input_tokens: int
    output_tokens: int


StreamItem = TextChunk | StreamEnd


class LlmBackend(abc.ABC):
    """A model that streams an answer to a prompt."""

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """The model's name as reported to clients."""

    @abc.abstractmethod
    def stream(self, prompt: Prompt) -> AsyncIterator[StreamItem]:
        """Streams text chunks, then exactly one StreamEnd. Closing the iterator early (the
        client went away) must release the backend's connection promptly."""

    async def close(self) -> None:  # noqa: B027 — optional hook, most backends hold nothing
        """Releases connections."""
