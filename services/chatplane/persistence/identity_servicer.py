"""IdentityService: API keys (docs/security.md): created, looked up by the Gateway's
authentication, listed, rotated and revoked. Request shapes are checked here, the work
(and the audit record of each change, in the same transaction) is the store's."""

from __future__ import annotations

from datetime import timedelta

from chatplane.common import errors
from chatplane.common.roles import parse_roles
from chatplane.common.timestamps import optional_timestamp_of, timestamp_of
from chatplane.internal.v1 import audit_pb2, identity_pb2, identity_pb2_grpc
from chatplane.persistence.protos import (
    Context,
    owner,
    owner_proto,
    page_size,
    position_cursor,
    position_token,
    require,
)
from chatplane.persistence.store.base import ApiKey
from chatplane.persistence.store.key_records import (
    MAX_ROTATION_OVERLAP,
    ApiKeyCursor,
    ApiKeys,
    AuditActor,
)
from chatplane.v1 import admin_resources_pb2

KEYS_PAGE = (100, 500)
_MAX_ID_CHARS = 256


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """IdentityService over the store's API keys."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def CreateApiKey(
        self, request: identity_pb2.CreateApiKeyRequest, context: Context
    ) -> identity_pb2.CreateApiKeyResponse:
        key_owner = owner(request.owner)
        roles = parse_roles(tuple(request.roles))
        issued = await self._keys.create(
            key_owner, request.label, roles, audit_actor(request.actor)
        )
        return identity_pb2.CreateApiKeyResponse(
            api_key=issued.api_key, key_id=issued.record.key_id, key=api_key_info(issued.record)
        )

    async def GetApiKey(
        self, request: identity_pb2.GetApiKeyRequest, context: Context
    ) -> identity_pb2.GetApiKeyResponse:
        require(request.key_id, "key_id")
        key = await self._keys.get(request.key_id)
        return identity_pb2.GetApiKeyResponse(
            owner=owner_proto(key.owner),
            secret_sha256=key.secret_sha256,
            revoked=key.revoked,
            roles=sorted(key.roles),
            # Set for a rotated key: the Gateway checks it on every call.
            expire_time=optional_timestamp_of(key.expire_time),
        )

    async def ListApiKeys(
        self, request: identity_pb2.ListApiKeysRequest, context: Context
    ) -> identity_pb2.ListApiKeysResponse:
        tenant_id = _tenant(request.tenant_id)
        _key_field(request.user_id, "user_id")
        limit = page_size(request.page_size, "page_size", KEYS_PAGE)
        page = await self._keys.page(
            tenant_id,
            request.user_id,
            limit=limit,
            after=position_cursor(request.page_token, "page_token", "key", ApiKeyCursor),
            include_revoked=request.include_revoked,
        )
        return identity_pb2.ListApiKeysResponse(
            keys=[api_key_info(key) for key in page.keys],
            next_page_token=position_token("key", page.next_cursor),
        )

    async def RotateApiKey(
        self, request: identity_pb2.RotateApiKeyRequest, context: Context
    ) -> identity_pb2.RotateApiKeyResponse:
        tenant_id = _tenant(request.tenant_id)
        limit_ms = MAX_ROTATION_OVERLAP // timedelta(milliseconds=1)
        if not 0 <= request.overlap_ms <= limit_ms:
            raise errors.InvalidArgument(
                "overlap_ms", f"must be between 0 and {limit_ms} (24 hours)"
            )
        rotated = await self._keys.rotate(
            tenant_id,
            request.key_id,
            timedelta(milliseconds=request.overlap_ms),
            audit_actor(request.actor),
        )
        return identity_pb2.RotateApiKeyResponse(
            api_key=rotated.issued.api_key,
            key=api_key_info(rotated.issued.record),
            previous=api_key_info(rotated.previous),
        )

    async def RevokeApiKey(
        self, request: identity_pb2.RevokeApiKeyRequest, context: Context
    ) -> identity_pb2.RevokeApiKeyResponse:
        tenant_id = _tenant(request.tenant_id)
        key = await self._keys.revoke(tenant_id, request.key_id, audit_actor(request.actor))
        return identity_pb2.RevokeApiKeyResponse(key=api_key_info(key))


def _tenant(tenant_id: str) -> str:
    require(tenant_id, "tenant_id")
    return _key_field(tenant_id, "tenant_id")


def _key_field(value: str, field: str) -> str:
    if len(value) > _MAX_ID_CHARS or "\x00" in value:
        raise errors.InvalidArgument(
            field, f"must be at most {_MAX_ID_CHARS} characters, without NUL"
        )
    return value


def audit_actor(actor: audit_pb2.AuditActor) -> AuditActor:
    """The domain form of a request's actor."""
    return AuditActor(actor.actor, actor.source, actor.request_id)


def api_key_info(key: ApiKey) -> admin_resources_pb2.ApiKeyInfo:
    """A key's facts for a response (never its secret's hash)."""
    return admin_resources_pb2.ApiKeyInfo(
        key_id=key.key_id,
        owner=owner_proto(key.owner),
        label=key.label,
        roles=sorted(key.roles),
        create_time=timestamp_of(key.create_time),
        revoked=key.revoked,
        replaced_by_key_id=key.replaced_by,
        expire_time=optional_timestamp_of(key.expire_time),
    )
