"""Resume benchmark: how fast a client that lost its stream gets the rest of the answer, from the
live generation (the Agent's events) and from storage (the stored answer cut at its streamed
delta boundaries), and that the text it ends with is the stored text, with no second answer."""

from __future__ import annotations

import asyncio
import time

import grpc

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2

NAME = "resume"
TITLE = "resume: time to the first resumed delta, live and from storage (embedded profile)"
LIVE, STORED = "live", "from storage"
DROP_AFTER = 3
STACK_ENV = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "40",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.05",
    # Finished turns leave the Agent at once, so resumes after the end read storage.
    "CHATPLANE_RESUME_LINGER_SECONDS": "0",
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000",
    "CHATPLANE_RATE_LIMIT_BURST": "1000",
}
NOTES = (
    "offline responder at 40 tokens/s; one user, one turn at a time; each turn is a resumable "
    f"Chat dropped after {DROP_AFTER} deltas",
    f"live: ResumeChat(after {DROP_AFTER}) at once, while the answer is generated; time from "
    "the call to its first delta (the next one the model produces, so up to one token "
    "interval, 25 ms, is the model's pace, not overhead)",
    f"from storage: after the answer is stored and the Agent forgot it, ResumeChat(after "
    f"{DROP_AFTER}); time from the call to its first delta (GetAnswer + cut)",
    "resumed `started`: time from the call to its first event (ownership check, then the "
    "Agent's live turn or the stored answer)",
    "mismatches: resumed text + received text != stored text, or deltas not contiguous",
)


async def _resume(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    message_id: str,
) -> tuple[int, int, list[resources_pb2.TextDelta]]:
    """(ns to `started`, ns to the first delta, the deltas) of ResumeChat after DROP_AFTER."""
    began = time.perf_counter_ns()
    started = first = 0
    deltas: list[resources_pb2.TextDelta] = []
    request = gateway_pb2.ResumeChatRequest(message_id=message_id, after_sequence=DROP_AFTER)
    async for event in stub.ResumeChat(request, metadata=metadata, timeout=30):
        if event.WhichOneof("event") == "started":
            started = time.perf_counter_ns() - began
        if event.WhichOneof("event") == "delta":
            first = first or time.perf_counter_ns() - began
            deltas.append(event.delta)
    return started, first, deltas


async def _stored_text(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    conversation_id: str,
) -> str:
    for _ in range(200):
        response = await stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=metadata,
            timeout=10,
        )
        answers = [m for m in response.messages if m.role == resources_pb2.ROLE_ASSISTANT]
        if answers:
            return answers[0].text
        await asyncio.sleep(0.02)
    raise TimeoutError("the answer was not stored")


async def _turn(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    live: bool,
) -> tuple[int, int, bool]:
    """One dropped turn and its resume: (ns to `started`, to the first delta, text matches)."""
    call = stub.Chat(
        gateway_pb2.ChatRequest(text="tell me what you know", resumable=True),
        metadata=metadata,
        timeout=60,
    )
    received: list[str] = []
    message_id = conversation_id = ""
    async for event in call:
        if event.WhichOneof("event") == "started":
            message_id = event.started.assistant_message_id
            conversation_id = event.started.conversation_id
        elif event.WhichOneof("event") == "delta":
            received.append(event.delta.text)
            if len(received) == DROP_AFTER:
                break
    call.cancel()
    if not live:
        await _stored_text(stub, metadata, conversation_id)
    started, first, deltas = await _resume(stub, metadata, message_id)
    stored = await _stored_text(stub, metadata, conversation_id)
    contiguous = [d.sequence for d in deltas] == list(
        range(DROP_AFTER + 1, DROP_AFTER + 1 + len(deltas))
    )
    return (
        started,
        first,
        contiguous and "".join(received) + "".join(d.text for d in deltas) == stored,
    )


async def run(options: Options) -> list[Row]:
    """The benchmark's rows."""
    turns = 5 if options.quick else 30
    samples: dict[str, list[int]] = {LIVE: [], STORED: []}
    started: dict[str, list[int]] = {LIVE: [], STORED: []}
    mismatches = {LIVE: 0.0, STORED: 0.0}
    async with running_stack(NAME, STACK_ENV, options) as stack:
        (key,) = await create_keys(stack, [("bench-tenant", "bench-resume")])
        metadata = (("authorization", f"Bearer {key}"),)
        channel: grpc.aio.Channel = await user_channel(stack.info().address("gateway"))
        async with channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            for index in range(turns):
                for column in (LIVE, STORED):
                    to_started, first, matches = await _turn(stub, metadata, column == LIVE)
                    started[column].append(to_started)
                    samples[column].append(first)
                    mismatches[column] += not matches
                progress(options, f"{NAME}: {index + 1}/{turns} turns")
    return [
        Row(NAME, "turns", "", {c: float(len(s)) for c, s in samples.items()}, precision=0),
        Row(NAME, "mismatches", "", mismatches, Target(0, op="=="), 0),
        Row(
            NAME,
            "resumed `started` p50",
            "ms",
            {c: ns_to_ms(percentile(s, 0.5)) for c, s in started.items()},
        ),
        Row(
            NAME,
            "resumed `started` p99",
            "ms",
            {c: ns_to_ms(percentile(s, 0.99)) for c, s in started.items()},
            Target(50),
        ),
        Row(
            NAME,
            "first resumed delta p50",
            "ms",
            {c: ns_to_ms(percentile(s, 0.5)) for c, s in samples.items()},
        ),
        Row(
            NAME,
            "first resumed delta p99",
            "ms",
            {c: ns_to_ms(percentile(s, 0.99)) for c, s in samples.items()},
            Target(50, STORED),
        ),
    ]
