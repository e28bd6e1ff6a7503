"""`chatplane export --tenant T --user U [-o FILE]`: the user's data export archive
(docs/privacy.md, "Export") read from the running stack's Persistence and
MemoryService, written as it streams (to FILE, or stdout). Audited as one `user.export`
record with the actor `cli:<os user>`, like the CLI's key changes."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import click
import grpc

from chatplane import audit
from chatplane.audit.chain import AuditEvent
from chatplane.audit.outcome import failure_reason
from chatplane.audit.protos import event_to_proto
from chatplane.cli.client import open_channel
from chatplane.cli.keys_admin import cli_actor
from chatplane.internal.v1 import audit_pb2, memory_pb2_grpc
from chatplane.launcher import StackInfo
from chatplane.persistence.client import PersistenceClient
from chatplane.privacy.export_archive import archive_chunks
from chatplane.v1 import admin_resources_pb2

EXPORT_TIMEOUT_SECONDS = 900.0
_CALL_TIMEOUT_SECONDS = 30.0


async def _export(info: StackInfo, owner: admin_resources_pb2.Owner, sink: BinaryIO) -> int:
    """Streams the archive into `sink`; audits the export; returns its size in bytes."""
    tls = info.client_tls()
    actor = cli_actor()
    size = 0
    outcome, reason = audit.SUCCESS, ""
    async with (
        open_channel(info.address("persistence"), tls) as persistence_channel,
        open_channel(info.address("memory"), tls) as memory_channel,
    ):
        persistence = PersistenceClient(persistence_channel)
        try:
            async for chunk in archive_chunks(
                persistence,
                memory_pb2_grpc.MemoryServiceStub(memory_channel),
                owner,
                export_timeout=EXPORT_TIMEOUT_SECONDS,
                call_timeout=lambda: _CALL_TIMEOUT_SECONDS,
            ):
                sink.write(chunk)
                size += len(chunk)
        except BaseException as error:
            outcome, reason = audit.FAILURE, failure_reason(error)
            raise
        finally:
            event = AuditEvent(
                actor=actor.actor,
                tenant_id=owner.tenant_id,
                action=audit.USER_EXPORT,
                object=f"user/{owner.tenant_id}/{owner.user_id}",
                outcome=outcome,
                detail="; ".join(p for p in (f"bytes={size}", reason) if p),
                source=actor.source,
            )
            await persistence.audit.AppendAuditEvents(
                audit_pb2.AppendAuditEventsRequest(events=[event_to_proto(event)]),
                timeout=_CALL_TIMEOUT_SECONDS,
            )
    return size


@click.command("export")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", required=True, help="The user whose data to export.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the archive here (mode 0600); default: stdout.",
)
@click.pass_obj
def export(data_dir: Path, tenant: str, user: str, output: Path | None) -> None:
    """Export everything stored of one user as a JSON archive (GDPR access/portability)."""
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports or "memory" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )
    owner = admin_resources_pb2.Owner(tenant_id=tenant, user_id=user)
    try:
        if output is None:
            asyncio.run(_export(info, owner, sys.stdout.buffer))
            sys.stdout.buffer.flush()
            return
        # Personal data: written beside the target, readable by its owner only, and renamed
        # into place only when complete.
        output.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
        try:
            with os.fdopen(descriptor, "wb") as sink:
                size = asyncio.run(_export(info, owner, sink))
            os.replace(temporary, output)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        click.echo(f"exported {tenant}/{user}: {size} bytes to {output}", err=True)
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None
