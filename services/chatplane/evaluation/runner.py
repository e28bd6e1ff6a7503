"""Runs a suite through the real Agent path (docs/eval.md): the Gateway's Chat with every
turn pinned to the variant version under test, memory and retrieval included. Each variant
runs as a user of its own (a key created for the run and revoked after it), so no run
recalls another's turns; the suite's documents are ingested once for the run and deleted
after it. Memory indexes turns from the message log shortly after `done`: a case's question
is asked once memory holds its earlier conversations."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc

from chatplane.evaluation.scoring import Answer, CaseScore, score_case
from chatplane.evaluation.suite import Suite, SuiteCase
from chatplane.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
PIECE_BYTES = 256 * 1024
# How long a case's question waits for memory to index its earlier conversations, and the
# pauses between looks (doubling; each look is a request under the admin's rate limit); after
# that it is asked anyway and scored as answered.
MEMORY_WAIT_SECONDS = 60.0
MEMORY_FIRST_PAUSE_SECONDS = 0.25
MEMORY_MAX_PAUSE_SECONDS = 2.0


def _bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@dataclass(frozen=True, slots=True)
class EvalTarget:
    """Where and as whom the suite runs: a Gateway channel and an admin key (of a tenant in
    CHATPLANE_REGISTRY_ADMIN_TENANTS when versions are pinned)."""

    channel: grpc.aio.Channel
    admin_key: str
    turn_timeout_seconds: float = 120.0
    call_timeout_seconds: float = 30.0


async def _pieces(
    name: str, mime_type: str, content: bytes
) -> AsyncIterator[gateway_pb2.IngestDocumentRequest]:
    yield gateway_pb2.IngestDocumentRequest(
        header=gateway_pb2.IngestDocumentHeader(name=name, mime_type=mime_type)
    )
    for start in range(0, len(content), PIECE_BYTES):
        yield gateway_pb2.IngestDocumentRequest(content=content[start : start + PIECE_BYTES])


@contextlib.asynccontextmanager
async def suite_documents(
    target: EvalTarget, suite: Suite, contents: Mapping[str, bytes]
) -> AsyncIterator[list[str]]:
    """The suite's documents ingested for the block (their ids), deleted after it."""
    gateway = gateway_pb2_grpc.GatewayServiceStub(target.channel)
    metadata = _bearer(target.admin_key)
    ids: list[str] = []
    try:
        for document in suite.documents:
            response = await gateway.IngestDocument(
                _pieces(document.name, document.mime_type, contents[document.name]),
                metadata=metadata,
                timeout=600,
            )
            ids.append(response.document.document_id)
        yield ids
    finally:
        for document_id in ids:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await gateway.DeleteDocument(
                    gateway_pb2.DeleteDocumentRequest(document_id=document_id),
                    metadata=metadata,
                    timeout=target.call_timeout_seconds,
                )


@dataclass(frozen=True, slots=True)
class RunUser:
    """The user a variant runs as, and its key."""

    user_id: str
    api_key: str


@contextlib.asynccontextmanager
async def run_user(target: EvalTarget, label: str) -> AsyncIterator[RunUser]:
    """A key of a fresh user of the admin's tenant, allowed to pin versions; revoked after."""
    admin = admin_pb2_grpc.AdminServiceStub(target.channel)
    metadata = _bearer(target.admin_key)
    user_id = f"eval-{uuid.uuid4().hex[:12]}"
    created = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(
            user_id=user_id,
            label=f"chatplane eval {label}"[:256],
            roles=["chat", "admin"],
        ),
        metadata=metadata,
        timeout=target.call_timeout_seconds,
    )
    try:
        yield RunUser(user_id, created.api_key)
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await admin.RevokeApiKey(
                admin_pb2.RevokeApiKeyRequest(key_id=created.key.key_id),
                metadata=metadata,
                timeout=target.call_timeout_seconds,
            )


async def memory_holds(target: EvalTarget, user_id: str, message_ids: Sequence[str]) -> bool:
    """True when the user's memory holds every message, as the user's export
    (AdminService.ExportUserData, with the admin key) shows it."""
    admin = admin_pb2_grpc.AdminServiceStub(target.channel)
    call = admin.ExportUserData(
        admin_pb2.ExportUserDataRequest(user_id=user_id),
        metadata=_bearer(target.admin_key),
        timeout=target.call_timeout_seconds,
    )
    archive = json.loads(b"".join([piece.chunk async for piece in call]))
    return set(message_ids) <= {entry["item_id"] for entry in archive["memory"]}


