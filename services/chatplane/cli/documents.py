"""`chatplane ingest PATH...` uploads documents for the caller's tenant (text, markdown, PDF)
with a progress bar; `chatplane documents` lists them and deletes one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import click
import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from chatplane.cli.chat import Gateway, connect, describe_rpc_error, error_exit
from chatplane.cli.client import ClientTarget, gateway_options, tls_files
from chatplane.cli.history import format_time
from chatplane.memory.document_header import MARKDOWN, MIME_TYPES, PDF, PLAIN_TEXT
from chatplane.v1 import gateway_pb2

# Upload pieces: well under gRPC's 4 MiB message limit, small enough for a smooth bar.
PIECE_BYTES: Final = 256 * 1024
INGEST_TIMEOUT_SECONDS: Final = 600.0
CALL_TIMEOUT_SECONDS: Final = 30.0
_SUFFIX_TYPES: Final = {".md": MARKDOWN, ".markdown": MARKDOWN, ".mdx": MARKDOWN, ".pdf": PDF}


def mime_type_of(path: Path) -> str:
    """The media type a file is sent as: by suffix, text/plain for anything else."""
    return _SUFFIX_TYPES.get(path.suffix.lower(), PLAIN_TEXT)


async def _pieces(
    path: Path, name: str, mime_type: str, progress: Progress, task: TaskID
) -> AsyncIterator[gateway_pb2.IngestDocumentRequest]:
    yield gateway_pb2.IngestDocumentRequest(
        header=gateway_pb2.IngestDocumentHeader(name=name, mime_type=mime_type)
    )
    with path.open("rb") as file:
        while piece := await asyncio.to_thread(file.read, PIECE_BYTES):
            yield gateway_pb2.IngestDocumentRequest(content=piece)
            progress.advance(task, len(piece))
    progress.update(task, description=f"{name} (indexing)")


async def ingest_file(
    gateway: Gateway, path: Path, size: int, mime_type: str, progress: Progress
) -> gateway_pb2.IngestDocumentResponse:
    """Uploads one file of `size` bytes; its bar counts the bytes sent, then waits for the
    indexing."""
    task = progress.add_task(path.name, total=size)
    response: gateway_pb2.IngestDocumentResponse = await gateway.stub.IngestDocument(
        _pieces(path, path.name, mime_type, progress, task),
        metadata=gateway.metadata,
        timeout=INGEST_TIMEOUT_SECONDS,
    )
    progress.update(task, description=f"{path.name} ({response.document.chunk_count} chunks)")
    return response


async def _ingest(
    target: ClientTarget, files: list[tuple[Path, int]], mime_type: str | None
) -> int:
    failures = 0
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
    )
    async with connect(target) as gateway:
        with Progress(*columns, console=console, transient=False) as progress:
            for path, size in files:
                try:
                    response = await ingest_file(
                        gateway, path, size, mime_type or mime_type_of(path), progress
                    )
                except grpc.aio.AioRpcError as error:
                    failures += 1
                    progress.console.print(f"error: {path}: {describe_rpc_error(error)}")
                    continue
                document = response.document
                click.echo(f"{document.document_id}  {document.chunk_count:>5} chunks  {path}")
    return failures


@click.command(short_help="Ingest documents (text, markdown, PDF) for your tenant.")
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
)
@click.option(
    "--mime-type",
    type=click.Choice(MIME_TYPES),
    default=None,
    help="Send every file as this type (default: by suffix; .md/.pdf, else text/plain).",
)
@gateway_options
@click.pass_obj
def ingest(
    data_dir: Path,
    paths: tuple[Path, ...],
    mime_type: str | None,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Chunk, embed and store documents; every user of your tenant is then answered from them
    (with citations). Prints one line per document: its id, chunk count and path."""
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))
    files = [(path, path.stat().st_size) for path in paths]
    failures = asyncio.run(_ingest(target, files, mime_type))
    if failures:
        error_exit(f"{failures} of {len(paths)} documents were not ingested")


@click.group()
def documents() -> None:
    """List or delete your tenant's documents."""


@documents.command("list")
@gateway_options
@click.pass_obj
def documents_list(
    data_dir: Path,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """List the tenant's documents, newest first."""
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))

    async def listed() -> gateway_pb2.ListDocumentsResponse:
        async with connect(target) as gateway:
            response: gateway_pb2.ListDocumentsResponse = await gateway.stub.ListDocuments(
                gateway_pb2.ListDocumentsRequest(),
                metadata=gateway.metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            return response

    try:
        response = asyncio.run(listed())
    except grpc.aio.AioRpcError as error:
        error_exit(describe_rpc_error(error))
    if not response.documents:
        click.echo("no documents yet")
        return
    for d in response.documents:
        click.echo(f"{d.document_id}  {format_time(d.create_time)}  {d.chunk_count:>5}  {d.name}")


@documents.command("delete")
@click.argument("document_id")
@gateway_options
@click.pass_obj
def documents_delete(
    data_dir: Path,
    document_id: str,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Delete one of the tenant's documents and its chunks."""
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))

    async def deleted() -> int:
        async with connect(target) as gateway:
            response = await gateway.stub.DeleteDocument(
                gateway_pb2.DeleteDocumentRequest(document_id=document_id),
                metadata=gateway.metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            return response.deleted_chunk_count

    try:
        count = asyncio.run(deleted())
    except grpc.aio.AioRpcError as error:
        error_exit(describe_rpc_error(error))
    click.echo(f"deleted {document_id} ({count} chunks)")
