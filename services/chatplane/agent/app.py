"""Wires the Agent process: settings → message-log producer, memory client, recent turns
(Persistence), LLM backend, turn runner, servicer; then serves until SIGTERM."""

from __future__ import annotations

from chatplane.agent.live_turns import LiveTurns
from chatplane.agent.llm.factory import build_model_chain
from chatplane.agent.memory_client import MemoryClient
from chatplane.agent.recent_turns import RecentTurns
from chatplane.agent.servicer import AgentServicer
from chatplane.agent.turn import TurnRunner
from chatplane.agent.variants.process import registry_source, variant_router
from chatplane.common.server import internal_channel, serve
from chatplane.common.settings import Settings
from chatplane.common.tls import load_tls
from chatplane.crypto.factory import rpc_keyring
from chatplane.internal.v1 import agent_pb2, agent_pb2_grpc
from chatplane.log.factory import open_message_log
from chatplane.persistence.client import PersistenceClient


async def run(settings: Settings) -> None:
    """Serve AgentService until SIGTERM, then drain."""
    tls = load_tls(settings)
    log = open_message_log(settings)
    producer = log.producer()
    memory_channel = internal_channel(settings.memory_address, tls)
    # Encryption at rest: the users' data keys come from Persistence (docs/security.md).
    persistence_channel = internal_channel(settings.persistence_address, tls)
    keyring = rpc_keyring(settings, PersistenceClient(persistence_channel))
    backend = build_model_chain(settings)
    # The variant registry (docs/registry.md), polled through Persistence (the same
    # channel as the keyring's).
    registry = registry_source(settings, persistence_channel)
    variants = variant_router(settings, backend, registry)
    registry.validate = variants.prepare
    await registry.start()
    runner = TurnRunner(
        settings=settings,
        memory=MemoryClient(memory_channel),
        backend=backend,
        producer=producer,
        # The recent turns of each prompt, from the system of record (read-your-writes).
        recent=RecentTurns(PersistenceClient(persistence_channel)),
        variants=variants,
        pinned_variants=registry.pinned,
        keyring=keyring,
    )

    live_turns = LiveTurns(
        linger_seconds=settings.resume_linger_seconds,
        max_finished=settings.resume_max_finished_turns,
        turn_timeout_seconds=settings.turn_timeout_seconds,
    )

    async def stop() -> None:
        await live_turns.stop()
        await runner.drain()
        await registry.close()
        await variants.close()
        await producer.close()
        await memory_channel.close()
        await persistence_channel.close()

    await serve(
        name="agent",
        host=settings.host,
        port=settings.agent_port,
        service_names=[agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name],
        register=lambda server: agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(runner, live_turns), server
        ),
        drain_grace_seconds=settings.drain_grace_seconds,
        on_stop=stop,
        tls=tls,
        # Which model answers, and what it falls back to.
        ready_details={
            "model": backend.model,
            "fallbacks": backend.models[1:],
            # A/B variants and the model each starts with (docs/variants.md).
            "variants": variants.models,
        },
    )
