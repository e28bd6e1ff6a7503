"""One turn of the Agent: read the recent turns (Persistence) and recall (memory), assemble the
prompt, stream the backend's answer, then record both messages in the message log. `done` is
yielded as soon as the log has acknowledged the messages, and nothing else waits before it:
Persistence and Memory take the turn from the log. An interrupted answer is recorded once,
marked interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

from chatplane.agent.branch_context import BranchLine, on_branch, with_recent
from chatplane.agent.llm.base import LlmBackend, StopReason, StreamEnd, StreamStart
from chatplane.agent.llm.errors import LlmError
from chatplane.agent.memory_client import MemoryClient
from chatplane.agent.prompt import build_prompt
from chatplane.agent.recent_turns import NO_WINDOW, RecentTurns, RecentWindow
from chatplane.agent.variants import (
    Experiment,
    FixedVariantSource,
    Variant,
    VariantRouter,
    VariantsConfigError,
)
from chatplane.agent.variants.recall_filter import filtered, recall_k
from chatplane.common import errors
from chatplane.common.settings import Settings
from chatplane.common.timestamps import timestamp_of_ms
from chatplane.common.topics import MESSAGE_SCHEMA_VERSION, MESSAGES_TOPIC
from chatplane.crypto.keyring import Keyring
from chatplane.crypto.log_records import sealed_message
from chatplane.internal.v1 import events_pb2
from chatplane.log import LogRecord, MessageLogProducer
from chatplane.privacy.policy import RedactionPolicy
from chatplane.v1 import resources_pb2

_log = logging.getLogger(__name__)

TurnEvent = (
    resources_pb2.TurnStarted
    | resources_pb2.TextDelta
    | resources_pb2.Citation
    | resources_pb2.Usage
    | resources_pb2.TurnDone
)
# Seconds an outbound call may take: the caller's remaining time less a margin, capped.
Budget = Callable[[float], float]

_FINISH = {
    StopReason.END: resources_pb2.FINISH_REASON_STOP,
    StopReason.MAX_TOKENS: resources_pb2.FINISH_REASON_MAX_TOKENS,
    StopReason.STOP_SEQUENCE: resources_pb2.FINISH_REASON_STOP,
}


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A turn to run; the ids come from the Gateway."""

    tenant_id: str
    user_id: str
    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    text: str
    client_message_id: str
    # traceparent / tracestate / x-request-id, written into every log record's headers.
    trace_headers: tuple[tuple[str, str], ...] = ()
    # The conversation tree (docs/conversation-tree.md): the user message's parent; a
    # regenerated answer (the user message is stored already); the branch to answer from.
    parent_message_id: str = ""
    regenerate: bool = False
    branch: tuple[BranchLine, ...] | None = None
    # A registry version the turn is pinned to (NAME@VERSION; evaluation, admins only).
    pinned_variant: str = ""


def _elapsed_ms(start: float) -> int:
    return round((time.monotonic() - start) * 1000)


def _answer_record(
    variant: str, first_token_ms: int | None, turn_start: float
) -> events_pb2.MessageRecorded:
    """The assistant record's A/B fields: the variant, the latency of the first token (if
    there was one) and the duration until now, both from the turn's start at the Agent."""
    measures = events_pb2.MessageRecorded(variant=variant, duration_ms=_elapsed_ms(turn_start))
    if first_token_ms is not None:
        measures.first_token_ms = first_token_ms
    return measures


def _with_measures(
    record: events_pb2.MessageRecorded, measures: events_pb2.MessageRecorded | None
) -> events_pb2.MessageRecorded:
    if measures is not None:
        record.MergeFrom(measures)
    return record


