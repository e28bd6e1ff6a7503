"""Per-tenant daily token quotas through the real stack with TWO Gateway processes on one
system of record (docs/quotas.md): turns are settled from the `usage` event, the quota is
shared by both Gateways (concurrent turns on both never reserve more than it), a spent quota
is RESOURCE_EXHAUSTED with a QuotaFailure and a RetryInfo until the next UTC midnight, and
`chatplane quota set|show` manage it."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from chatplane.common.tls import client_channel
from chatplane.internal.v1 import quota_pb2, turn_pb2
from chatplane.launcher.stack import ServiceProcess, Stack
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, gateway_pb2
from tests.integration.stack_client import (
    Client,
    create_key,
    poll,
    running_stack,
    store_dsn,
    unique,
)

# Every turn reserves this much, so the test knows what concurrent turns hold.
RESERVE = 100
ENV = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": "40",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": "0.3",
    "CHATPLANE_QUOTA_RESERVE_TOKENS": str(RESERVE),
}
_SCRIPT = Path(sys.executable).parent / "chatplane"

pytestmark = pytest.mark.asyncio(loop_scope="module")


class TwoGateways:
    """A stack plus a second Gateway process on the same Agent and Persistence."""

    def __init__(self, stack: Stack, second: ServiceProcess) -> None:
        self.stack = stack
        self.second = second

    def channels(self) -> tuple[grpc.aio.Channel, grpc.aio.Channel]:
        info = self.stack.info()
        return (
            client_channel(info.address("gateway"), None),
            client_channel(f"{info.host}:{self.second.port}", None),
        )


@pytest_asyncio.fixture(name="gateways", loop_scope="module", scope="module")
async def gateways_fixture(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TwoGateways]:
    data_dir = tmp_path_factory.mktemp("quota-stack")
    async with running_stack(data_dir, ENV) as stack:
        env = {
            **os.environ,
            "CHATPLANE_LLM_BACKEND": "offline",
            **ENV,
            "CHATPLANE_DATA_DIR": str(stack.data_dir),
            "CHATPLANE_HOST": stack.host,
            # The second Gateway shares the stack's own PostgreSQL.
            "CHATPLANE_POSTGRES_DSN": store_dsn(stack.data_dir),
        }
        args = ["--gateway-port", "0"]
        for name in ("agent", "memory", "persistence"):
            args += [f"--{name}-address", stack.info().address(name)]
        second = await ServiceProcess.start(
            "gateway", args, env, stack.data_dir / "logs" / "gateway-2.log"
        )
        try:
            yield TwoGateways(stack, second)
        finally:
            await second.stop(timeout=10)


async def set_quota(stack: Stack, tenant: str, tokens: int) -> quota_pb2.TokenQuota:
    async with stack.channel("persistence") as channel:
        response = await PersistenceClient(channel).quota.SetQuota(
            quota_pb2.SetQuotaRequest(tenant_id=tenant, tokens_per_day=tokens), timeout=10
        )
    return response.quota


async def get_quota(stack: Stack, tenant: str) -> quota_pb2.TokenQuota:
    async with stack.channel("persistence") as channel:
        response = await PersistenceClient(channel).quota.GetQuota(
            quota_pb2.GetQuotaRequest(tenant_id=tenant), timeout=10
        )
    return response.quota


def quota_details(
    error: grpc.aio.AioRpcError,
) -> tuple[error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo]:
    raw = [v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw[0])  # type: ignore[arg-type]
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(failure) for d in status.details)
    assert any(d.Unpack(retry) for d in status.details)
    return failure, retry


def unique_id() -> str:
    return str(uuid.uuid4())


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


async def settled(stack: Stack, tenant: str) -> quota_pb2.TokenQuota:
    """The tenant's quota once no reservation is outstanding (settling is asynchronous)."""

    async def check() -> quota_pb2.TokenQuota | None:
        quota = await get_quota(stack, tenant)
        return quota if quota.reserved_tokens == 0 else None

    result: quota_pb2.TokenQuota = await poll(check)
    return result


