"""The CPU time the chain spends per turn and per token, process by process: the same stack,
emulator and client as `llm-chain` (Envoy + Gateway + Agent, API keys and a token quota on),
with each process's CPU counters (its own and its children's: Envoy is the edge's child) read
before and after a fixed number of turns. On a shared machine wall-clock latency follows the
other load; CPU time per turn changes much less, so this is what a before/after comparison of
the turn path reads (docs/benchmarks.md, "chain CPU")."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from pathlib import Path

from bench import llm_chain
from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row
from bench.stats import ns_to_ms, percentile
from chatplane.internal.v1 import quota_pb2
from chatplane.llm_emulator.process import running_emulator
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2_grpc

NAME = "chain-cpu"
TITLE = "CPU time per turn and per token of each process of the chain (llm-chain's workload)"
# (streams, turns per stream): one stream alone, then 50 at once.
LEVELS = ((1, 20), (50, 2))
QUICK_LEVELS = ((1, 4), (10, 1))
PROCESSES = ("edge", "gateway", "agent", "memory", "persistence")
# Seconds of no traffic over which each process's idle CPU (its polling loops) is measured:
# at one stream most of a turn's CPU is this, not the turn.
IDLE_SECONDS = 3.0
NOTES = (
    "workload: llm-chain's (emulator: OpenAI-compatible, first token after 600 ms, 60 "
    "tokens/s, 60 tokens; one API key per user, a token quota for the tenant)",
    "CPU = utime + stime of the process and its descendants (/proc), after - before the "
    "measured turns, divided by the turns (ms/turn) or by the tokens delivered (us/token)",
    "edge = the edge launcher and its Envoy; one warm-up turn before each level",
    f"idle = CPU per second over {IDLE_SECONDS:g} s without traffic (polling loops), before the "
    "levels: at c=1 a turn lasts ~1.65 s, so per-turn CPU at c=1 includes ~1.65 s of it",
)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of every live descendant."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
        total += (int(fields[11]) + int(fields[12])) / ticks
        pending.extend(_children(current))
    return total


def _snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: _cpu_seconds(pid) for name, pid in pids.items() if name in PROCESSES}


async def run(options: Options) -> list[Row]:
    """Run each level's turns and read every process's CPU counters around them."""
    levels = QUICK_LEVELS if options.quick else LEVELS
    arguments = (
        "--first-token-seconds",
        f"{llm_chain.FIRST_TOKEN_SECONDS:g}",
        "--tokens-per-second",
        f"{llm_chain.TOKENS_PER_SECOND:g}",
        "--tokens",
        str(llm_chain.ANSWER_TOKENS),
        "--stamp-tokens",
    )
    per_turn: dict[str, dict[str, float]] = {}
    per_token: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, float | None]] = {}
    async with running_emulator(*arguments) as emulator:
        env = {**llm_chain.STACK_ENV, "CHATPLANE_OPENAI_BASE_URL": f"{emulator.url}/v1"}
        async with running_stack(NAME, env, options, edge=True) as stack:
            most = max(level for level, _ in levels)
            tenant = llm_chain.TENANT
            keys = await create_keys(stack, [(tenant, f"user-{i}") for i in range(most)])
            async with stack.channel("persistence") as channel:
                await PersistenceClient(channel).quota.SetQuota(
                    quota_pb2.SetQuotaRequest(tenant_id=tenant, tokens_per_day=10**12),
                    timeout=10,
                )
            channels = [await user_channel(stack.info().address("edge")) for _ in range(most)]
            users = [
                (gateway_pb2_grpc.GatewayServiceStub(c), (("authorization", f"Bearer {k}"),))
                for c, k in zip(channels, keys, strict=True)
            ]
            pids = stack.info().pids
            idle_before = _snapshot(pids)
            await asyncio.sleep(IDLE_SECONDS)
            idle = {
                name: (spent - idle_before[name]) * 1000 / IDLE_SECONDS
                for name, spent in _snapshot(pids).items()
            }
            try:
                for level, turns in levels:
                    column = f"c={level}"
                    progress(options, f"{NAME}: {column}, warm-up")
                    await llm_chain._chatplane_streams(users[:level], 1, llm_chain.Sample())
                    progress(options, f"{NAME}: {column}, {turns} turns per stream")
                    before = _snapshot(pids)
                    sample = await llm_chain._measure(
                        emulator,
                        functools.partial(llm_chain._chatplane_streams, users[:level], turns),
                    )
                    after = _snapshot(pids)
                    count = level * turns
                    tokens = max(sample.tokens, 1)
                    for name in before:
                        spent = after[name] - before[name]
                        per_turn.setdefault(name, {})[column] = spent * 1000 / count
                        per_token.setdefault(name, {})[column] = spent * 1e6 / tokens
                    latency.setdefault("TTFT p50", {})[column] = ns_to_ms(
                        percentile(sample.ttft_ns, 0.5)
                    )
                    latency.setdefault("per-token lag p99", {})[column] = ns_to_ms(
                        percentile(sample.lags_ns, 0.99)
                    )
                    latency.setdefault("failed streams", {})[column] = float(sample.errors)
            finally:
                for channel in channels:
                    await channel.close()
    rows = [Row(NAME, f"{name} CPU per turn", "ms", values) for name, values in per_turn.items()]
    rows.extend(
        Row(NAME, f"{name} idle CPU (no traffic)", "ms/s", {"idle": value})
        for name, value in idle.items()
    )
    rows.append(
        Row(
            NAME,
            "chain CPU per turn (all processes)",
            "ms",
            {c: sum(v[c] for v in per_turn.values()) for c in next(iter(per_turn.values()))},
        )
    )
    rows.extend(
        Row(NAME, f"{name} CPU per token", "us", values, precision=0)
        for name, values in per_token.items()
    )
    rows.extend(Row(NAME, f"chatplane {what}", "ms", values) for what, values in latency.items())
    return rows