class TurnRunner:
    """Runs turns; one instance per Agent process."""

    def __init__(
        self,
        *,
        settings: Settings,
        memory: MemoryClient,
        backend: LlmBackend,
        producer: MessageLogProducer,
        recent: RecentTurns | None = None,
        variants: VariantRouter | None = None,
        pinned_variants: Callable[[str, float], Awaitable[Variant]] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self._settings = settings
        self._memory = memory
        # The recent turns come from the system of record (None: no history).
        self._recent = recent
        self._backend = backend
        self._producer = producer
        # Encryption at rest (docs/security.md): message text is sealed before the log.
        self._keyring = keyring
        # A/B variants (docs/variants.md); without them every turn is variant "default".
        self._variants = variants or VariantRouter(
            FixedVariantSource(Experiment.single()),
            settings,
            default_backend=backend,
            build_chain=lambda _: backend,
        )
        # Resolves NAME@VERSION of a pinned turn (docs/registry.md); None: no registry.
        self._pinned_variants = pinned_variants
        # Recordings of interrupted turns still running; awaited at shutdown.
        self._pending: set[asyncio.Task[None]] = set()
        # PII masked in what is sent to the model provider (docs/privacy.md).
        self._redaction = RedactionPolicy.from_settings(settings)

    async def run(self, turn: TurnRequest, budget: Budget) -> AsyncGenerator[TurnEvent]:
        """The events of one turn. Closing the iterator early records the partial answer."""
        settings = self._settings
        user_time_ms = int(time.time() * 1000)
        # The turn's clock for the answer's first-token latency and duration.
        turn_start = time.monotonic()
        pinned = await self._pinned(turn.pinned_variant, budget)
        variant = self._variants.apply(turn.tenant_id, turn.user_id, pinned)
        first_token_ms: int | None = None
        kinds, documents = variant.retrieval_kinds, variant.retrieval_documents
        timeout = budget(settings.internal_call_timeout_seconds)
        # Both before the first token, side by side: the recent turns from Persistence
        # (waiting, bounded, for a previous turn still on its way from the log) and recall.
        recollection, recent = await asyncio.gather(
            self._memory.recall(
                tenant_id=turn.tenant_id,
                user_id=turn.user_id,
                conversation_id=turn.conversation_id,
                query=turn.text,
                top_k=recall_k(variant.retrieval_k, kinds, documents),
                timeout=timeout,
            ),
            self._recent_window(turn, timeout),
        )
        recollection = filtered(recollection, variant.retrieval_k, kinds, documents)
        if turn.branch is not None:
            recollection = on_branch(recollection, turn.branch, turn.conversation_id)
        recollection = with_recent(recollection, recent)
        mask = functools.partial(self._redaction.text, turn.tenant_id)
        prompt = build_prompt(
            question=mask(turn.text),
            history=[replace(line, text=mask(line.text)) for line in recollection.history],
            passages=[replace(p, text=mask(p.text)) for p in recollection.passages],
            budget_tokens=settings.context_token_budget,
            max_tokens=variant.max_tokens,
            temperature=variant.temperature,
            stop_sequences=tuple(settings.llm_stop_sequences),
            context_window_tokens=settings.llm_context_window_tokens,
            system=variant.system_prompt,
        )
        used = {p.source_id for p in prompt.passages}

        backend = variant.backend
        model = backend.model
        parts: list[str] = []
        end: StreamEnd | None = None
        started = recorded = False
        # Why an unfinished answer stopped: the client went away unless a provider failed.
        cut_by = resources_pb2.FINISH_REASON_INTERRUPTED
        try:
            stream = backend.stream(prompt, max_attempts=settings.llm_max_attempts_per_turn)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, StreamStart):
                        # The model that answers is known once a model produced its first
                        # token (after any fallback).
                        model = item.model
                        started = True
                        yield resources_pb2.TurnStarted(
                            conversation_id=turn.conversation_id,
                            user_message_id=turn.user_message_id,
                            assistant_message_id=turn.assistant_message_id,
                            model=model,
                            memory_degraded=recollection.degraded,
                            variant=variant.identifier,
                        )
                        for citation in recollection.citations:
                            if citation.source_id in used:
                                yield citation
                        continue
                    if isinstance(item, StreamEnd):
                        end = item
                        break
                    if first_token_ms is None:
                        first_token_ms = _elapsed_ms(turn_start)
                    parts.append(item.text)
                    yield resources_pb2.TextDelta(
                        text=item.text, sequence=len(parts), emit_time_unix_nanos=item.emit_time_ns
                    )
            if end is None or not started:
                raise errors.Unavailable("the model backend ended its stream unexpectedly")
            usage = resources_pb2.Usage(
                input_tokens=end.input_tokens,
                output_tokens=end.output_tokens,
                cache_read_input_tokens=end.cache_read_input_tokens,
                cache_creation_input_tokens=end.cache_creation_input_tokens,
            )
            yield usage
            finish = _FINISH[end.reason]
            await self._record(
                turn,
                user_time_ms,
                parts,
                model,
                finish,
                usage,
                budget=budget,
                measures=_answer_record(variant.identifier, first_token_ms, turn_start),
            )
            recorded = True
            yield resources_pb2.TurnDone(finish_reason=finish, model=model, delta_count=len(parts))
        except LlmError:
            cut_by = resources_pb2.FINISH_REASON_ERROR
            raise
        finally:
            # A provider that failed before the first token leaves nothing to keep: the turn
            # fails and a retry runs it again. Otherwise an unfinished answer is kept, once,
            # even though this task may be being cancelled.
            provider_failed_early = cut_by == resources_pb2.FINISH_REASON_ERROR and not started
            if not recorded and end is None and not provider_failed_early:
                task = asyncio.create_task(
                    self._record_interrupted(
                        turn,
                        user_time_ms,
                        parts,
                        model,
                        cut_by,
                        resources_pb2.Usage(
                            input_tokens=prompt.estimated_input_tokens, output_tokens=len(parts)
                        ),
                        budget=None,
                        measures=_answer_record(variant.identifier, first_token_ms, turn_start),
                    )
                )
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _recent_window(self, turn: TurnRequest, timeout: float) -> RecentWindow:
        if self._recent is None:
            return NO_WINDOW
        return await self._recent.window(
            tenant_id=turn.tenant_id,
            user_id=turn.user_id,
            conversation_id=turn.conversation_id,
            leaf_message_id=turn.parent_message_id,
            limit=self._settings.recent_turns,
            wait_seconds=self._settings.recent_turns_wait_seconds,
            timeout=timeout,
        )

    async def _pinned(self, identifier: str, budget: Budget) -> Variant | None:
        if not identifier:
            return None
        if self._pinned_variants is None:
            raise errors.FailedPrecondition("this Agent has no variant registry")
        variant = await self._pinned_variants(
            identifier, budget(self._settings.internal_call_timeout_seconds)
        )
        try:
            self._variants.prepare((variant,))
        except VariantsConfigError as error:
            message = f"this Agent cannot serve {identifier}: {error}"
            raise errors.FailedPrecondition(message) from None
        return variant

    async def _record_interrupted(self, *args: Any, **kwargs: Any) -> None:
        try:
            await self._record(*args, **kwargs)
        except Exception:
            # The answer was never acknowledged to anyone; log and go on.
            _log.exception("recording an interrupted turn failed")

    async def _record(
        self,
        turn: TurnRequest,
        user_time_ms: int,
        deltas: list[str],
        model: str,
        finish: resources_pb2.FinishReason.ValueType,
        usage: resources_pb2.Usage,
        *,
        budget: Budget | None,
        measures: events_pb2.MessageRecorded | None = None,
    ) -> None:
        """Appends both messages to the log and waits for its acknowledgement: from then on the
        turn is durable, and Persistence and Memory take it from the log.
        `measures` holds the assistant record's variant and latencies."""
        settings = self._settings
        answer = "".join(deltas)
        answer_time_ms = max(int(time.time() * 1000), user_time_ms + 1)
        # Cut by the client (INTERRUPTED) or by a provider failure (ERROR): kept, unfinished.
        interrupted = finish in (
            resources_pb2.FINISH_REASON_INTERRUPTED,
            resources_pb2.FINISH_REASON_ERROR,
        )
        user = resources_pb2.Message(
            message_id=turn.user_message_id,
            conversation_id=turn.conversation_id,
            role=resources_pb2.ROLE_USER,
            text=turn.text,
            status=resources_pb2.MESSAGE_STATUS_COMPLETE,
            create_time=timestamp_of_ms(user_time_ms),
            client_message_id=turn.client_message_id,
            parent_message_id=turn.parent_message_id,
        )
        assistant = resources_pb2.Message(
            message_id=turn.assistant_message_id,
            conversation_id=turn.conversation_id,
            role=resources_pb2.ROLE_ASSISTANT,
            text=answer,
            status=(
                resources_pb2.MESSAGE_STATUS_INTERRUPTED
                if interrupted
                else resources_pb2.MESSAGE_STATUS_COMPLETE
            ),
            model=model,
            create_time=timestamp_of_ms(answer_time_ms),
            reply_to_message_id=turn.user_message_id,
            finish_reason=finish,
            usage=usage,
            parent_message_id=turn.user_message_id,
        )
        # A regenerated answer's user message is stored already: only the answer is new.
        new_messages = (assistant,) if turn.regenerate else (user, assistant)
        key = turn.conversation_id.encode()
        headers = tuple((name, value.encode()) for name, value in turn.trace_headers)
        sealed = {
            m.message_id: await sealed_message(self._keyring, turn.tenant_id, turn.user_id, m)
            for m in new_messages
        }
        records = [
            LogRecord(
                topic=MESSAGES_TOPIC,
                key=key,
                headers=headers,
                value=_with_measures(
                    events_pb2.MessageRecorded(
                        schema_version=MESSAGE_SCHEMA_VERSION,
                        tenant_id=turn.tenant_id,
                        user_id=turn.user_id,
                        message=sealed[message.message_id],
                        # Where each delta ended, so ResumeChat can replay the stored answer.
                        delta_ends=accumulate(map(len, deltas)) if message is assistant else (),
                    ),
                    measures if message is assistant else None,
                ).SerializeToString(),
            )
            for message in new_messages
        ]
        cap = settings.log_append_timeout_seconds
        await self._producer.append(records, timeout=budget(cap) if budget else cap)
        _log.info(
            "turn recorded",
            extra={
                "conversation_id": turn.conversation_id,
                "assistant_message_id": turn.assistant_message_id,
                "output_tokens": usage.output_tokens,
                "interrupted": interrupted,
            },
        )

    async def drain(self) -> None:
        """Waits for recordings of interrupted turns still in flight (at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
