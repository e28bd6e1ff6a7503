"""ResumeChat and CancelChat through the real services, with Claude answering through the LLM
emulator (paced, so answers take a while): a lost stream is continued from the live generation
or from storage with the same deltas, the emulator sees exactly one request per turn, and bad
requests get NOT_FOUND / INVALID_ARGUMENT (docs/resume.md)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2

from chatplane.cli.chat import Gateway, stream_answer
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2
from tests.integration.stack_client import (
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
    status_details,
    unique,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "claude-resume"
API_KEY = f"sk-emulator-{uuid.uuid4().hex}"
TOKENS = 30
TOKENS_PER_SECOND = 20  # 1.5 s per answer: slow enough to lose a stream in the middle


@dataclass
class Rig:
    emulator: EmulatorProcess
    channel: grpc.aio.Channel
    stack: Any

    async def client(self, tenant: str | None = None) -> Client:
        return Client(self.channel, await create_key(self.stack, tenant or unique("t"), "u"))

    async def request_count(self) -> int:
        return len(await self.emulator.requests())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with running_emulator(
        "--tokens", str(TOKENS), "--tokens-per-second", str(TOKENS_PER_SECOND),
        "--first-token-seconds", "0.05", "--api-key", API_KEY,
    ) as emulator:  # fmt: skip
        env = {
            "CHATPLANE_LLM_BACKEND": "auto",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CHATPLANE_LLM_MODEL": MODEL,
            # Finished turns leave the Agent soon, so storage serves later resumes.
            "CHATPLANE_RESUME_LINGER_SECONDS": "0.3",
        }
        async with (
            running_stack(tmp_path_factory.mktemp("resume"), env) as stack,
            grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
        ):
            yield Rig(emulator, channel, stack)


def chat(
    client: Client, text: str, *, resumable: bool
) -> grpc.aio.UnaryStreamCall[gateway_pb2.ChatRequest, gateway_pb2.ChatResponse]:
    request = gateway_pb2.ChatRequest(text=text, resumable=resumable)
    return client.stub.Chat(request, metadata=client.metadata, timeout=60)


async def first_deltas(
    call: grpc.aio.UnaryStreamCall[gateway_pb2.ChatRequest, gateway_pb2.ChatResponse], count: int
) -> Turn:
    """Reads the call until `count` deltas arrived, then drops the stream."""
    turn = Turn()
    async for event in call:
        turn.add(event)
        if len(turn.deltas) == count:
            break
    call.cancel()
    return turn


async def resume(client: Client, message_id: str, after: int) -> Turn:
    turn = Turn()
    request = gateway_pb2.ResumeChatRequest(message_id=message_id, after_sequence=after)
    async for event in client.stub.ResumeChat(request, metadata=client.metadata, timeout=30):
        turn.add(event)  # type: ignore[arg-type]  # the same oneof layout as ChatResponse
    return turn


async def stored_answer(client: Client, conversation_id: str) -> resources_pb2.Message:
    async def answer() -> resources_pb2.Message | None:
        response = await client.stub.GetConversation(
            gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
            metadata=client.metadata,
        )
        answers = [m for m in response.messages if m.role == resources_pb2.ROLE_ASSISTANT]
        return answers[0] if answers else None

    stored: resources_pb2.Message = await poll(answer, timeout=15)
    return stored


def sequences(turn: Turn) -> list[int]:
    return [d.delta.sequence for d in turn.deltas]


async def test_a_lost_stream_resumes_from_the_live_generation_without_a_second_one(
    rig: Rig,
) -> None:
    client = await rig.client()
    before = await rig.request_count()
    lost = await first_deltas(chat(client, "tell me a story", resumable=True), 5)
    assert lost.started is not None
    started = lost.started.started

    rest = await resume(client, started.assistant_message_id, after=5)

    assert rest.kinds[0] == "started" and rest.kinds[-1] == "done"
    assert rest.started is not None and rest.started.started.resumed
    assert rest.started.started.assistant_message_id == started.assistant_message_id
    assert rest.deltas and rest.deltas[0].delta.emit_time_unix_nanos > 0  # live, not stored
    assert rest.done is not None
    assert sequences(rest) == list(range(6, rest.done.done.delta_count + 1))
    assert rest.done.done.finish_reason == resources_pb2.FINISH_REASON_STOP
    stored = await stored_answer(client, started.conversation_id)
    assert stored.text == lost.text + rest.text
    assert stored.status == resources_pb2.MESSAGE_STATUS_COMPLETE
    requests = (await rig.emulator.requests())[before:]
    assert len(requests) == 1  # the lost stream did not stop it, the resume did not repeat it
    assert requests[0]["outcome"] == "complete"


async def test_resume_after_the_end_replays_the_stored_deltas(rig: Rig) -> None:
    client = await rig.client()
    original = Turn()
    async for event in chat(client, "hello there", resumable=True):
        original.add(event)
    assert original.done is not None and original.started is not None
    message_id = original.started.started.assistant_message_id
    await stored_answer(client, original.started.started.conversation_id)
    before = await rig.request_count()

    async def from_storage() -> Turn | None:
        # Live deltas carry their emit time; stored ones do not (the Agent forgot the turn).
        turn = await resume(client, message_id, after=3)
        return turn if turn.deltas[0].delta.emit_time_unix_nanos == 0 else None

    rest: Turn = await poll(from_storage, timeout=10)

    assert [(d.delta.sequence, d.delta.text) for d in rest.deltas] == [
        (d.delta.sequence, d.delta.text) for d in original.deltas[3:]
    ]
    assert rest.kinds == ["started", *["delta"] * len(rest.deltas), "usage", "done"]
    assert rest.started is not None and rest.started.started.resumed
    assert rest.started.started.model == MODEL
    assert rest.done is not None and rest.done.done.delta_count == len(original.deltas)
    assert rest.usage is not None and original.usage is not None
    assert rest.usage.usage.output_tokens == original.usage.usage.output_tokens
    everything = await resume(client, message_id, after=len(original.deltas))
    assert everything.kinds == ["started", "usage", "done"]
    assert await rig.request_count() == before  # no generation


async def test_resume_of_a_cancelled_answer_returns_the_stored_part(rig: Rig) -> None:
    client = await rig.client()
    before = await rig.request_count()
    # Without `resumable`, losing the stream stops the generation, as it always has.
    lost = await first_deltas(chat(client, "a long answer please", resumable=False), 3)
    assert lost.started is not None
    started = lost.started.started
    stored = await stored_answer(client, started.conversation_id)
    assert stored.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED

    rest = await resume(client, started.assistant_message_id, after=0)

    assert rest.text == stored.text and rest.text.startswith(lost.text)
    assert sequences(rest) == list(range(1, len(rest.deltas) + 1))
    assert rest.done is not None
    assert rest.done.done.finish_reason == resources_pb2.FINISH_REASON_INTERRUPTED
    requests = (await rig.emulator.requests())[before:]
    assert len(requests) == 1 and requests[0]["outcome"] == "client_closed"


async def test_cancel_chat_stops_a_resumable_generation(rig: Rig) -> None:
    client = await rig.client()
    before = await rig.request_count()
    lost = await first_deltas(chat(client, "go on and on", resumable=True), 2)
    assert lost.started is not None
    started = lost.started.started

    response = await client.stub.CancelChat(
        gateway_pb2.CancelChatRequest(message_id=started.assistant_message_id),
        metadata=client.metadata,
        timeout=10,
    )

    assert response.cancelled
    requests = await poll(
        lambda: _closed(rig, before), timeout=5
    )  # the provider connection is closed
    assert requests[0]["tokens_sent"] < TOKENS
    rest = await resume(client, started.assistant_message_id, after=2)
    assert rest.done is not None
    assert rest.done.done.finish_reason == resources_pb2.FINISH_REASON_INTERRUPTED
    stored = await stored_answer(client, started.conversation_id)
    assert stored.text == lost.text + rest.text
    again = await client.stub.CancelChat(
        gateway_pb2.CancelChatRequest(message_id=started.assistant_message_id),
        metadata=client.metadata,
        timeout=10,
    )
    assert not again.cancelled


async def _closed(rig: Rig, since: int) -> list[dict[str, Any]] | None:
    requests = (await rig.emulator.requests())[since:]
    return requests if requests and requests[0]["outcome"] == "client_closed" else None


async def test_resume_refuses_what_is_not_the_callers_answer(rig: Rig) -> None:
    owner = await rig.client()
    turn = Turn()
    async for event in chat(owner, "hi", resumable=False):
        turn.add(event)
    assert turn.started is not None and turn.done is not None
    started = turn.started.started
    intruder = await rig.client()
    same_tenant_other_user = Client(
        rig.channel,
        await create_key(rig.stack, "tenant-shared", "someone-else"),
    )
    for client, message_id in [
        (intruder, started.assistant_message_id),
        (same_tenant_other_user, started.assistant_message_id),
        (owner, started.user_message_id),  # a user message has no answer to resume
        (owner, str(uuid.uuid4())),
        (owner, "not-an-id"),
        (owner, ""),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await resume(client, message_id, after=0)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, message_id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.CancelChat(
                gateway_pb2.CancelChatRequest(message_id=message_id),
                metadata=client.metadata,
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND, message_id

    for after in (-1, turn.done.done.delta_count + 1):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await resume(owner, started.assistant_message_id, after=after)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = [
            v.field
            for d in status_details(raised.value)
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        assert violations == ["after_sequence"]


class CuttableProxy:
    """A TCP forwarder to the Gateway whose connections the test can cut, as a network would."""

    def __init__(self, target: str) -> None:
        self._host, port = target.rsplit(":", 1)
        self._port = int(port)
        self._writers: list[asyncio.StreamWriter] = []
        self.address = ""
        self.connections = 0

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        self._writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


async def test_the_cli_continues_an_answer_after_its_connection_drops(rig: Rig) -> None:
    key = await create_key(rig.stack, unique("t"), "u")
    before = await rig.request_count()
    pieces: list[str] = []
    async with (
        CuttableProxy(rig.stack.info().address("gateway")) as proxy,
        grpc.aio.insecure_channel(proxy.address) as channel,
    ):
        gateway = Gateway(
            gateway_pb2_grpc.GatewayServiceStub(channel), (("authorization", f"Bearer {key}"),)
        )

        def on_delta(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 4:
                proxy.cut()  # the network drops mid-answer

        result = await stream_answer(gateway, "tell me more", "", on_delta, call_timeout=30)
        assert proxy.connections == 2  # the answer's rest came over a new connection

    assert result.finish_reason == resources_pb2.FINISH_REASON_STOP
    assert not result.interrupted and "".join(pieces) == result.text
    client = Client(rig.channel, key)
    stored = await stored_answer(client, result.conversation_id)
    assert stored.text == result.text and stored.status == resources_pb2.MESSAGE_STATUS_COMPLETE
    assert len(pieces) == result.last_sequence  # every delta once, none repeated
    assert await rig.request_count() == before + 1
