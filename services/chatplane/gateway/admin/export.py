"""AdminService.ExportUserData (docs/privacy.md, "Export"): a tenant's admin exports one user
of their own tenant as the JSON archive of chatplane.privacy.export_archive, streamed in
chunks. Audited as exactly one `user.export` record (success with the archive's size, or
failure; a caller without `admin` gets `authz.denied` instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from chatplane import audit
from chatplane.audit.outcome import audited
from chatplane.common import errors
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.settings import Settings
from chatplane.gateway.admin.caller import Context, admin_principal
from chatplane.gateway.admin.servicer import AdminServicer
from chatplane.gateway.auth import ApiKeyAuthenticator
from chatplane.internal.v1 import memory_pb2_grpc
from chatplane.persistence.client import PersistenceClient
from chatplane.privacy.export_archive import archive_chunks
from chatplane.v1 import admin_pb2, admin_resources_pb2

EXPORT_TIMEOUT_SECONDS: Final = 900.0
"""The longest one export may read for (less when the caller's deadline is sooner)."""
_MAX_USER_ID_CHARS = 256


def user_object(tenant_id: str, user_id: str) -> str:
    """The audit object naming a user."""
    return f"user/{tenant_id}/{user_id}"


class ExportingAdminServicer(AdminServicer):
    """AdminService with ExportUserData."""

    def __init__(
        self,
        *,
        settings: Settings,
        persistence: PersistenceClient,
        api_keys: ApiKeyAuthenticator,
        memory: memory_pb2_grpc.MemoryServiceAsyncStub,
    ) -> None:
        super().__init__(settings=settings, persistence=persistence, api_keys=api_keys)
        self._memory = memory

    async def ExportUserData(  # noqa: N802 (the generated servicer's name)
        self, request: admin_pb2.ExportUserDataRequest, context: Context
    ) -> AsyncIterator[admin_pb2.ExportUserDataResponse]:
        principal = admin_principal(context, "ExportUserData")
        user_id = request.user_id
        if not user_id:
            raise errors.InvalidArgument("user_id", "required")
        if len(user_id) > _MAX_USER_ID_CHARS or "\x00" in user_id:
            raise errors.InvalidArgument(
                "user_id", f"must be at most {_MAX_USER_ID_CHARS} characters, without NUL"
            )
        owner = admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=user_id)
        with audited(
            audit.USER_EXPORT,
            actor=audit.actor_of(principal),
            tenant_id=principal.tenant_id,
            object=user_object(principal.tenant_id, user_id),
            source=context.peer() or "",
        ) as note:
            size = 0
            async for chunk in archive_chunks(
                self._persistence,
                self._memory,
                owner,
                export_timeout=outbound_timeout(context, EXPORT_TIMEOUT_SECONDS),
                call_timeout=lambda: self._timeout(context),
            ):
                size += len(chunk)
                note.detail = f"bytes={size}"
                yield admin_pb2.ExportUserDataResponse(chunk=chunk)
