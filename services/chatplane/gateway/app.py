"""Wires the Gateway process: settings → channels to Agent and Persistence, authentication and
rate limit (checked before every public call), chat relay, servicer."""

from __future__ import annotations

import grpc

from chatplane.common import errors
from chatplane.common.context import principal_var
from chatplane.common.interceptors import Context
from chatplane.common.server import internal_channel, serve
from chatplane.common.settings import Settings
from chatplane.common.tls import load_tls
from chatplane.common.topics import HANDOFF_TOPIC
from chatplane.crypto.factory import rpc_keyring
from chatplane.gateway.auth import ApiKeyAuthenticator
from chatplane.gateway.chat import ChatRelay
from chatplane.gateway.handoff import HandoffDesk
from chatplane.gateway.handoff_fanout import HandoffFanout
from chatplane.gateway.handoff_rules import HandoffRules
from chatplane.gateway.handoff_servicer import HandoffGatewayServicer
from chatplane.gateway.identity import ADMIN_PREFIX, ADMIN_SERVICE, GatewayIdentity
from chatplane.gateway.metrics import REJECTIONS
from chatplane.gateway.operator_servicer import OperatorServicer
from chatplane.gateway.rate_limit import RateLimiter
from chatplane.gateway.registry_servicer import REGISTRY_SERVICE
from chatplane.gateway.resume import AnswerResume
from chatplane.gateway.token_quota import TokenQuotaGate
from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.log.factory import open_message_log
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, operator_pb2, operator_pb2_grpc

GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name


async def run(settings: Settings) -> None:
    """Serve GatewayService until SIGTERM, then drain."""
    tls = load_tls(settings)
    agent_channel = internal_channel(settings.agent_address, tls)
    persistence_channel = internal_channel(settings.persistence_address, tls)
    memory_channel = internal_channel(settings.memory_address, tls)
    persistence = PersistenceClient(persistence_channel)
    api_keys = ApiKeyAuthenticator(
        persistence,
        cache_seconds=settings.api_key_cache_seconds,
        call_timeout=settings.internal_call_timeout_seconds,
    )
    identity = GatewayIdentity.open(
        settings, persistence, api_keys, memory_pb2_grpc.MemoryServiceStub(memory_channel)
    )
    authenticator = identity.authenticator
    limiter = RateLimiter(
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
    )
    public_prefixes = (f"/{GATEWAY_SERVICE}/", f"/{OPERATOR_SERVICE}/")

    async def admit(method: str, context: Context) -> None:
        if not method.startswith((*public_prefixes, ADMIN_PREFIX, f"/{REGISTRY_SERVICE}/")):
            return  # health and reflection are open
        principal = await authenticator.authenticate(context)
        principal_var.set(principal)
        try:
            limiter.acquire(principal.tenant_id, principal.user_id)
        except errors.ResourceExhausted:
            REJECTIONS.labels("rate_limit").inc()
            raise

    quota = TokenQuotaGate(
        persistence,
        reserve_tokens=settings.quota_reserve_tokens,
        max_output_tokens=settings.llm_max_tokens,
        turn_timeout_seconds=settings.turn_timeout_seconds,
        call_timeout_seconds=settings.internal_call_timeout_seconds,
    )
    # Human handoff (docs/handoff.md): its events go to the log, and this replica tails them.
    log = open_message_log(settings)
    handoff_producer = log.producer()
    # Encryption at rest: the users' data keys come from Persistence (docs/security.md).
    keyring = rpc_keyring(settings, persistence)
    fanout = HandoffFanout(log.tail([HANDOFF_TOPIC]), keyring)
    await fanout.start()
    desk = HandoffDesk(
        settings=settings,
        persistence=persistence,
        producer=handoff_producer,
        rules=HandoffRules.from_settings(settings),
        keyring=keyring,
    )
    servicer = HandoffGatewayServicer(
        settings=settings,
        relay=ChatRelay(
            settings=settings,
            persistence=persistence,
            agent_channel=agent_channel,
            quota=quota,
            handoff=desk,
        ),
        persistence=persistence,
        memory=memory_pb2_grpc.MemoryServiceStub(memory_channel),
        desk=desk,
        fanout=fanout,
        resume=AnswerResume(
            settings=settings, persistence=persistence, agent_channel=agent_channel
        ),
    )
    operator_servicer = OperatorServicer(settings=settings, desk=desk, persistence=persistence)

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(operator_servicer, server)
        identity.register(server)

    async def stop() -> None:
        await quota.drain()
        await identity.close()
        await fanout.stop()
        await handoff_producer.close()
        await agent_channel.close()
        await persistence_channel.close()
        await memory_channel.close()

    await serve(
        name="gateway",
        host=settings.host,
        port=settings.gateway_port,
        service_names=[GATEWAY_SERVICE, OPERATOR_SERVICE, ADMIN_SERVICE, REGISTRY_SERVICE],
        register=register,
        on_drain=fanout.end_watches,
        drain_grace_seconds=settings.drain_grace_seconds,
        on_stop=stop,
        check=admit,
        # The public API answers U+0000 itself: in an id NOT_FOUND (names nothing), in text
        # INVALID_ARGUMENT (docs/api.md).
        refuse_nul=False,
        tls=tls,
    )
