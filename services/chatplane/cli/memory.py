"""`chatplane memory rebuild`: re-indexes memory from the system of record (after switching
the embedding model, or when the index was lost), through the running MemoryService."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import click
import grpc

from chatplane.cli.client import open_channel
from chatplane.common.entrypoint import load_settings
from chatplane.common.tls import TlsFiles
from chatplane.crypto.factory import store_key_source, store_keyring
from chatplane.crypto.sealed_store import sealed_store
from chatplane.internal.v1 import memory_pb2, memory_pb2_grpc
from chatplane.launcher import StackInfo
from chatplane.launcher.stack import running_postgres_dsn
from chatplane.persistence.store.base import Message, Role
from chatplane.persistence.store.factory import open_store
from chatplane.v1 import resources_pb2

_PAGE = 500
_ROLES = {Role.USER: resources_pb2.ROLE_USER, Role.ASSISTANT: resources_pb2.ROLE_ASSISTANT}


def remember_requests(messages: list[Message]) -> list[memory_pb2.RememberRequest]:
    """One RememberRequest per conversation of a page of stored messages."""
    grouped: dict[tuple[str, str, str], list[Message]] = defaultdict(list)
    for message in messages:
        if message.text.strip():
            key = (message.owner.tenant_id, message.owner.user_id, message.conversation_id)
            grouped[key].append(message)
    return [
        memory_pb2.RememberRequest(
            tenant_id=tenant,
            user_id=user,
            conversation_id=conversation,
            messages=[
                memory_pb2.MemoryMessage(
                    message_id=m.message_id,
                    role=_ROLES[m.role],
                    text=m.text,
                    create_time_unix_ms=int(m.create_time.timestamp() * 1000),
                )
                for m in sorted(group, key=lambda m: m.create_time)
            ],
        )
        for (tenant, user, conversation), group in grouped.items()
    ]


async def rebuild(data_dir: Path, memory_address: str, tls: TlsFiles | None = None) -> int:
    """Feeds every stored message to MemoryService.Remember; the count remembered."""
    settings = load_settings(["--data-dir", str(data_dir)], "chatplane memory rebuild")
    if not settings.postgres_dsn:
        # The embedded stack's own PostgreSQL, running in the data dir.
        settings = settings.model_copy(update={"postgres_dsn": running_postgres_dsn(data_dir)})
    store = await open_store(settings)
    store = sealed_store(store, store_keyring(settings, store_key_source(settings, store)))
    remembered = 0
    try:
        async with open_channel(memory_address, tls) as channel:
            memory = memory_pb2_grpc.MemoryServiceStub(channel)
            after: str | None = None
            with click.progressbar(length=0, label="re-indexing", show_pos=True) as progress:
                while True:
                    page = await store.iter_messages(after, _PAGE)
                    for request in remember_requests(page):
                        response = await memory.Remember(request, timeout=60)
                        remembered += response.remembered_count
                    progress.update(len(page))
                    if len(page) < _PAGE:
                        break
                    after = page[-1].message_id
    finally:
        await store.close()
    return remembered


@click.group()
def memory() -> None:
    """Manage conversational memory."""


@memory.command("rebuild")
@click.option(
    "--memory-address", default=None, help="MemoryService host:port (default: the running stack's)."
)
@click.pass_obj
def rebuild_command(data_dir: Path, memory_address: str | None) -> None:
    """Re-index every stored message into memory (idempotent)."""
    info = StackInfo.load(data_dir)
    if memory_address is None:
        if info is None or "memory" not in info.ports:
            raise click.ClickException(f"no running stack found in {data_dir}")
        memory_address = info.address("memory")
    tls = info.client_tls() if info is not None else None
    try:
        count = asyncio.run(rebuild(data_dir, memory_address, tls))
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None
    click.echo(f"re-indexed {count} messages")
