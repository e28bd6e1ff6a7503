"""`chatplane dataset export`: rated conversations of tenants that opted in, as JSONL in the
Anthropic Messages and OpenAI chat fine-tuning formats with a manifest (docs/datasets.md).
With an admin API key it pages the key's tenant through the Gateway's AdminService; without
one, an operator inside the mesh pages every opted-in tenant (or --tenant) through
Persistence, like `chatplane report variants`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import click
import grpc

from chatplane.cli.client import open_channel
from chatplane.datasets.export import DatasetWriter, ExportRange
from chatplane.internal.v1 import analytics_pb2
from chatplane.launcher import StackInfo
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_pb2, admin_pb2_grpc, admin_resources_pb2

_TIMEOUT_SECONDS = 60.0
_PAGE_SIZE = 200
_TIMES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def _pages(
    info: StackInfo, api_key: str | None, asked: ExportRange
) -> AsyncIterator[admin_resources_pb2.RatedAnswer]:
    token = ""
    if api_key:
        async with open_channel(info.address("gateway"), info.client_tls()) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            while True:
                request = admin_pb2.ListRatedAnswersRequest(
                    min_rating=asked.min_rating, page_size=_PAGE_SIZE, page_token=token
                )
                request.since.FromDatetime(asked.since)
                if asked.until is not None:
                    request.until.FromDatetime(asked.until)
                page = await admin.ListRatedAnswers(
                    request,
                    timeout=_TIMEOUT_SECONDS,
                    metadata=(("authorization", f"Bearer {api_key}"),),
                )
                for answer in page.answers:
                    yield answer
                if not (token := page.next_page_token):
                    return
    async with open_channel(info.address("persistence"), info.client_tls()) as channel:
        persistence = PersistenceClient(channel)
        while True:
            internal = analytics_pb2.ListRatedAnswersRequest(
                tenant_id=asked.tenant or "",
                min_rating=asked.min_rating,
                page_size=_PAGE_SIZE,
                page_token=token,
            )
            internal.since.FromDatetime(asked.since)
            if asked.until is not None:
                internal.until.FromDatetime(asked.until)
            answers = await persistence.analytics.ListRatedAnswers(
                internal, timeout=_TIMEOUT_SECONDS
            )
            for answer in answers.answers:
                yield answer
            if not (token := answers.next_page_token):
                return


@click.group()
def dataset() -> None:
    """Feedback datasets for retraining and prompt tuning outside chatplane."""


@dataset.command("export")
@click.option("--since", type=click.DateTime(_TIMES), required=True, help="Answers from (UTC).")
@click.option("--until", type=click.DateTime(_TIMES), default=None, help="Answers before (UTC).")
@click.option(
    "--min-rating",
    type=click.IntRange(1, 5),
    required=True,
    help="Lowest rating: the score, or 5 / 1 for a thumbs up / down without one.",
)
@click.option("--tenant", default="", help="Only this tenant (default: every opted-in one).")
@click.option(
    "--api-key",
    envvar="CHATPLANE_ADMIN_API_KEY",
    show_envvar=True,
    default=None,
    help="An admin key: export its tenant through the Gateway (AdminService).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory to write the JSONL files and manifest.json into.",
)
@click.pass_obj
def export(
    data_dir: Path,
    since: datetime,
    until: datetime | None,
    min_rating: int,
    tenant: str,
    api_key: str | None,
    out: Path,
) -> None:
    """Write rated conversations as JSONL (Anthropic Messages, OpenAI chat) with a manifest."""
    if api_key and tenant:
        raise click.UsageError("--tenant cannot be combined with --api-key (the key's tenant)")
    info = StackInfo.load(data_dir)
    needed = "gateway" if api_key else "persistence"
    if info is None or needed not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )
    start = _utc(since)
    assert start is not None
    asked = ExportRange(start, _utc(until), min_rating, tenant or None)
    writer = DatasetWriter(out, asked)

    async def copy() -> None:
        async for answer in _pages(info, api_key, asked):
            writer.add(answer)

    try:
        asyncio.run(copy())
    except grpc.aio.AioRpcError as error:
        writer.close(complete=False)
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None
    click.echo(json.dumps(writer.close()))
