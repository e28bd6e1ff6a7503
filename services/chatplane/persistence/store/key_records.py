"""Domain records of API key management (listing, rotation, revocation) and of who asks for a
change the store audits in the same transaction; the rules both SQL stores share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from chatplane.audit.chain import AuditEvent
from chatplane.common import errors
from chatplane.persistence.store.base import ApiKey, IssuedApiKey

MAX_ROTATION_OVERLAP: Final = timedelta(hours=24)
"""The longest an old key may keep working after a rotation."""

# The actions of key changes in the audit log (chatplane.audit names the same strings).
API_KEY_CREATE: Final = "api_key.create"
API_KEY_ROTATE: Final = "api_key.rotate"
API_KEY_REVOKE: Final = "api_key.revoke"


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who asks for an audited change, and from where."""

    actor: str = ""
    source: str = ""
    request_id: str = ""

    def event(self, *, tenant_id: str, action: str, object: str, detail: str = "") -> AuditEvent:
        """The audit event of a successful change this actor asked for."""
        return AuditEvent(
            actor=self.actor or "unattributed",
            tenant_id=tenant_id,
            action=action,
            object=object,
            outcome="success",
            detail=detail,
            source=self.source,
            request_id=self.request_id,
        )


@dataclass(frozen=True, slots=True)
class ApiKeyCursor:
    """Where a page of a tenant's keys (newest first) ended."""

    create_time: datetime
    key_id: str


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    """A page of keys; `next_cursor` is None on the last page."""

    keys: tuple[ApiKey, ...]
    next_cursor: ApiKeyCursor | None


@dataclass(frozen=True, slots=True)
class RotatedApiKey:
    """A rotation's result: the new key (full key shown once) and the old key's record."""

    issued: IssuedApiKey
    previous: ApiKey


def is_active(key: ApiKey, now: datetime) -> bool:
    """Whether `key` still authenticates at `now`."""
    return not key.revoked and (key.expire_time is None or key.expire_time > now)


def rotated_expiry(key: ApiKey, now: datetime, overlap: timedelta) -> datetime:
    """When a key rotated at `now` with `overlap` stops working (never later than it would
    have anyway)."""
    end = now + overlap
    return end if key.expire_time is None else min(key.expire_time, end)


def check_rotatable(key: ApiKey, now: datetime) -> None:
    """FailedPrecondition unless `key` may be rotated at `now`."""
    if key.replaced_by:
        raise errors.FailedPrecondition(
            f"the key was rotated already (replaced by {key.replaced_by}); rotate that one"
        )
    if not is_active(key, now):
        raise errors.FailedPrecondition("the key is revoked; create a new one instead")


def rotation_event(
    actor: AuditActor, old: ApiKey, issued: IssuedApiKey, overlap: timedelta
) -> AuditEvent:
    """The audit event of a rotation."""
    overlap_ms = overlap // timedelta(milliseconds=1)
    return actor.event(
        tenant_id=old.owner.tenant_id,
        action=API_KEY_ROTATE,
        object=object_of(old.key_id),
        detail=f"replaced by {issued.record.key_id}; overlap {overlap_ms} ms",
    )


def object_of(key_id: str) -> str:
    """The audit object name of a key."""
    return f"api_key/{key_id}"