async def test_usage_settles_and_a_spent_quota_is_refused_on_both_gateways(
    gateways: TwoGateways,
) -> None:
    stack = gateways.stack
    tenant = unique("quota")
    first_channel, second_channel = gateways.channels()
    async with first_channel, second_channel:
        first = Client(first_channel, await create_key(stack, tenant, "alice"))
        second = Client(second_channel, await create_key(stack, tenant, "bob"))
        await set_quota(stack, tenant, 1_000_000)

        turn = await first.chat("How do token quotas work?")
        assert turn.usage is not None
        usage = turn.usage.usage
        expected = usage.input_tokens + usage.output_tokens
        assert expected > 0
        quota = await settled(stack, tenant)
        assert quota.used_tokens == expected  # the usage event's numbers, not the estimate

        # Lower the quota to just above today's use: the next turn may run (something is
        # left), uses more than what was left, and is charged in full.
        await set_quota(stack, tenant, expected + 1)
        turn = await second.chat("And after that?")
        assert turn.done is not None
        quota = await settled(stack, tenant)
        assert quota.used_tokens > quota.tokens_per_day

        for client in (first, second):  # the other Gateway knows, too: nothing is in memory
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.chat("One more?")
            error = caught.value
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            reset = quota.reset_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
            assert reset in (error.details() or "")
            failure, retry = quota_details(error)
            assert failure.violations[0].subject == f"tenant:{tenant}"
            assert reset in failure.violations[0].description
            delay = retry.retry_delay.ToNanoseconds() / 1e9
            assert abs(delay - seconds_to_utc_midnight()) < 30

        # Other tenants are not affected; raising the quota lets the tenant chat again.
        other = Client(first_channel, await create_key(stack, unique("quota"), "carol"))
        assert (await other.chat("Still here?")).done is not None
        await set_quota(stack, tenant, 0)
        assert (await first.chat("Unlimited now?")).done is not None


async def test_concurrent_turns_on_two_gateways_share_one_quota(gateways: TwoGateways) -> None:
    stack = gateways.stack
    tenant = unique("quota")
    first_channel, second_channel = gateways.channels()
    async with first_channel, second_channel:
        clients = [
            Client(channel, await create_key(stack, tenant, f"user-{i}"))
            for i, channel in enumerate((first_channel, second_channel) * 5)
        ]
        # Room for exactly three reservations of RESERVE tokens while the turns overlap.
        await set_quota(stack, tenant, 3 * RESERVE)

        async def attempt(client: Client) -> str:
            try:
                turn = await client.chat("Tell me a long story about quotas, please.")
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return "done" if turn.done is not None else "incomplete"

        outcomes = await asyncio.gather(*(attempt(c) for c in clients))
    assert sorted(outcomes) == ["RESOURCE_EXHAUSTED"] * 7 + ["done"] * 3


