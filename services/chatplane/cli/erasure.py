"""`chatplane erase` and `chatplane retention set|show`: a user's erasure and a tenant's
retention period, through the running stack's Persistence (docs/privacy.md). Both are
operator commands on the host that runs the stack; AdminService offers the same to a tenant's
admins over the API."""

from __future__ import annotations

import json
from pathlib import Path

import click
from google.protobuf import timestamp_pb2

from chatplane.cli.keys_admin import call_persistence, cli_actor
from chatplane.internal.v1 import privacy_pb2
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2, erasure_pb2

ERASE_TIMEOUT_SECONDS = 300.0


def receipt_json(receipt: erasure_pb2.ErasureReceipt) -> dict[str, object]:
    """An erasure receipt as plain JSON (what `chatplane erase` prints)."""
    return {
        "job_id": receipt.job_id,
        "tenant_id": receipt.tenant_id,
        "user_id": receipt.user_id,
        "create_time": _stamp(receipt.create_time, receipt.HasField("create_time")),
        "finish_time": _stamp(receipt.finish_time, receipt.HasField("finish_time")),
        "steps": [
            {
                "step": step.step,
                "removed": dict(sorted(step.removed.items())),
                "finish_time": _stamp(step.finish_time, step.HasField("finish_time")),
            }
            for step in receipt.steps
        ],
    }


def _stamp(stamp: timestamp_pb2.Timestamp, present: bool) -> str | None:
    if not present:
        return None
    return stamp.ToDatetime().isoformat(timespec="milliseconds") + "Z"


@click.command()
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", "user_id", required=True, help="The user to erase.")
@click.pass_obj
def erase(data_dir: Path, tenant: str, user_id: str) -> None:
    """Erase a user from every store (data key, rows, memory, log) and print the receipt.
    Safe to repeat: an unfinished erasure is resumed."""

    async def work(
        stub: PersistenceClient,
    ) -> privacy_pb2.EraseUserResponse:
        return await stub.privacy.EraseUser(
            privacy_pb2.EraseUserRequest(
                owner=admin_resources_pb2.Owner(tenant_id=tenant, user_id=user_id),
                actor=cli_actor(),
            ),
            timeout=ERASE_TIMEOUT_SECONDS,
        )

    response = call_persistence(data_dir, work)
    click.echo(json.dumps(receipt_json(response.receipt), indent=2))


def describe(policy: erasure_pb2.RetentionPolicy) -> str:
    """A tenant's retention period, one fact per line."""
    days = f"{policy.days}" if policy.days else "none (kept forever)"
    return f"tenant:          {policy.tenant_id}\nretention days:  {days}"


@click.group()
def retention() -> None:
    """Per-tenant retention periods."""


@retention.command("set")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option(
    "--days",
    required=True,
    type=click.IntRange(min=0, max=36_500),
    help="Delete conversations without activity for this many days; 0 keeps them forever.",
)
@click.pass_obj
def retention_set(data_dir: Path, tenant: str, days: int) -> None:
    """Set a tenant's retention period (the next sweep applies it)."""

    async def work(
        stub: PersistenceClient,
    ) -> privacy_pb2.SetRetentionResponse:
        return await stub.privacy.SetRetention(
            privacy_pb2.SetRetentionRequest(tenant_id=tenant, days=days),
            timeout=10,
        )

    click.echo(describe(call_persistence(data_dir, work).policy))


@retention.command("show")
@click.option("--tenant", required=True, help="Tenant id.")
@click.pass_obj
def retention_show(data_dir: Path, tenant: str) -> None:
    """Show a tenant's retention period."""

    async def work(
        stub: PersistenceClient,
    ) -> privacy_pb2.GetRetentionResponse:
        return await stub.privacy.GetRetention(
            privacy_pb2.GetRetentionRequest(tenant_id=tenant), timeout=10
        )

    click.echo(describe(call_persistence(data_dir, work).policy))
