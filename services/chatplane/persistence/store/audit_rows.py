"""The audit_log table's columns as both SQL stores hold them (times as whole microseconds
since the Unix epoch, exactly what the chain hashes) and the conversion of records to rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatplane.audit.chain import AuditEvent, AuditRecord
from chatplane.common.timestamps import from_micros, to_micros

AUDIT_COLUMNS = (
    "seq, event_time_us, actor, tenant_id, action, object, outcome, detail, source,"
    " request_id, prev_hash, hash"
)


def audit_row(record: AuditRecord) -> tuple[Any, ...]:
    """The values of a record for the audit_log columns, in order (times in microseconds)."""
    event = record.event
    assert event.event_time is not None  # extend() sets it
    return (
        record.seq,
        to_micros(event.event_time),
        event.actor,
        event.tenant_id,
        event.action,
        event.object,
        event.outcome,
        event.detail,
        event.source,
        event.request_id,
        record.prev_hash,
        record.hash,
    )


def audit_record_from_row(row: Sequence[Any]) -> AuditRecord:
    """The record of a row of the audit_log columns (times stored as microseconds)."""
    seq, time_us, actor, tenant, action, obj, outcome, detail, source, request_id, prev, digest = (
        row
    )
    event = AuditEvent(
        actor, tenant, action, obj, outcome, detail, source, request_id, from_micros(time_us)
    )
    return AuditRecord(int(seq), event, bytes(prev), bytes(digest))
