"""`chatplane report variants`: answers and feedback per A/B variant, computed by the system of
record (AnalyticsService.ReportVariants, an internal RPC, like `chatplane keys create`),
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
from chatplane.internal.v1 import analytics_pb2
from chatplane.launcher import StackInfo
from chatplane.persistence.client import PersistenceClient

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
    ("verdict", "verdict", "{}"),
)
# Interval columns (issue 8): heading, low and high fields, format of each end.
_INTERVALS = (
    ("thumbs up CI", "thumbs_up_rate_low", "thumbs_up_rate_high", "{:.0%}"),
    ("rating CI", "mean_score_low", "mean_score_high", "{:.2f}"),
)
_INTERVAL_FIELDS = (
    *(f for _, low, high, _ in _INTERVALS for f in (low, high)),
    "score_stddev",
    "thumbs_up_p_value",
    "mean_score_p_value",
)


_INT64_FIELDS = frozenset(
    f.name for f in analytics_pb2.VariantReport.DESCRIPTOR.fields if f.type == f.TYPE_INT64
)


def report_rows(response: analytics_pb2.ReportVariantsResponse) -> list[dict[str, Any]]:
    """The report as plain rows (every field; a mean with nothing to average is null)."""
    rows = []
    for report in response.variants:
        row = json_format.MessageToDict(
            report, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for field in (*(f for _, f, _ in _COLUMNS), *_INTERVAL_FIELDS):
            row.setdefault(field, None)
        # int64 fields come out of proto JSON as strings.
        rows.append({k: int(v) if k in _INT64_FIELDS else v for k, v in row.items()})
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
    for heading, *_ in _INTERVALS:
        table.add_column(heading, justify="right")
    for row in rows:
        cells = ["—" if row[f] is None else form.format(row[f]) for _, f, form in _COLUMNS]
        cells += [
            "—" if row[low] is None else f"{form.format(row[low])} to {form.format(row[high])}"
            for _, low, high, form in _INTERVALS
        ]
        table.add_row(*cells)
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
@click.option(
    "--control",
    default="",
    help="Compare every variant with this one (default: 'control', else the most rated).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 0.5, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Family-wise significance level (Bonferroni over the report's tests).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def variants(
    data_dir: Path,
    tenant: str,
    since: datetime | None,
    control: str,
    alpha: float,
    as_json: bool,
) -> None:
    """Answers, feedback, mean rating, thumbs-up rate, latency and tokens per A/B variant,
    with confidence intervals and a recommendation when a difference is significant."""
    info = StackInfo.load(data_dir)
    if info is None or "persistence" not in info.ports:
        raise click.ClickException(
            f"no running stack found in {data_dir}; start it with `make run`"
        )
    request = analytics_pb2.ReportVariantsRequest(tenant_id=tenant, control=control, alpha=alpha)
    start = _since(since)
    if start is not None:
        request.since.FromDatetime(start)

    async def ask() -> analytics_pb2.ReportVariantsResponse:
        async with open_channel(info.address("persistence"), info.client_tls()) as channel:
            stub = PersistenceClient(channel)
            return await stub.analytics.ReportVariants(request, timeout=_TIMEOUT_SECONDS)

    try:
        response = asyncio.run(ask())
    except grpc.aio.AioRpcError as error:
        raise click.ClickException(f"{error.code().name}: {error.details()}") from None
    rows = report_rows(response)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tenant": tenant or None,
                    "since": _iso(start),
                    "variants": rows,
                    **comparison_fields(response),
                }
            )
        )
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
    summary = comparison_fields(response)
    if summary["control"]:
        console.print(
            f"intervals at {1 - summary['alpha']:.0%}; compared with {summary['control']}:"
            f" {summary['recommendation'] or 'no significant difference, no recommendation'}"
        )


def comparison_fields(response: analytics_pb2.ReportVariantsResponse) -> dict[str, Any]:
    """The report's comparison: control, alpha, number of tests, recommendation."""
    return {
        "control": response.control or None,
        "alpha": response.alpha,
        "comparisons": response.comparisons,
        "recommended_variant": response.recommended_variant or None,
        "recommendation": response.recommendation or None,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
