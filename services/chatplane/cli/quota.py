"""`chatplane quota set|show`: a tenant's daily token quota, set and read through the running
stack's Persistence (docs/quotas.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import grpc

from chatplane.cli.client import open_channel
from chatplane.internal.v1 import quota_pb2
from chatplane.launcher import StackInfo
from chatplane.persistence.client import PersistenceClient


def describe(quota: quota_pb2.TokenQuota) -> str:
    """A tenant's quota and today's usage, one fact per line."""
    reset = quota.reset_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    if not quota.tokens_per_day:
        return f"tenant:          {quota.tenant_id}\ntokens per day:  unlimited"
    left = max(0, quota.tokens_per_day - quota.used_tokens - quota.reserved_tokens)
    return "\n".join(
        (
            f"tenant:          {quota.tenant_id}",
            f"tokens per day:  {quota.tokens_per_day}",
            f"used today:      {quota.used_tokens}",
            f"reserved now:    {quota.reserved_tokens}",
            f"left today:      {left}",
            f"resets at:       {reset} (UTC midnight)",
        )
    )


def _call(data_dir: Path, request: quota_pb2.SetQuotaRequest | None, tenant: str) -> str:
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )

    async def call() -> quota_pb2.TokenQuota:
        async with open_channel(info.address("persistence"), info.client_tls()) as channel:
            stub = PersistenceClient(channel)
            if request is not None:
                return (await stub.quota.SetQuota(request, timeout=10)).quota
            return (
                await stub.quota.GetQuota(quota_pb2.GetQuotaRequest(tenant_id=tenant), timeout=10)
            ).quota

    try:
        return describe(asyncio.run(call()))
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None


@click.group()
def quota() -> None:
    """Per-tenant daily token quotas."""


@quota.command("set")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option(
    "--tokens-per-day",
    required=True,
    type=click.IntRange(min=0),
    help="Input + output tokens per UTC day; 0 removes the quota (unlimited).",
)
@click.pass_obj
def quota_set(data_dir: Path, tenant: str, tokens_per_day: int) -> None:
    """Set a tenant's daily token quota (every Gateway replica applies it at once)."""
    request = quota_pb2.SetQuotaRequest(tenant_id=tenant, tokens_per_day=tokens_per_day)
    click.echo(_call(data_dir, request, tenant))


@quota.command("show")
@click.option("--tenant", required=True, help="Tenant id.")
@click.pass_obj
def quota_show(data_dir: Path, tenant: str) -> None:
    """Show a tenant's daily token quota and today's usage."""
    click.echo(_call(data_dir, None, tenant))
