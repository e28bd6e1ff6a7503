"""Where a process's AuditRecorder appends: through PersistenceService (the Gateway and any
other service), or straight into the store (the Persistence service itself)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from chatplane.audit.chain import AuditEvent
from chatplane.audit.protos import event_to_proto
from chatplane.common import status_mapping
from chatplane.persistence.store.base import ConversationStore
from chatplane.v1 import persistence_pb2, persistence_pb2_grpc


class PersistenceAuditSink:
    """Appends with PersistenceService.AppendAuditEvents (one transaction per batch)."""

    def __init__(
        self, persistence: persistence_pb2_grpc.PersistenceServiceAsyncStub, *, timeout: float
    ) -> None:
        self._persistence = persistence
        self._timeout = timeout

    async def append(self, events: Sequence[AuditEvent]) -> None:
        try:
            await self._persistence.AppendAuditEvents(
                persistence_pb2.AppendAuditEventsRequest(
                    events=[event_to_proto(e) for e in events]
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise status_mapping.from_rpc_error(error, "AppendAuditEvents") from error


class StoreAuditSink:
    """Appends directly to the system of record."""

    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    async def append(self, events: Sequence[AuditEvent]) -> None:
        await self._store.append_audit(events)
