"""`python -m bench` (`make bench`): runs the registered benchmarks one after another, each on its
own freshly started stack, and prints one table per benchmark with targets and pass/fail.

With `--baseline REF` each benchmark runs first on a checkout of REF and then on the working
tree, and the tables pair the two (bench/baseline.py).

To add a benchmark, write a module with NAME, TITLE, NOTES and
`async def run(options: Options) -> list[Row]`, and add it to BENCHMARKS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench import (
    auth_flood,
    baseline,
    chain_cpu,
    edge,
    embedding,
    encryption,
    erasure,
    export,
    handoff,
    ingest,
    llm_chain,
    mtls,
    persistence,
    pipeline,
    recall,
    registry,
    report,
    streaming,
    tree,
)
from bench import datasets as datasets_bench
from bench import resume as resume_bench
from bench.harness import Options, machine, progress


@dataclass(frozen=True, slots=True)
class Benchmark:
    """A registered benchmark."""

    name: str
    title: str
    notes: Sequence[str]
    run: Callable[[Options], Awaitable[list[report.Row]]]


BENCHMARKS = (
    Benchmark(streaming.NAME, streaming.TITLE, streaming.NOTES, streaming.run),
    Benchmark(persistence.NAME, persistence.TITLE, persistence.NOTES, persistence.run),
    Benchmark(pipeline.NAME, pipeline.TITLE, pipeline.NOTES, pipeline.run),
    Benchmark(recall.NAME, recall.TITLE, recall.NOTES, recall.run),
    Benchmark(mtls.NAME, mtls.TITLE, mtls.NOTES, mtls.run),
    Benchmark(edge.NAME, edge.TITLE, edge.NOTES, edge.run),
    Benchmark(resume_bench.NAME, resume_bench.TITLE, resume_bench.NOTES, resume_bench.run),
    Benchmark(ingest.NAME, ingest.TITLE, ingest.NOTES, ingest.run),
    Benchmark(llm_chain.NAME, llm_chain.TITLE, llm_chain.NOTES, llm_chain.run),
    Benchmark(tree.NAME, tree.TITLE, tree.NOTES, tree.run),
    Benchmark(auth_flood.NAME, auth_flood.TITLE, auth_flood.NOTES, auth_flood.run),
    Benchmark(handoff.NAME, handoff.TITLE, handoff.NOTES, handoff.run),
    Benchmark(datasets_bench.NAME, datasets_bench.TITLE, datasets_bench.NOTES, datasets_bench.run),
    Benchmark(export.NAME, export.TITLE, export.NOTES, export.run),
    Benchmark(registry.NAME, registry.TITLE, registry.NOTES, registry.run),
    Benchmark(erasure.NAME, erasure.TITLE, erasure.NOTES, erasure.run),
    Benchmark(encryption.NAME, encryption.TITLE, encryption.NOTES, encryption.run),
    Benchmark(chain_cpu.NAME, chain_cpu.TITLE, chain_cpu.NOTES, chain_cpu.run),
    Benchmark(embedding.NAME, embedding.TITLE, embedding.NOTES, embedding.run),
)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=[b.name for b in BENCHMARKS],
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--quick", action="store_true", help="fewer turns: a smoke run")
    parser.add_argument("--keep-data", action="store_true", help="keep data dirs and logs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra environment variable for the services (what-if runs; repeatable)",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a target is missed"
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run each benchmark on this git commit first, and print them side by side",
    )
    return parser.parse_args(argv)


async def _run_all(
    selected: Sequence[Benchmark], options: Options, before: baseline.Checkout | None
) -> list[report.Section]:
    sections = []
    for benchmark in selected:
        figures: baseline.BaselineFigures = {}
        if before is not None:
            # The baseline right before the same benchmark on this tree: the two runs see the
            # same machine state as nearly as one run after the other can.
            began = time.monotonic()
            figures = await asyncio.to_thread(
                baseline.run_baseline,
                before,
                benchmark.name,
                quick=options.quick,
                env=options.env,
            )
            progress(options, f"{benchmark.name} on {before.ref}: {time.monotonic() - began:.0f} s")
        began = time.monotonic()
        rows = await benchmark.run(options)
        progress(options, f"{benchmark.name}: {time.monotonic() - began:.0f} s")
        section = report.Section(benchmark.name, benchmark.title, rows, benchmark.notes)
        if before is not None:
            section = baseline.side_by_side(section, figures, baseline.label_of(before))
        sections.append(section)
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmarks and prints the report; the exit status (see --check)."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(env) != len(args.env):
        print("--env takes KEY=VALUE", file=sys.stderr)
        return 2
    options = Options(quick=args.quick, keep_data=args.keep_data, verbose=not args.quiet, env=env)
    selected = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    at_start = machine()
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        before = stack.enter_context(baseline.checkout(args.baseline)) if args.baseline else None
        sections = asyncio.run(_run_all(selected, options, before))
    preamble = [
        f"chatplane benchmarks{' (quick run)' if options.quick else ''}",
        f"{at_start} (at start)",
        f"load average at end: {machine().rsplit('load average ', 1)[1]}",
        f"total time {time.monotonic() - began:.0f} s",
    ]
    if before is not None:
        preamble.append(baseline.describe(before))
    if env:
        preamble.append("extra environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
    render = report.render_markdown if args.markdown else report.render_text
    sys.stdout.write(render(sections, preamble))
    return 1 if args.check and report.failed(sections) else 0


if __name__ == "__main__":
    sys.exit(main())
