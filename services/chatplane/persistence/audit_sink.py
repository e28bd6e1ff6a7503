"""Where the Persistence service's AuditRecorder appends: straight into the store. (Other
services append through Persistence: gateway/audit_sink.py.)"""

from __future__ import annotations

from collections.abc import Sequence

from chatplane.audit.chain import AuditEvent
from chatplane.persistence.store.key_records import AuditChain


class StoreAuditSink:
    """Appends directly to the system of record."""

    def __init__(self, chain: AuditChain) -> None:
        self._chain = chain

    async def append(self, events: Sequence[AuditEvent]) -> None:
        await self._chain.append(events)
