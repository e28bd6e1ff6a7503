"""`chatplane audit verify`: walks the whole audit chain of the running stack's system of
record and checks every record's hash, its link to the one before, and the stored head; exits
1 naming the first bad record. `chatplane audit tail` prints the newest records."""

from __future__ import annotations

from pathlib import Path

import click

from chatplane.audit.chain import AuditHead, ChainVerifier, Verdict
from chatplane.audit.protos import head_from_proto, record_from_proto
from chatplane.cli.keys_admin import call_persistence
from chatplane.internal.v1 import audit_pb2
from chatplane.persistence.client import PersistenceClient

_PAGE = 1000


async def verify_chain(
    persistence: PersistenceClient,
) -> tuple[Verdict, AuditHead]:
    """The verdict on the chain as of the head read with the first page (records appended
    while verifying are left for the next run)."""
    verifier = ChainVerifier()
    head: AuditHead | None = None
    after = 0
    while True:
        page = await persistence.audit.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(after_seq=after, page_size=_PAGE), timeout=30
        )
        if head is None:
            head = head_from_proto(page.head)
        records = [record_from_proto(r) for r in page.records]
        in_scope = [r for r in records if r.seq <= head.seq]
        if not verifier.feed(in_scope):
            break
        if len(records) < _PAGE or not in_scope or in_scope[-1].seq >= head.seq:
            break
        after = in_scope[-1].seq
    return verifier.finish(head), head


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.pass_obj
def audit_verify(data_dir: Path) -> None:
    """Check the whole chain; exit 1 naming the first bad record."""
    verdict, head = call_persistence(data_dir, verify_chain)
    if not verdict.ok:
        where = f"record {verdict.bad_seq}" if verdict.bad_seq else "the head"
        click.echo(
            f"audit chain BROKEN at {where}: {verdict.problem} "
            f"({verdict.checked} records before it verified)",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"audit chain OK: {verdict.checked} records, head {head.hash.hex()}")


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_obj
def audit_tail(data_dir: Path, count: int) -> None:
    """Print the newest records, oldest first."""

    async def work(
        persistence: PersistenceClient,
    ) -> audit_pb2.ListAuditRecordsResponse:
        first = await persistence.audit.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(page_size=1), timeout=10
        )
        after = max(0, first.head.seq - count)
        return await persistence.audit.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(after_seq=after, page_size=count), timeout=10
        )

    for proto in call_persistence(data_dir, work).records:
        record = record_from_proto(proto)
        event = record.event
        when = event.event_time.isoformat(timespec="milliseconds") if event.event_time else "?"
        click.echo(
            f"{record.seq}  {when}  {event.action}  {event.outcome}  actor={event.actor}"
            f"  tenant={event.tenant_id or '-'}  object={event.object}"
            + (f"  detail={event.detail!r}" if event.detail else "")
        )
