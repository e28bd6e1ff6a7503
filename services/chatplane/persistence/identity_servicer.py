"""PersistenceService's key management and audit RPCs (issue 7, identity), mixed into
PersistenceServicer: request shapes are checked here, the work is the store's."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import timedelta
from typing import Any

import grpc

from chatplane.audit.protos import event_from_proto, head_to_proto, record_to_proto
from chatplane.common import errors
from chatplane.common.ids import is_valid_id
from chatplane.common.timestamps import timestamp_of
from chatplane.persistence.store.base import ApiKey, ConversationStore, from_micros, to_micros
from chatplane.persistence.store.key_records import (
    MAX_ROTATION_OVERLAP,
    ApiKeyCursor,
    AuditActor,
)
from chatplane.v1 import audit_pb2, persistence_pb2

Context = grpc.aio.ServicerContext[Any, Any]

KEYS_PAGE = (100, 500)
AUDIT_PAGE = (500, 1000)
MAX_APPEND = 1000
_MAX_ID_CHARS = 256


class IdentityRpcs:
    """ListApiKeys, RotateApiKey, RevokeApiKey, AppendAuditEvents, ListAuditRecords."""

    _store: ConversationStore

    async def ListApiKeys(
        self, request: persistence_pb2.PersistenceServiceListApiKeysRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceListApiKeysResponse:
        tenant_id = _tenant(request.tenant_id)
        if len(request.user_id) > _MAX_ID_CHARS or "\x00" in request.user_id:
            raise errors.InvalidArgument(
                "user_id", f"must be at most {_MAX_ID_CHARS} characters, without NUL"
            )
        limit = page_size(request.page_size, "page_size", KEYS_PAGE)
        page = await self._store.list_api_keys(
            tenant_id,
            request.user_id,
            limit=limit,
            after=decode_key_token(request.page_token),
            include_revoked=request.include_revoked,
        )
        return persistence_pb2.PersistenceServiceListApiKeysResponse(
            keys=[api_key_info(key) for key in page.keys],
            next_page_token=encode_key_token(page.next_cursor),
        )

    async def RotateApiKey(
        self, request: persistence_pb2.PersistenceServiceRotateApiKeyRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceRotateApiKeyResponse:
        tenant_id = _tenant(request.tenant_id)
        limit_ms = MAX_ROTATION_OVERLAP // timedelta(milliseconds=1)
        if not 0 <= request.overlap_ms <= limit_ms:
            raise errors.InvalidArgument(
                "overlap_ms", f"must be between 0 and {limit_ms} (24 hours)"
            )
        rotated = await self._store.rotate_api_key(
            tenant_id,
            request.key_id,
            timedelta(milliseconds=request.overlap_ms),
            audit_actor(request.actor),
        )
        return persistence_pb2.PersistenceServiceRotateApiKeyResponse(
            api_key=rotated.issued.api_key,
            key=api_key_info(rotated.issued.record),
            previous=api_key_info(rotated.previous),
        )

    async def RevokeApiKey(
        self, request: persistence_pb2.PersistenceServiceRevokeApiKeyRequest, context: Context
    ) -> persistence_pb2.PersistenceServiceRevokeApiKeyResponse:
        tenant_id = _tenant(request.tenant_id)
        key = await self._store.revoke_api_key(
            tenant_id, request.key_id, audit_actor(request.actor)
        )
        return persistence_pb2.PersistenceServiceRevokeApiKeyResponse(key=api_key_info(key))

    async def AppendAuditEvents(
        self, request: persistence_pb2.AppendAuditEventsRequest, context: Context
    ) -> persistence_pb2.AppendAuditEventsResponse:
        if not request.events:
            raise errors.InvalidArgument("events", "required")
        if len(request.events) > MAX_APPEND:
            raise errors.InvalidArgument("events", f"at most {MAX_APPEND} per call")
        for index, event in enumerate(request.events):
            if not event.action:
                raise errors.InvalidArgument(f"events[{index}].action", "required")
        head = await self._store.append_audit([event_from_proto(e) for e in request.events])
        return persistence_pb2.AppendAuditEventsResponse(head=head_to_proto(head))

    async def ListAuditRecords(
        self, request: persistence_pb2.ListAuditRecordsRequest, context: Context
    ) -> persistence_pb2.ListAuditRecordsResponse:
        if request.after_seq < 0:
            raise errors.InvalidArgument("after_seq", "must not be negative")
        limit = page_size(request.page_size, "page_size", AUDIT_PAGE)
        # The head first: records appended after it are on the next page, never missing.
        head = await self._store.audit_head()
        records = await self._store.audit_records(request.after_seq, limit)
        return persistence_pb2.ListAuditRecordsResponse(
            records=[record_to_proto(r) for r in records], head=head_to_proto(head)
        )


def _tenant(tenant_id: str) -> str:
    if not tenant_id:
        raise errors.InvalidArgument("tenant_id", "required")
    if len(tenant_id) > _MAX_ID_CHARS or "\x00" in tenant_id:
        raise errors.InvalidArgument(
            "tenant_id", f"must be at most {_MAX_ID_CHARS} characters, without NUL"
        )
    return tenant_id


def page_size(value: int, field: str, bounds: tuple[int, int]) -> int:
    """A request's page size: 0 is the default, anything else within 1..maximum."""
    default, maximum = bounds
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise errors.InvalidArgument(field, f"must be between 1 and {maximum} (0 means {default})")
    return value


def audit_actor(actor: audit_pb2.AuditActor) -> AuditActor:
    """The domain form of a request's actor."""
    return AuditActor(actor.actor, actor.source, actor.request_id)


def api_key_info(key: ApiKey) -> persistence_pb2.ApiKeyInfo:
    """A key's facts for a response (never its secret's hash)."""
    info = persistence_pb2.ApiKeyInfo(
        key_id=key.key_id,
        owner=persistence_pb2.Owner(tenant_id=key.owner.tenant_id, user_id=key.owner.user_id),
        label=key.label,
        roles=sorted(key.roles),
        create_time=timestamp_of(key.create_time),
        revoked=key.revoked,
        replaced_by_key_id=key.replaced_by,
    )
    if key.expire_time is not None:
        info.expire_time.CopyFrom(timestamp_of(key.expire_time))
    return info


# Page tokens of key lists: base64url of {"k": "key", "t": create time (µs), "id": key id}.


def encode_key_token(cursor: ApiKeyCursor | None) -> str:
    """The page token of a cursor ("" for none)."""
    if cursor is None:
        return ""
    text = json.dumps(
        {"k": "key", "t": to_micros(cursor.create_time), "id": cursor.key_id},
        separators=(",", ":"),
        sort_keys=True,
    )
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def decode_key_token(token: str) -> ApiKeyCursor | None:
    """The cursor of a page token, or InvalidArgument on `page_token`."""
    if not token:
        return None
    invalid = errors.InvalidArgument("page_token", "not a page token of this list")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        fields = json.loads(raw)
    except (binascii.Error, ValueError) as error:
        raise invalid from error
    if not isinstance(fields, dict) or fields.get("k") != "key":
        raise invalid
    micros, key_id = fields.get("t"), fields.get("id")
    if type(micros) is not int or micros < 0 or not isinstance(key_id, str):
        raise invalid
    if not is_valid_id(key_id):
        raise invalid
    try:
        return ApiKeyCursor(from_micros(micros), key_id)
    except OverflowError as error:
        raise invalid from error
