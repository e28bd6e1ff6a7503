"""`chatplane report variants`: answers and feedback per A/B variant, computed by the system of
record (PersistenceService.ReportVariants, an internal RPC, like `chatplane keys create`),
printed as a table or as JSON (docs/variants.md)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from chatplane.cli.client import open_channel
from chatplane.launcher import StackInfo
from chatplane.v1 import persistence_pb2, persistence_pb2_grpc

_TIMEOUT_SECONDS = 60.0
# The report's columns: (heading, field of VariantReport, format of its value).
_COLUMNS = (
    ("variant", "variant", "{}"),
    ("answers", "answers", "{}"),
    ("interrupted", "interrupted_answers", "{}"),
    ("feedback", "feedback_count", "{}"),
    ("scored", "scored_count", "{}"),
    ("mean rating", "mean_score", "{:.2f}"),
    ("thumbs up", "thumbs_up_rate", "{:.0%}"),
    ("first token ms", "mean_first_token_ms", "{:.0f}"),
    ("total ms", "mean_duration_ms", "{:.0f}"),
    ("input tokens", "mean_input_tokens", "{:.1f}"),
    ("output tokens", "mean_output_tokens", "{:.1f}"),
)


def report_rows(response: persistence_pb2.ReportVariantsResponse) -> list[dict[str, Any]]:
    """The report as plain rows (every field; a mean with nothing to average is null)."""
    rows = []
    for report in response.variants:
        row = json_format.MessageToDict(
            report, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for _, field, _ in _COLUMNS:
            row.setdefault(field, None)
        # int64 fields come out of proto JSON as strings.
        rows.append(
            {k: int(v) if isinstance(v, str) and k != "variant" else v for k, v in row.items()}
        )
    return rows


def report_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The rows as a rich table."""
    table = Table(title=title)
    for heading, _, _ in _COLUMNS:
        table.add_column(
            heading,
            justify="left" if heading == "variant" else "right",
            no_wrap=heading == "variant",
        )
    for row in rows:
        table.add_row(
            *("—" if row[field] is None else form.format(row[field]) for _, field, form in _COLUMNS)
        )
    return table


def _since(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A date or time without a zone is UTC: the stored times are.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@click.group()
def report() -> None:
    """Reports computed by the system of record."""


@report.command("variants")
@click.option("--tenant", default="", help="Only this tenant's answers (default: every tenant).")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    default=None,
    help="Only answers created at or after this date or time (UTC unless it has a zone).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def variants(data_dir: Path, tenant: str, since: datetime | None, as_json: bool) -> None:
    """Answers, feedback, mean rating, thumbs-up rate, latency and tokens per A/B variant."""
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )
    request = persistence_pb2.ReportVariantsRequest(tenant_id=tenant)
    start = _since(since)
    if start is not None:
        request.since.FromDatetime(start)

    async def ask() -> persistence_pb2.ReportVariantsResponse:
        async with open_channel(info.address("persistence"), info.client_tls()) as channel:
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            return await stub.ReportVariants(request, timeout=_TIMEOUT_SECONDS)

    try:
        response = asyncio.run(ask())
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None
    rows = report_rows(response)
    if as_json:
        click.echo(json.dumps({"tenant": tenant or None, "since": _iso(start), "variants": rows}))
        return
    scope = f"tenant {tenant}" if tenant else "all tenants"
    if start is not None:
        scope += f", since {_iso(start)}"
    if not rows:
        click.echo(f"no answers ({scope})")
        return
    console = Console()
    if not console.is_terminal:
        # Piped or redirected: rich would squeeze the table into 80 columns.
        console = Console(width=200)
    console.print(report_table(rows, f"A/B variants ({scope})"))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
