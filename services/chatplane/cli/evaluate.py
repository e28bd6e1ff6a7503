"""`chatplane eval --variant NAME@VERSION --suite PATH [--baseline OTHER@VERSION] [--json OUT]`:
replays a golden suite through the running stack with turns pinned to the version, prints a
table, writes JSON, and exits non-zero when the candidate fails the gate (docs/eval.md).
Exit status: 0 passed, 1 the gate failed, 2 bad usage or suite, 3 the run could not be made."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
import grpc
from rich.console import Console
from rich.table import Table

from chatplane.cli.chat import describe_rpc_error
from chatplane.cli.client import ClientTarget, gateway_options, tls_files
from chatplane.common.settings import Settings
from chatplane.common.variant_spec import VariantSpecError, parse_identifier
from chatplane.evaluation.runner import EvalTarget, run_suite
from chatplane.evaluation.scoring import (
    CaseScore,
    Verdict,
    as_json,
    gate_against,
    gate_alone,
    summarize,
)
from chatplane.evaluation.suite import Suite, SuiteError, load_suite

EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _case_cell(score: CaseScore) -> str:
    if score.error:
        return f"ERROR {score.error}"[:60]
    problems = [f"fact {f!r}" for f in score.missing_facts]
    problems += [f"citation {c!r}" for c in score.missing_citations]
    problems += [f"forbidden {f!r}" for f in score.forbidden_found]
    return "pass" if score.passed else "FAIL: " + "; ".join(problems)


def print_table(suite: Suite, results: dict[str, list[CaseScore]], verdict: Verdict) -> None:
    """One row per case and variant, then each variant's totals, then the verdict."""
    console = Console()
    table = Table(title=f"evaluation: suite {suite.name}")
    for column in (
        "case",
        "variant",
        "result",
        "facts",
        "first token ms",
        "total ms",
        "tokens in/out",
        "cost $",
    ):
        table.add_column(column)
    for index, case in enumerate(suite.cases):
        for variant, scores in results.items():
            score = scores[index]
            table.add_row(
                case.id,
                variant,
                _case_cell(score),
                f"{score.facts_found}/{score.facts_expected}",
                _ms(score.first_token_ms),
                _ms(score.total_ms),
                f"{score.input_tokens}/{score.output_tokens}",
                f"{score.cost_usd:.6f}",
            )
    for variant, scores in results.items():
        summary = summarize(variant, scores)
        table.add_row(
            "ALL",
            variant,
            f"{summary.passed}/{summary.cases} passed ({summary.pass_rate:.0%})",
            "—" if summary.fact_recall is None else f"{summary.fact_recall:.0%}",
            _ms(summary.mean_first_token_ms),
            _ms(summary.mean_total_ms),
            f"{summary.input_tokens}/{summary.output_tokens}",
            f"{summary.cost_usd:.6f}",
            end_section=False,
        )
    console.print(table)
    if verdict.passed:
        console.print("[green]gate: passed[/green]")
    else:
        console.print("[red]gate: FAILED[/red]")
        for reason in verdict.reasons:
            console.print(f"  - {reason}")


def report_json(
    suite: Suite,
    variant: str,
    baseline: str | None,
    results: dict[str, list[CaseScore]],
    verdict: Verdict,
) -> dict[str, Any]:
    """What --json writes."""
    return {
        "suite": suite.name,
        "variant": variant,
        "baseline": baseline,
        "tolerances": suite.tolerances.model_dump(),
        "runs": {
            name: {"summary": as_json(summarize(name, scores)), "cases": as_json(scores)}
            for name, scores in results.items()
        },
        "verdict": as_json(verdict),
    }


def _identifier(value: str, option: str) -> str:
    try:
        parse_identifier(value)
    except VariantSpecError as error:
        raise click.BadParameter(str(error), param_hint=option) from None
    return value


@click.command("eval", short_help="Evaluate a variant version on a golden suite.")
@click.option("--variant", "variant", required=True, help="The candidate, NAME@VERSION.")
@click.option(
    "--suite",
    "suite_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The suite file (YAML or JSON).",
)
@click.option("--baseline", default=None, help="Compare with this version, NAME@VERSION.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@gateway_options
@click.pass_obj
def evaluate(
    data_dir: Path,
    variant: str,
    suite_path: Path,
    baseline: str | None,
    json_path: Path | None,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """Replay the suite through the real Agent path pinned to VARIANT, score every case, and
    with --baseline gate the candidate against it (exit 1 when worse beyond tolerances)."""
    _identifier(variant, "--variant")
    if baseline is not None:
        _identifier(baseline, "--baseline")
    try:
        suite, contents = load_suite(suite_path)
    except SuiteError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)
    prices = Settings().model_prices
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))
    variants = [variant] + ([baseline] if baseline else [])

    async def run() -> dict[str, list[CaseScore]]:
        async with target.channel() as channel:
            return await run_suite(
                EvalTarget(channel, target.api_key), suite, contents, variants, prices
            )

    try:
        results = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        click.echo(f"error: {describe_rpc_error(error)}", err=True)
        sys.exit(EXIT_RUN_FAILED)
    verdict = (
        gate_against(results[variant], results[baseline], suite.tolerances)
        if baseline
        else gate_alone(summarize(variant, results[variant]), suite.tolerances)
    )
    print_table(suite, results, verdict)
    if json_path is not None:
        json_path.write_text(
            json.dumps(report_json(suite, variant, baseline, results, verdict), indent=2) + "\n"
        )
    sys.exit(0 if verdict.passed else EXIT_GATE_FAILED)
