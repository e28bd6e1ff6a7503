"""Human handoff in the cluster profile (docs/handoff.md): the session's Kafka, PostgreSQL
and OpenSearch, two Gateway replicas. The user watches on one replica while the request,
the operator's reply and the release go through the other: the handoff topic on Kafka is
what carries them across, and the reply is stored in PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from chatplane.launcher import Stack
from chatplane.launcher.stack import ServiceProcess
from chatplane.v1 import gateway_pb2, operator_pb2, operator_pb2_grpc, resources_pb2
from tests.engine_processes import Engines
from tests.integration.stack_client import Client, create_key, poll, running_stack, unique
from tests.integration.test_handoff import (
    BOT,
    HUMAN,
    Watch,
    _rebound,
    answered,
    handed_off,
    history,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster_stack(
    engines: Engines, module_postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, dict[str, str]]]:
    env = {
        **engines.env,
        "CHATPLANE_PROFILE": "cluster",
        "CHATPLANE_POSTGRES_DSN": module_postgres_database,
        "CHATPLANE_OPENSEARCH_INDEX": f"handoff-{uuid.uuid4().hex[:8]}",
    }
    async with running_stack(tmp_path_factory.mktemp("handoff-cluster"), env) as stack:
        yield stack, env


async def test_handoff_across_replicas_on_kafka(
    cluster_stack: tuple[Stack, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack, stack_env = cluster_stack
    info = stack.info()
    args = ["--gateway-port", "0"]
    for dependency in ("agent", "memory", "persistence"):
        args += [f"--{dependency}-address", info.address(dependency)]
    env = {
        **os.environ,
        "CHATPLANE_LLM_BACKEND": "offline",
        **stack_env,
        "CHATPLANE_DATA_DIR": str(stack.data_dir),
        "CHATPLANE_HOST": info.host,
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("replica") / "gateway-2.log"
    replica = await ServiceProcess.start("gateway", args, env, log)
    try:
        async with (
            grpc.aio.insecure_channel(info.address("gateway")) as first,
            grpc.aio.insecure_channel(f"{info.host}:{replica.port}") as second,
        ):
            tenant = unique("t")
            user = Client(first, await create_key(stack, tenant, "u"))
            operator_key = await create_key(stack, tenant, "op", ("operator",))
            operator = operator_pb2_grpc.OperatorServiceStub(first)
            metadata = (("authorization", f"Bearer {operator_key}"),)
            conversation_id = await answered(user, "Hello")
            watch = Watch(_rebound(user, second), conversation_id)
            try:
                assert (await watch.next()).handoff.mode == BOT
                await user.stub.RequestHandoff(
                    gateway_pb2.RequestHandoffRequest(conversation_id=conversation_id),
                    metadata=user.metadata,
                )
                assert (await watch.next()).handoff.mode == HUMAN
                await handed_off(user, "Anyone?", conversation_id)
                posted = await operator.PostReply(
                    operator_pb2.PostReplyRequest(conversation_id=conversation_id, text="Yes!"),
                    metadata=metadata,
                )
                reply = await watch.next()
                assert reply.operator_reply.message_id == posted.message.message_id

                async def stored() -> bool:
                    messages = await history(user, conversation_id)
                    return [m.text for m in messages if m.role == resources_pb2.ROLE_OPERATOR] == [
                        "Yes!"
                    ] and "Anyone?" in [m.text for m in messages]

                await poll(stored, timeout=20)
                await operator.ReleaseConversation(
                    operator_pb2.ReleaseConversationRequest(conversation_id=conversation_id),
                    metadata=metadata,
                )
                assert (await watch.next()).handoff.mode == BOT
                await answered(user, "Back to the bot", conversation_id)
            finally:
                await watch.close()
    finally:
        await replica.stop(timeout=10)
