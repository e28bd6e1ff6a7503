"""Turn lifecycle on the real processes: a client cancel stops the generation and keeps the
partial answer once; SIGTERM drains in-flight streams; a persistence crash loses nothing that
was acknowledged."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from chatplane.v1 import gateway_pb2, resources_pb2
from tests.integration.stack_client import (
    FAST_PACE,
    SLOW_PACE,
    Client,
    Turn,
    create_key,
    poll,
    running_stack,
)

TOKENS_PER_SECOND = float(SLOW_PACE["CHATPLANE_OFFLINE_TOKENS_PER_SECOND"])


async def history(client: Client, conversation_id: str) -> gateway_pb2.GetConversationResponse:
    return await client.stub.GetConversation(
        gateway_pb2.GetConversationRequest(conversation_id=conversation_id),
        metadata=client.metadata,
    )


async def test_client_cancel_stops_generation_and_keeps_the_partial_answer_once(
    tmp_path: Path,
) -> None:
    async with (
        running_stack(tmp_path, SLOW_PACE) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        call = client.chat_call("Tell me a long story about the sea")
        turn = Turn()
        async for event in call:
            turn.add(event)
            if len(turn.deltas) == 3:
                break
        call.cancel()
        cancelled_at = asyncio.get_running_loop().time()
        assert turn.started is not None
        started = turn.started.started

        async def interrupted_answer() -> resources_pb2.Message | None:
            messages = (await history(client, started.conversation_id)).messages
            answers = [m for m in messages if m.role == resources_pb2.ROLE_ASSISTANT]
            return answers[0] if answers else None

        stored = await poll(interrupted_answer, timeout=5)
        stored_after = asyncio.get_running_loop().time() - cancelled_at
        assert stored.message_id == started.assistant_message_id
        assert stored.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED
        assert stored.finish_reason == resources_pb2.FINISH_REASON_INTERRUPTED
        assert stored.text.startswith(turn.text)
        # The generation stopped within a second of the cancel: at most a second's worth
        # of tokens (plus the ones in flight) beyond what the client had received.
        extra_words = len(stored.text.split()) - len(turn.text.split())
        assert 0 <= extra_words <= TOKENS_PER_SECOND + 2
        assert stored_after < 3.0
        # Exactly once: the user message and one interrupted answer, even after waiting.
        await asyncio.sleep(0.5)  # give a (wrong) second write the chance to show up
        messages = (await history(client, started.conversation_id)).messages
        assert [m.role for m in messages] == [
            resources_pb2.ROLE_USER,
            resources_pb2.ROLE_ASSISTANT,
        ]


async def test_sigterm_drains_in_flight_streams(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, SLOW_PACE) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        call = client.chat_call("Explain how tides work")
        turn = Turn()
        async for event in call:
            turn.add(event)
            if turn.deltas:
                break
        # Stop the whole chain the way an orchestrator would, front to back.
        for name in ("gateway", "agent"):
            stack.services[name].process.send_signal(signal.SIGTERM)
        async for event in call:
            turn.add(event)
        assert turn.done is not None
        assert turn.done.done.finish_reason == resources_pb2.FINISH_REASON_STOP
        sequences = [d.delta.sequence for d in turn.deltas]
        assert sequences == list(range(1, len(sequences) + 1))
        assert await stack.services["gateway"].process.wait() == 0
        assert await stack.services["agent"].process.wait() == 0
        # Once drained, new calls are refused.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.chat("anyone there?")
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_persistence_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path, FAST_PACE | {"CHATPLANE_RATE_LIMIT_BURST": "1000"}) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        acknowledged: list[gateway_pb2.ChatResponse] = []
        failures: list[grpc.StatusCode] = []

        async def one_turn(index: int) -> None:
            try:
                turn = await client.chat(f"message number {index}")
            except grpc.aio.AioRpcError as error:
                failures.append(error.code())
                return
            assert turn.done is not None and turn.started is not None
            acknowledged.append(turn.started)

        async def traffic(start: int, count: int) -> None:
            await asyncio.gather(*(one_turn(i) for i in range(start, start + count)))

        first_wave = asyncio.ensure_future(traffic(0, 60))
        await poll(lambda: _truthy(len(acknowledged) >= 10), timeout=30, interval=0.01)
        stack.services["persistence"].kill()
        await stack.services["persistence"].process.wait()
        await first_wave
        await stack.start_service("persistence")
        await traffic(100, 20)

        assert len(acknowledged) >= 30
        # Turns that started while persistence was down failed cleanly, nothing else.
        assert set(failures) <= {grpc.StatusCode.UNAVAILABLE}

        async def all_stored() -> bool:
            for event in acknowledged:
                try:
                    messages = (await history(client, event.started.conversation_id)).messages
                except grpc.aio.AioRpcError as error:
                    assert error.code() is grpc.StatusCode.UNAVAILABLE  # still reconnecting
                    return False
                if len(messages) != 2:
                    return False
            return True

        await poll(all_stored, timeout=20)
        for event in acknowledged:
            messages = (await history(client, event.started.conversation_id)).messages
            assert [m.message_id for m in messages] == [
                event.started.user_message_id,
                event.started.assistant_message_id,
            ]


async def _truthy(value: bool) -> bool:
    return value


async def test_agent_crash_mid_turn_is_unavailable_and_a_retry_runs_the_turn_again(
    tmp_path: Path,
) -> None:
    async with (
        running_stack(tmp_path, SLOW_PACE) as stack,
        grpc.aio.insecure_channel(stack.info().address("gateway")) as channel,
    ):
        client = Client(channel, await create_key(stack, "t", "u"))
        call = client.chat_call("What is a lighthouse?", client_message_id="retry-me")
        first = Turn()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for event in call:
                first.add(event)
                if len(first.deltas) == 2:
                    stack.services["agent"].kill()
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert first.started is not None and first.done is None
        await stack.services["agent"].process.wait()
        await stack.start_service("agent")

        # The failed turn's lease was released: the retry generates at once (it does not
        # wait for the lease to run out, nor replay an answer that was never stored).
        loop = asyncio.get_running_loop()
        started_at = loop.time()

        async def retry() -> Turn | None:
            try:
                return await client.chat("What is a lighthouse?", client_message_id="retry-me")
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.UNAVAILABLE  # gateway reconnecting
                return None

        second = await poll(retry, timeout=30)
        assert second.started is not None and second.done is not None
        assert not second.started.started.replayed
        assert second.started.started.assistant_message_id == (
            first.started.started.assistant_message_id
        )
        assert loop.time() - started_at < 20  # far below the 300 s lease

        async def stored() -> list[resources_pb2.Message]:
            # History is eventually consistent with `done` (the Persistence batch window).
            return list((await history(client, first.started.started.conversation_id)).messages)

        messages = await poll(stored, timeout=5)
        assert [m.role for m in messages] == [resources_pb2.ROLE_USER, resources_pb2.ROLE_ASSISTANT]
        assert messages[1].status == resources_pb2.MESSAGE_STATUS_COMPLETE
