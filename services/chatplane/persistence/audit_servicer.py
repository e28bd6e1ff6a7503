"""AuditService: the tamper-evident audit log (docs/security.md, "Audit log"), appended in
batches by every service's audit recorder and read page by page by `chatplane audit`."""

from __future__ import annotations

from chatplane.audit.protos import event_from_proto, head_to_proto, record_to_proto
from chatplane.common import errors
from chatplane.internal.v1 import audit_pb2, audit_pb2_grpc
from chatplane.persistence.protos import Context, page_size
from chatplane.persistence.store.key_records import AuditChain

AUDIT_PAGE = (500, 1000)
MAX_APPEND = 1000


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """AuditService over the store's hash chain."""

    def __init__(self, chain: AuditChain) -> None:
        self._chain = chain

    async def AppendAuditEvents(
        self, request: audit_pb2.AppendAuditEventsRequest, context: Context
    ) -> audit_pb2.AppendAuditEventsResponse:
        if not request.events:
            raise errors.InvalidArgument("events", "required")
        if len(request.events) > MAX_APPEND:
            raise errors.InvalidArgument("events", f"at most {MAX_APPEND} per call")
        for index, event in enumerate(request.events):
            if not event.action:
                raise errors.InvalidArgument(f"events[{index}].action", "required")
        head = await self._chain.append([event_from_proto(e) for e in request.events])
        return audit_pb2.AppendAuditEventsResponse(head=head_to_proto(head))

    async def ListAuditRecords(
        self, request: audit_pb2.ListAuditRecordsRequest, context: Context
    ) -> audit_pb2.ListAuditRecordsResponse:
        if request.after_seq < 0:
            raise errors.InvalidArgument("after_seq", "must not be negative")
        limit = page_size(request.page_size, "page_size", AUDIT_PAGE)
        # The head first: records appended after it are on the next page, never missing.
        head = await self._chain.head()
        records = await self._chain.records(request.after_seq, limit)
        return audit_pb2.ListAuditRecordsResponse(
            records=[record_to_proto(r) for r in records], head=head_to_proto(head)
        )
