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
from chatplane.gateway.auth import ApiKeyAuthenticator
from chatplane.gateway.chat import ChatRelay
from chatplane.gateway.identity import ADMIN_PREFIX, ADMIN_SERVICE, GatewayIdentity
from chatplane.gateway.metrics import REJECTIONS
from chatplane.gateway.rate_limit import RateLimiter
from chatplane.gateway.resume import AnswerResume
from chatplane.gateway.servicer import GatewayServicer
from chatplane.gateway.token_quota import TokenQuotaGate
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, memory_pb2_grpc, persistence_pb2_grpc

GATEWAY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


async def run(settings: Settings) -> None:
    """Serve GatewayService until SIGTERM, then drain."""
    tls = load_tls(settings)
    agent_channel = internal_channel(settings.agent_address, tls)
    persistence_channel = internal_channel(settings.persistence_address, tls)
    memory_channel = internal_channel(settings.memory_address, tls)
    persistence = persistence_pb2_grpc.PersistenceServiceStub(persistence_channel)
    api_keys = ApiKeyAuthenticator(
        persistence,
        cache_seconds=settings.api_key_cache_seconds,
        call_timeout=settings.internal_call_timeout_seconds,
    )
    identity = GatewayIdentity.open(settings, persistence, api_keys)
    authenticator = identity.authenticator
    limiter = RateLimiter(
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
    )
    public_prefix = f"/{GATEWAY_SERVICE}/"

    async def admit(method: str, context: Context) -> None:
        if not method.startswith((public_prefix, ADMIN_PREFIX)):
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
    servicer = GatewayServicer(
        settings=settings,
        relay=ChatRelay(
            settings=settings,
            persistence=persistence,
            agent_channel=agent_channel,
            quota=quota,
        ),
        persistence=persistence,
        memory=memory_pb2_grpc.MemoryServiceStub(memory_channel),
        resume=AnswerResume(
            settings=settings, persistence=persistence, agent_channel=agent_channel
        ),
    )

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        identity.register(server)

    async def stop() -> None:
        await quota.drain()
        await identity.close()
        await agent_channel.close()
        await persistence_channel.close()
        await memory_channel.close()

    await serve(
        name="gateway",
        host=settings.host,
        port=settings.gateway_port,
        service_names=[GATEWAY_SERVICE, ADMIN_SERVICE],
        register=register,
        drain_grace_seconds=settings.drain_grace_seconds,
        on_stop=stop,
        check=admit,
        tls=tls,
    )
