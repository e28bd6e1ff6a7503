"""AdminService servicer: API keys of the caller's own tenant (list, create, rotate, revoke)
for a principal with the `admin` role, through Persistence. Key changes are audited by
Persistence in the change's own transaction; refused attempts are audited here."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

import grpc

from chatplane import audit
from chatplane.common import errors
from chatplane.common.context import Principal
from chatplane.common.deadlines import outbound_timeout
from chatplane.common.ids import is_valid_id
from chatplane.common.roles import parse_roles
from chatplane.common.settings import Settings
from chatplane.gateway.admin.caller import Context, admin_principal, audit_actor
from chatplane.gateway.admin.rated_answers import rated_answers_page
from chatplane.gateway.auth import ApiKeyAuthenticator
from chatplane.internal.v1 import identity_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2, admin_pb2_grpc, admin_resources_pb2

_T = TypeVar("_T")

KEYS_PAGE_MAX = 500
MAX_OVERLAP = timedelta(hours=24)
_MAX_ID_CHARS = 256
_MAX_LABEL_CHARS = 256


def _text(value: str, field: str, limit: int) -> None:
    if len(value) > limit or "\x00" in value:
        raise errors.InvalidArgument(field, f"must be at most {limit} characters, without NUL")


def _key_id(key_id: str) -> str:
    # Not an id of any key: answered as for a key of another tenant.
    if not is_valid_id(key_id):
        raise errors.NotFound("api key not found")
    return key_id


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """AdminService over Persistence."""

    def __init__(
        self,
        *,
        settings: Settings,
        persistence: PersistenceClient,
        api_keys: ApiKeyAuthenticator,
    ) -> None:
        self._settings = settings
        self._persistence = persistence
        self._api_keys = api_keys

    def _timeout(self, context: Context) -> float:
        return outbound_timeout(context, self._settings.internal_call_timeout_seconds)

    async def _change(
        self, principal: Principal, context: Context, action: str, target: str, call: Awaitable[_T]
    ) -> _T:
        """A key change; one that fails is audited as such (a success is audited by
        Persistence, in the change's transaction)."""
        try:
            return await call
        except (errors.NotFound, errors.FailedPrecondition, grpc.aio.AioRpcError) as error:
            detail = (
                error.message
                if isinstance(error, errors.ChatplaneError)
                else (error.details() or error.code().name)
            )
            audit.record(
                action,
                actor=audit.actor_of(principal),
                tenant_id=principal.tenant_id,
                object=target,
                outcome=audit.FAILURE,
                detail=detail,
                source=context.peer() or "",
            )
            raise

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        principal = admin_principal(context, "ListApiKeys")
        _text(request.user_id, "user_id", _MAX_ID_CHARS)
        if not 0 <= request.page_size <= KEYS_PAGE_MAX:
            raise errors.InvalidArgument(
                "page_size", f"must be between 1 and {KEYS_PAGE_MAX} (0 means 100)"
            )
        try:
            response = await self._persistence.identity.ListApiKeys(
                identity_pb2.ListApiKeysRequest(
                    tenant_id=principal.tenant_id,
                    user_id=request.user_id,
                    page_size=request.page_size,
                    page_token=request.page_token,
                    include_revoked=request.include_revoked,
                ),
                timeout=self._timeout(context),
            )
        except grpc.aio.AioRpcError as error:
            # Everything else of the request was checked above: only the token is left.
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.InvalidArgument(
                    "page_token", "not a page token of this list"
                ) from error
            raise
        return admin_pb2.ListApiKeysResponse(
            keys=response.keys, next_page_token=response.next_page_token
        )

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        principal = admin_principal(context, "CreateApiKey")
        if not request.user_id:
            raise errors.InvalidArgument("user_id", "required")
        _text(request.user_id, "user_id", _MAX_ID_CHARS)
        _text(request.label, "label", _MAX_LABEL_CHARS)
        roles = parse_roles(tuple(request.roles))
        response = await self._persistence.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(
                owner=admin_resources_pb2.Owner(
                    tenant_id=principal.tenant_id, user_id=request.user_id
                ),
                label=request.label,
                roles=sorted(roles),
                actor=audit_actor(principal, context),
            ),
            timeout=self._timeout(context),
        )
        return admin_pb2.CreateApiKeyResponse(api_key=response.api_key, key=response.key)

    async def RotateApiKey(
        self, request: admin_pb2.RotateApiKeyRequest, context: Context
    ) -> admin_pb2.RotateApiKeyResponse:
        principal = admin_principal(context, "RotateApiKey")
        overlap = request.overlap.ToTimedelta() if request.HasField("overlap") else timedelta(0)
        if overlap < timedelta(0) or overlap > MAX_OVERLAP:
            raise errors.InvalidArgument("overlap", "must be between 0 and 24 hours")
        key_id = request.key_id
        response = await self._change(
            principal,
            context,
            audit.API_KEY_ROTATE,
            f"api_key/{key_id[:64]}",
            self._rotate(principal, context, key_id, overlap),
        )
        self._api_keys.forget(key_id)
        return admin_pb2.RotateApiKeyResponse(
            api_key=response.api_key, key=response.key, previous=response.previous
        )

    async def _rotate(
        self, principal: Principal, context: Context, key_id: str, overlap: timedelta
    ) -> identity_pb2.RotateApiKeyResponse:
        return await self._persistence.identity.RotateApiKey(
            identity_pb2.RotateApiKeyRequest(
                tenant_id=principal.tenant_id,
                key_id=_key_id(key_id),
                overlap_ms=overlap // timedelta(milliseconds=1),
                actor=audit_actor(principal, context),
            ),
            timeout=self._timeout(context),
        )

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_pb2.RevokeApiKeyResponse:
        principal = admin_principal(context, "RevokeApiKey")
        key_id = request.key_id
        response = await self._change(
            principal,
            context,
            audit.API_KEY_REVOKE,
            f"api_key/{key_id[:64]}",
            self._revoke(principal, context, key_id),
        )
        self._api_keys.forget(key_id)
        return admin_pb2.RevokeApiKeyResponse(key=response.key)

    async def _revoke(
        self, principal: Principal, context: Context, key_id: str
    ) -> identity_pb2.RevokeApiKeyResponse:
        return await self._persistence.identity.RevokeApiKey(
            identity_pb2.RevokeApiKeyRequest(
                tenant_id=principal.tenant_id,
                key_id=_key_id(key_id),
                actor=audit_actor(principal, context),
            ),
            timeout=self._timeout(context),
        )

    async def ListRatedAnswers(
        self, request: admin_pb2.ListRatedAnswersRequest, context: Context
    ) -> admin_pb2.ListRatedAnswersResponse:
        # Feedback datasets (issue 8, docs/datasets.md): the caller's tenant only; whether it
        # opted in, and the redaction, are decided by the system of record.
        return await rated_answers_page(
            admin_principal(context, "ListRatedAnswers"),
            request,
            self._persistence,
            self._timeout(context),
            context.peer() or "",
        )