async def wait_for_memory(target: EvalTarget, user_id: str, message_ids: Sequence[str]) -> None:
    """Returns once memory holds the messages, or after MEMORY_WAIT_SECONDS. A look refused by
    the rate limit (RESOURCE_EXHAUSTED) counts as not yet."""
    deadline = time.monotonic() + MEMORY_WAIT_SECONDS
    pause = MEMORY_FIRST_PAUSE_SECONDS
    while message_ids and time.monotonic() < deadline:
        await asyncio.sleep(pause)
        try:
            if await memory_holds(target, user_id, message_ids):
                return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        pause = min(pause * 2, MEMORY_MAX_PAUSE_SECONDS)


@dataclass(frozen=True, slots=True)
class Asked:
    """One turn's answer, its conversation, and the ids of its messages that memory indexes
    (the question, and the answer when it has text)."""

    answer: Answer
    conversation_id: str
    message_ids: tuple[str, ...]


async def ask(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: Metadata,
    variant: str,
    text: str,
    conversation_id: str,
    timeout: float,
) -> Asked:
    """One pinned turn."""
    started = time.monotonic()
    message_ids: tuple[str, ...] = ()
    parts: list[str] = []
    citations: list[str] = []
    recorded_variant = model = ""
    first_token_ms: float | None = None
    completed = False
    input_tokens = output_tokens = 0
    error = ""
    try:
        call = gateway.Chat(
            gateway_pb2.ChatRequest(text=text, conversation_id=conversation_id, variant=variant),
            metadata=metadata,
            timeout=timeout,
        )
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "started":
                conversation_id = event.started.conversation_id
                message_ids = (event.started.user_message_id, event.started.assistant_message_id)
                recorded_variant, model = event.started.variant, event.started.model
            elif kind == "delta":
                if first_token_ms is None:
                    first_token_ms = (time.monotonic() - started) * 1000
                parts.append(event.delta.text)
            elif kind == "citation":
                citations += [c for c in (event.citation.title, event.citation.document_id) if c]
            elif kind == "usage":
                input_tokens = event.usage.input_tokens
                output_tokens = event.usage.output_tokens
            elif kind == "done":
                completed = True
                model = event.done.model or model
    except grpc.aio.AioRpcError as failure:
        error = f"{failure.code().name}: {failure.details()}"
    answer = Answer(
        text="".join(parts),
        citations=tuple(citations),
        variant=recorded_variant,
        model=model,
        completed=completed,
        first_token_ms=first_token_ms,
        total_ms=(time.monotonic() - started) * 1000,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        error=error,
    )
    return Asked(answer, conversation_id, message_ids[: 2 if answer.text else 1])


async def run_case(
    target: EvalTarget,
    user: RunUser,
    variant: str,
    case: SuiteCase,
) -> Answer:
    """The case's earlier conversations, then (once memory holds them) its earlier turns and
    its question in one new conversation."""
    gateway = gateway_pb2_grpc.GatewayServiceStub(target.channel)
    metadata = _bearer(user.api_key)
    timeout = target.turn_timeout_seconds
    remembered: list[str] = []
    for conversation in case.earlier_conversations:
        earlier_id = ""
        for text in conversation:
            asked = await ask(gateway, metadata, variant, text, earlier_id, timeout)
            if asked.answer.error:
                return asked.answer
            earlier_id = asked.conversation_id
            remembered += asked.message_ids
    await wait_for_memory(target, user.user_id, remembered)
    conversation_id = ""
    for earlier in case.history:
        asked = await ask(gateway, metadata, variant, earlier, conversation_id, timeout)
        if asked.answer.error:
            return asked.answer
        conversation_id = asked.conversation_id
    answer = (await ask(gateway, metadata, variant, case.question, conversation_id, timeout)).answer
    if not answer.error and answer.variant != variant:
        # The turn was not answered by the version under test: never score it as such.
        return dataclasses.replace(answer, error=f"answered by {answer.variant!r}")
    return answer


async def run_variant(
    target: EvalTarget,
    suite: Suite,
    variant: str,
    prices: Mapping[str, tuple[float, float]],
) -> list[CaseScore]:
    """Every case of the suite answered by `variant` (NAME@VERSION) and scored."""
    scores: list[CaseScore] = []
    async with run_user(target, variant) as user:
        for case in suite.cases:
            answer = await run_case(target, user, variant, case)
            scores.append(score_case(case, answer, prices))
    return scores


async def run_suite(
    target: EvalTarget,
    suite: Suite,
    contents: Mapping[str, bytes],
    variants: Sequence[str],
    prices: Mapping[str, tuple[float, float]],
) -> dict[str, list[CaseScore]]:
    """Each variant's scores, the suite's documents ingested once for all of them."""
    results: dict[str, list[CaseScore]] = {}
    async with suite_documents(target, suite, contents):
        for variant in variants:
            results[variant] = await run_variant(target, suite, variant, prices)
    return results
