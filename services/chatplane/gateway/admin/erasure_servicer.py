"""AdminService's erasure and retention RPCs (docs/privacy.md) for a principal with the
`admin` role, on the caller's own tenant, through Persistence (which runs the erasure
job and audits it once it finishes)."""

from __future__ import annotations

from typing import Final

from chatplane.common import errors
from chatplane.common.deadlines import outbound_timeout
from chatplane.gateway.admin.caller import Context, admin_principal, audit_actor
from chatplane.gateway.admin.servicer import AdminServicer
from chatplane.internal.v1 import privacy_pb2
from chatplane.v1 import admin_pb2, admin_resources_pb2

ERASURE_TIMEOUT_SECONDS: Final = 120.0
"""At most how long EraseUser waits for the job (it goes on, and resumes, if cut short)."""

_MAX_USER_CHARS: Final = 256
MAX_RETENTION_DAYS: Final = 36_500


class ErasureAdminServicer(AdminServicer):
    """AdminServicer with EraseUser, SetRetention and GetRetention."""

    async def EraseUser(
        self, request: admin_pb2.EraseUserRequest, context: Context
    ) -> admin_pb2.EraseUserResponse:
        principal = admin_principal(context, "EraseUser")
        user_id = request.user_id
        if not user_id or len(user_id) > _MAX_USER_CHARS or "\x00" in user_id:
            raise errors.InvalidArgument("user_id", "required, 1-256 characters, without NUL")
        response = await self._persistence.privacy.EraseUser(
            privacy_pb2.EraseUserRequest(
                owner=admin_resources_pb2.Owner(tenant_id=principal.tenant_id, user_id=user_id),
                actor=audit_actor(principal, context),
            ),
            timeout=outbound_timeout(context, ERASURE_TIMEOUT_SECONDS),
        )
        return admin_pb2.EraseUserResponse(receipt=response.receipt)

    async def SetRetention(
        self, request: admin_pb2.SetRetentionRequest, context: Context
    ) -> admin_pb2.SetRetentionResponse:
        principal = admin_principal(context, "SetRetention")
        if not 0 <= request.days <= MAX_RETENTION_DAYS:
            raise errors.InvalidArgument(
                "days", f"must be between 0 (keep forever) and {MAX_RETENTION_DAYS}"
            )
        response = await self._persistence.privacy.SetRetention(
            privacy_pb2.SetRetentionRequest(tenant_id=principal.tenant_id, days=request.days),
            timeout=outbound_timeout(context, self._settings.internal_call_timeout_seconds),
        )
        return admin_pb2.SetRetentionResponse(policy=response.policy)

    async def GetRetention(
        self, request: admin_pb2.GetRetentionRequest, context: Context
    ) -> admin_pb2.GetRetentionResponse:
        principal = admin_principal(context, "GetRetention")
        response = await self._persistence.privacy.GetRetention(
            privacy_pb2.GetRetentionRequest(tenant_id=principal.tenant_id),
            timeout=outbound_timeout(context, self._settings.internal_call_timeout_seconds),
        )
        return admin_pb2.GetRetentionResponse(policy=response.policy)
