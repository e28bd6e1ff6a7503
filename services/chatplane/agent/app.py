"""Wires the Agent process: settings → message-log producer, memory client, LLM backend,
turn runner, servicer; then serves until SIGTERM."""

from __future__ import annotations

from chatplane.agent.llm.base import LlmBackend
from chatplane.agent.llm.observed import ObservedBackend
from chatplane.agent.llm.offline import OfflineResponder
from chatplane.agent.memory_client import MemoryClient
from chatplane.agent.servicer import AgentServicer
from chatplane.agent.turn import TurnRunner
from chatplane.common.metrics import TenantLabels
from chatplane.common.server import internal_channel, serve
from chatplane.common.settings import Settings
from chatplane.common.tls import load_tls
from chatplane.log.factory import open_message_log
from chatplane.v1 import agent_pb2, agent_pb2_grpc


def make_backend(settings: Settings) -> LlmBackend:
    """The configured LLM backend."""
    return OfflineResponder(
        tokens_per_second=settings.offline_tokens_per_second,
        first_token_seconds=settings.offline_first_token_seconds,
    )


async def run(settings: Settings) -> None:
    """Serve AgentService until SIGTERM, then drain."""
    tls = load_tls(settings)
    log = open_message_log(settings)
    producer = log.producer()
    memory_channel = internal_channel(settings.memory_address, tls)
    # Every provider attempt is observed (span with GenAI attributes, token metrics).
    backend = ObservedBackend(
        make_backend(settings),
        system="offline",
        tenants=TenantLabels(settings.metrics_tenant_limit),
    )
    runner = TurnRunner(
        settings=settings,
        memory=MemoryClient(memory_channel),
        backend=backend,
        producer=producer,
    )

    async def stop() -> None:
        await runner.drain()
        await backend.close()
        await producer.close()
        await memory_channel.close()

    await serve(
        name="agent",
        host=settings.host,
        port=settings.agent_port,
        service_names=[agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name],
        register=lambda server: agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(runner), server
        ),
        drain_grace_seconds=settings.drain_grace_seconds,
        on_stop=stop,
        tls=tls,
    )