async def run_cli(data_dir: Path, *args: str) -> tuple[int, str]:
    """`chatplane --data-dir DATA_DIR quota ARGS`: its exit code and its output."""
    command = (
        [str(_SCRIPT)]
        if _SCRIPT.exists()
        else [sys.executable, "-c", "from chatplane.cli.main import main; main()"]
    )
    process = await asyncio.create_subprocess_exec(
        *command,
        "--data-dir",
        str(data_dir),
        "quota",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_cli_sets_and_shows_a_quota(gateways: TwoGateways) -> None:
    tenant = unique("quota")
    data_dir = gateways.stack.data_dir
    code, output = await run_cli(data_dir, "show", "--tenant", tenant)
    assert code == 0, output
    assert "unlimited" in output
    code, output = await run_cli(data_dir, "set", "--tenant", tenant, "--tokens-per-day", "5000")
    assert code == 0, output
    assert "tokens per day:  5000" in output
    assert "left today:      5000" in output
    assert "(UTC midnight)" in output
    code, output = await run_cli(data_dir, "set", "--tenant", tenant, "--tokens-per-day", "-1")
    assert code != 0


async def test_a_refused_turn_of_a_continuing_conversation_is_released_and_leaves_nothing(
    gateways: TwoGateways,
) -> None:
    """A continuing conversation's turn reserves its tokens in its BeginTurn call while its
    handoff state is read (docs/chain-latency.md): a refused turn holds no lease, so the same
    request runs as soon as there is quota again, and nothing of the refused attempt is
    stored."""
    stack = gateways.stack
    tenant = unique("quota")
    channel, other = gateways.channels()
    async with channel, other:
        client = Client(channel, await create_key(stack, tenant, "dana"))
        await set_quota(stack, tenant, 1_000_000)
        first = await client.chat("Start a conversation.")
        assert first.started is not None
        conversation = first.started.started.conversation_id
        await settled(stack, tenant)
        await set_quota(stack, tenant, 1)  # spent

        key = unique("retry")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.chat("Continue it.", conversation, key)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

        await set_quota(stack, tenant, 0)  # unlimited again
        # Released, not waiting for the refused attempt's lease (minutes) to run out.
        async with asyncio.timeout(20):
            retried = await client.chat("Continue it.", conversation, key)
        assert retried.done is not None
        assert retried.started is not None and not retried.started.started.replayed

        async def stored() -> gateway_pb2.GetConversationResponse | None:
            history = await client.stub.GetConversation(
                gateway_pb2.GetConversationRequest(conversation_id=conversation, page_size=50),
                metadata=client.metadata,
                timeout=10,
            )
            return history if len(history.messages) >= 4 else None

        history = await poll(stored)
        texts = [m.text for m in history.messages]
        assert len(texts) == 4
        assert texts[::2] == ["Start a conversation.", "Continue it."]


async def test_a_refused_first_turn_creates_no_conversation(gateways: TwoGateways) -> None:
    stack = gateways.stack
    tenant = unique("quota")
    channel, other = gateways.channels()
    async with channel, other:
        client = Client(channel, await create_key(stack, tenant, "erin"))
        await set_quota(stack, tenant, 1_000_000)
        await client.chat("Hello there.")
        await settled(stack, tenant)
        await set_quota(stack, tenant, 1)  # spent
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.chat("A new conversation?")
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        listed = await client.stub.ListConversations(
            gateway_pb2.ListConversationsRequest(page_size=10),
            metadata=client.metadata,
            timeout=10,
        )
        assert len(listed.conversations) == 1


async def test_begin_turn_reserves_first_in_the_same_call(gateways: TwoGateways) -> None:
    """BeginTurnRequest.reserve_quota: refused, nothing is begun; granted, the turn is begun
    and holds the reservation; a turn that fails to begin gives its reservation back."""
    stack = gateways.stack
    tenant = unique("quota")
    owner = admin_resources_pb2.Owner(tenant_id=tenant, user_id="frank")

    def begin(conversation_id: str = "", tenant_id: str = tenant) -> turn_pb2.BeginTurnRequest:
        return turn_pb2.BeginTurnRequest(
            owner=owner,
            conversation_id=conversation_id,
            user_message_id=unique_id(),
            assistant_message_id=unique_id(),
            title="t",
            reserve_quota=quota_pb2.ReserveQuotaRequest(
                tenant_id=tenant_id, reservation_id=unique_id(), tokens=RESERVE, lease_ms=60_000
            ),
        )

    async with stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        await set_quota(stack, tenant, RESERVE)
        granted = await stub.turns.BeginTurn(begin(), timeout=10)
        assert granted.owner and granted.conversation_id
        assert granted.quota.granted and granted.quota.reserved_tokens == RESERVE
        assert (await get_quota(stack, tenant)).reserved_tokens == RESERVE

        refused = await stub.turns.BeginTurn(begin(), timeout=10)  # nothing left
        assert not refused.quota.granted and not refused.owner and not refused.conversation_id

        await set_quota(stack, tenant, 10 * RESERVE)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.turns.BeginTurn(begin(conversation_id=unique_id()), timeout=10)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert (await get_quota(stack, tenant)).reserved_tokens == RESERVE  # given back

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.turns.BeginTurn(begin(tenant_id=unique("other")), timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
