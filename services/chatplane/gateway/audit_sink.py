"""The Gateway's audit sink: batches of events appended through
AuditService.AppendAuditEvents (one transaction per batch in the system of record)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from chatplane.audit.chain import AuditEvent
from chatplane.audit.protos import event_to_proto
from chatplane.audit.recorder import AuditRejected
from chatplane.common import status_mapping
from chatplane.internal.v1 import audit_pb2
from chatplane.persistence.client import PersistenceClient


class PersistenceAuditSink:
    """Appends with AuditService.AppendAuditEvents (one transaction per batch)."""

    def __init__(self, persistence: PersistenceClient, *, timeout: float) -> None:
        self._persistence = persistence
        self._timeout = timeout

    async def append(self, events: Sequence[AuditEvent]) -> None:
        try:
            await self._persistence.audit.AppendAuditEvents(
                audit_pb2.AppendAuditEventsRequest(events=[event_to_proto(e) for e in events]),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL):
                raise AuditRejected(error.details() or error.code().name) from error
            raise status_mapping.from_rpc_error(error, "AppendAuditEvents") from error
