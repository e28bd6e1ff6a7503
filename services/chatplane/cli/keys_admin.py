"""`chatplane keys list|rotate|revoke`: API key management of a tenant through the running
stack's Persistence (like `keys create`; AdminService is the same over the Gateway for
a tenant's own admins). Every change is audited with the actor `cli:<os user>`."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import grpc

from chatplane.cli.client import open_channel
from chatplane.internal.v1 import audit_pb2, identity_pb2
from chatplane.launcher import StackInfo
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2

_T = TypeVar("_T")
MAX_OVERLAP_SECONDS = 24 * 3600


def cli_actor() -> audit_pb2.AuditActor:
    """The audit actor of a change made with this command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return audit_pb2.AuditActor(actor=f"cli:{user}", source="chatplane cli")


def call_persistence(
    data_dir: Path,
    work: Callable[[PersistenceClient], Awaitable[_T]],
) -> _T:
    """Runs `work` against the running stack's Persistence; errors end the command."""
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )

    async def run() -> _T:
        async with open_channel(info.address("persistence"), info.client_tls()) as channel:
            return await work(PersistenceClient(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None


def describe(key: admin_resources_pb2.ApiKeyInfo) -> str:
    """One line about a key: id, user, roles, state, label."""
    if key.revoked:
        state = "revoked"
    elif key.HasField("expire_time"):
        state = f"expires {key.expire_time.ToDatetime().isoformat(timespec='seconds')}Z"
    else:
        state = "active"
    if key.replaced_by_key_id:
        state += f" (replaced by {key.replaced_by_key_id})"
    created = key.create_time.ToDatetime().isoformat(timespec="seconds")
    return (
        f"{key.key_id}  {key.owner.user_id}  {','.join(key.roles)}  created {created}Z  "
        f"{state}" + (f"  {key.label!r}" if key.label else "")
    )


@click.command("list")
@click.option("--tenant", required=True, help="Tenant id.")
@click.option("--user", default="", help="Only this user's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Also keys that no longer work.")
@click.pass_obj
def keys_list(data_dir: Path, tenant: str, user: str, include_revoked: bool) -> None:
    """List a tenant's API keys, newest first (never secrets)."""

    async def work(
        persistence: PersistenceClient,
    ) -> list[admin_resources_pb2.ApiKeyInfo]:
        keys: list[admin_resources_pb2.ApiKeyInfo] = []
        token = ""
        while True:
            page = await persistence.identity.ListApiKeys(
                identity_pb2.ListApiKeysRequest(
                    tenant_id=tenant,
                    user_id=user,
                    page_token=token,
                    include_revoked=include_revoked,
                ),
                timeout=10,
            )
            keys.extend(page.keys)
            token = page.next_page_token
            if not token:
                return keys

    for key in call_persistence(data_dir, work):
        click.echo(describe(key))


@click.command("rotate")
@click.argument("key_id")
@click.option("--tenant", required=True, help="The key's tenant.")
@click.option(
    "--overlap",
    "overlap_seconds",
    type=click.FloatRange(0, MAX_OVERLAP_SECONDS),
    default=0.0,
    show_default=True,
    help="Seconds the old key keeps working (at most a day).",
)
@click.pass_obj
def keys_rotate(data_dir: Path, key_id: str, tenant: str, overlap_seconds: float) -> None:
    """Replace KEY_ID by a new key (same user, label, roles) and print the new key (shown
    once); the old one stops working now, or after --overlap."""

    async def work(
        persistence: PersistenceClient,
    ) -> identity_pb2.RotateApiKeyResponse:
        return await persistence.identity.RotateApiKey(
            identity_pb2.RotateApiKeyRequest(
                tenant_id=tenant,
                key_id=key_id,
                overlap_ms=round(overlap_seconds * 1000),
                actor=cli_actor(),
            ),
            timeout=10,
        )

    rotated = call_persistence(data_dir, work)
    click.echo(rotated.api_key)
    click.echo(f"old key: {describe(rotated.previous)}", err=True)


@click.command("revoke")
@click.argument("key_id")
@click.option("--tenant", required=True, help="The key's tenant.")
@click.pass_obj
def keys_revoke(data_dir: Path, key_id: str, tenant: str) -> None:
    """Revoke KEY_ID: it stops working on every Gateway within api_key_cache_seconds."""

    async def work(
        persistence: PersistenceClient,
    ) -> identity_pb2.RevokeApiKeyResponse:
        return await persistence.identity.RevokeApiKey(
            identity_pb2.RevokeApiKeyRequest(tenant_id=tenant, key_id=key_id, actor=cli_actor()),
            timeout=10,
        )

    click.echo(f"revoked: {describe(call_persistence(data_dir, work).key)}")
