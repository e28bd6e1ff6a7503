"""The Gateway's identity wiring (issue 7): API keys plus, when configured, OIDC JWTs; the
audit recorder this process appends auth failures through; and AdminService."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from chatplane import audit
from chatplane.common.settings import Settings
from chatplane.gateway.admin.erasure_servicer import ErasureAdminServicer
from chatplane.gateway.admin.export import ExportingAdminServicer
from chatplane.gateway.audit_sink import PersistenceAuditSink
from chatplane.gateway.auth import ApiKeyAuthenticator
from chatplane.gateway.authentication import Authenticator
from chatplane.gateway.jwks import JwksCache
from chatplane.gateway.oidc import OidcConfig, OidcVerifier
from chatplane.gateway.registry_servicer import RegistryServicer
from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2, admin_pb2_grpc, registry_pb2_grpc

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
ADMIN_PREFIX = f"/{ADMIN_SERVICE}/"


class GatewayAdminServicer(ErasureAdminServicer, ExportingAdminServicer):
    """AdminService: keys (the base), ExportUserData, EraseUser and retention."""


@dataclass(slots=True)
class GatewayIdentity:
    """What the Gateway authenticates with and audits through."""

    authenticator: Authenticator
    admin: GatewayAdminServicer
    registry: RegistryServicer
    recorder: audit.AuditRecorder
    jwks: JwksCache | None

    @classmethod
    def open(
        cls,
        settings: Settings,
        persistence: PersistenceClient,
        api_keys: ApiKeyAuthenticator,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    ) -> GatewayIdentity:
        """Builds it from settings (OidcConfigError on incomplete OIDC settings) and starts
        the audit recorder, installed as this process's."""
        config = OidcConfig.from_settings(settings)
        jwks = oidc = None
        if config is not None:
            jwks = JwksCache(
                config.jwks_url,
                cache_seconds=settings.oidc_jwks_cache_seconds,
                min_refresh_seconds=settings.oidc_jwks_min_refresh_seconds,
                timeout_seconds=settings.oidc_jwks_timeout_seconds,
            )
            oidc = OidcVerifier(config, jwks)
        recorder = audit.AuditRecorder(
            PersistenceAuditSink(persistence, timeout=settings.internal_call_timeout_seconds),
            max_batch=settings.audit_batch_max_records,
            flush_seconds=settings.audit_flush_seconds,
            max_pending=max(settings.audit_max_pending, settings.audit_batch_max_records),
        )
        recorder.start()
        audit.install(recorder)
        return cls(
            authenticator=Authenticator(api_keys, oidc),
            # AdminService with ExportUserData, erasure and retention (docs/privacy.md).
            admin=GatewayAdminServicer(
                settings=settings, persistence=persistence, api_keys=api_keys, memory=memory
            ),
            registry=RegistryServicer(settings=settings, persistence=persistence),
            recorder=recorder,
            jwks=jwks,
        )

    def register(self, server: grpc.aio.Server) -> None:
        """Adds AdminService to the server."""
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self.admin, server)
        # The variant registry (docs/registry.md).
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(self.registry, server)

    async def close(self) -> None:
        """Appends the audit events still queued, then releases the JWKS client."""
        await self.recorder.stop()
        audit.install(None)
        if self.jwks is not None:
            await self.jwks.close()
