"""Audit events, records and the chain's head between their domain and proto forms."""

from __future__ import annotations

from datetime import datetime

from chatplane.audit.chain import AuditEvent, AuditHead, AuditRecord
from chatplane.common import errors
from chatplane.common.timestamps import datetime_of, timestamp_of
from chatplane.internal.v1 import audit_pb2


def event_to_proto(event: AuditEvent) -> audit_pb2.AuditEvent:
    """The proto form of an event."""
    proto = audit_pb2.AuditEvent(
        actor=event.actor,
        tenant_id=event.tenant_id,
        action=event.action,
        object=event.object,
        outcome=event.outcome,
        detail=event.detail,
        source=event.source,
        request_id=event.request_id,
    )
    if event.event_time is not None:
        proto.event_time.CopyFrom(timestamp_of(event.event_time))
    return proto


def event_from_proto(proto: audit_pb2.AuditEvent) -> AuditEvent:
    """The domain form of an event."""
    return AuditEvent(
        actor=proto.actor,
        tenant_id=proto.tenant_id,
        action=proto.action,
        object=proto.object,
        outcome=proto.outcome,
        detail=proto.detail,
        source=proto.source,
        request_id=proto.request_id,
        event_time=_event_time(proto) if proto.HasField("event_time") else None,
    )


def _event_time(proto: audit_pb2.AuditEvent) -> datetime:
    """The event's time, or InvalidArgument for a Timestamp outside 0001-9999 (which
    datetime cannot hold)."""
    try:
        return datetime_of(proto.event_time)
    except (ValueError, OverflowError) as error:
        raise errors.InvalidArgument("events.event_time", "out of range") from error


def record_to_proto(record: AuditRecord) -> audit_pb2.AuditRecord:
    """The proto form of a stored record."""
    return audit_pb2.AuditRecord(
        seq=record.seq,
        event=event_to_proto(record.event),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


def record_from_proto(proto: audit_pb2.AuditRecord) -> AuditRecord:
    """The domain form of a stored record."""
    return AuditRecord(proto.seq, event_from_proto(proto.event), proto.prev_hash, proto.hash)


def head_to_proto(head: AuditHead) -> audit_pb2.AuditHead:
    """The proto form of the chain's head."""
    return audit_pb2.AuditHead(seq=head.seq, hash=head.hash)


def head_from_proto(proto: audit_pb2.AuditHead) -> AuditHead:
    """The domain form of the chain's head."""
    return AuditHead(proto.seq, proto.hash)
