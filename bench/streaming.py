"""Streaming benchmark: what the Gateway and the Agent add on top of the model backend while
answers stream, at concurrency 1 and at 50 simultaneous streams (50 users, 50 API keys, 50
connections, several turns each), on the real stack with the offline responder paced like a
real model. Per token it measures the relay lag (client receipt time - the backend's emission
time stamped inside the Agent); per answer the whole pre-model overhead (client time to first
token - the backend's configured first-token delay); it checks every stream's integrity
(contiguous sequence numbers from 1, `done` last, `done.delta_count` = deltas received), and
records the service processes' peak RSS and CPU seconds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.monitor import PhaseUsage, ProcessMonitor
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.launcher.stack import SERVICES
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc, resources_pb2

NAME = "streaming"
TITLE = "streaming: Gateway + Agent relay of a model's answer (embedded profile, loopback gRPC)"

# The offline responder paced like a hosted model: 40 tokens/s, first token after 300 ms.
TOKENS_PER_SECOND = 40.0
FIRST_TOKEN_SECONDS = 0.3
STACK_ENV = {
    "CHATPLANE_OFFLINE_TOKENS_PER_SECOND": f"{TOKENS_PER_SECOND:g}",
    "CHATPLANE_OFFLINE_FIRST_TOKEN_SECONDS": f"{FIRST_TOKEN_SECONDS:g}",
    # The benchmark's users send a turn as soon as the previous answer is done.
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000",
    "CHATPLANE_RATE_LIMIT_BURST": "1000",
}
CALL_TIMEOUT_SECONDS = 60.0
PHASE_TIMEOUT_SECONDS = 100.0
LOOP_PROBE_SECONDS = 0.005
CLIENT = "bench client"
NOTES = (
    f"offline responder paced at {TOKENS_PER_SECOND:g} tokens/s, first token after "
    f"{FIRST_TOKEN_SECONDS * 1000:g} ms; c=N: N users streaming at once, each its own key and "
    "connection, one turn after another",
    "relay lag = client receipt time - delta.emit_time_unix_nanos (both time.time_ns(), same "
    "machine); added TTFT = that lag for the first delta of each answer",
    "whole pre-model overhead = client time to first token - the configured first-token delay: "
    "auth, BeginTurn in Persistence, memory recall (query embedding), prompt assembly, relay; "
    "`started` is sent by the Agent when the model's first token arrives (it names the model "
    "that answers, after any fallback), so request -> `started` includes the first-token delay",
    "percentiles are nearest-rank: with fewer than 100 samples p99 is the maximum",
    "peak RSS sampled every 100 ms during the phase; CPU seconds = user + system in the phase; "
    "other processes = the machine's busy CPU time (incl. steal) less ours: other work skews "
    "the lags",
)

# Short questions like a user's, so the offline answers are about 50-90 words.
QUESTIONS = (
    "How do I reset the password of my account?",
    "My cat is named Bartholomew and he loves sardines.",
    "What are your opening hours on public holidays?",
    "Can you summarise our conversation about the invoice so far?",
    "I ordered a blue kettle last week and it has not arrived.",
    "Which plan includes single sign-on and audit logs?",
    "Please remind me what I said about the delivery address.",
    "Is there a discount for annual billing on the team plan?",
    "The export to CSV fails with a timeout after two minutes.",
    "Where can I download last month's usage report?",
    "My favourite colour is teal and I work night shifts.",
    "How long do you keep the history of my chats?",
    "Can two people share one workspace without paying twice?",
    "Why was my card declined when I upgraded yesterday?",
    "What did I tell you about my cat earlier?",
    "Does the mobile app work offline on a plane?",
)


@dataclass(frozen=True, slots=True)
class Phase:
    """One load setting: `users` users, each running `turns` turns one after another, all
    users at once; a new conversation every `turns_per_conversation` turns."""

    column: str
    users: int
    turns: int
    turns_per_conversation: int


@dataclass(slots=True)
class TurnResult:
    """What the client saw of one Chat stream."""

    sent_ns: int
    started_receipt_ns: int | None = None
    memory_degraded: bool = False
    first_receipt_ns: int | None = None
    first_lag_ns: int | None = None
    lags_ns: list[int] = field(default_factory=list)
    deltas: int = 0
    lost: int = 0
    reordered: int = 0
    violations: list[str] = field(default_factory=list)
    error: str | None = None
    conversation_id: str = ""

    @property
    def failed(self) -> bool:
        """The stream did not end with a proper `done`."""
        return self.error is not None


@dataclass(slots=True)
class PhaseResult:
    """The turns of one phase and the resources used meanwhile."""

    phase: Phase
    turns: list[TurnResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    usage: PhaseUsage = field(default_factory=PhaseUsage)
    loop_delays_ns: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class User:
    """A simulated user: its own API key and its own connection to the Gateway."""

    stub: gateway_pb2_grpc.GatewayServiceAsyncStub
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]


def check_stream(
    kinds: Sequence[str], sequences: Sequence[int], done: resources_pb2.TurnDone | None
) -> tuple[int, int, list[str]]:
    """(lost, reordered, violations) of one stream's events, in arrival order.

    lost: sequence numbers in 1..max(done.delta_count, highest seen) never received;
    reordered: deltas that arrived after a delta with the same or a higher sequence number;
    violations: any other break of the stream contract."""
    highest = 0
    reordered = 0
    for sequence in sequences:
        if sequence <= highest:
            reordered += 1
        highest = max(highest, sequence)
    expected = max(done.delta_count if done else 0, highest)
    lost = expected - len({s for s in sequences if 1 <= s <= expected})
    violations: list[str] = []
    if not kinds or kinds[0] != "started":
        violations.append("first event is not `started`")
    if done is not None:
        if kinds[-1] != "done" or kinds.count("done") != 1:
            violations.append("`done` is not the single last event")
        if done.delta_count != len(sequences):
            violations.append(f"done.delta_count {done.delta_count} != {len(sequences)} deltas")
        if done.finish_reason != resources_pb2.FINISH_REASON_STOP:
            violations.append(f"finish reason {done.finish_reason}")
    if "usage" not in kinds:
        violations.append("no `usage` event")
    return lost, reordered, violations


async def run_turn(
    user: User, text: str, conversation_id: str, results: list[TurnResult]
) -> TurnResult:
    """One Chat call; each event is timestamped (wall clock) as soon as it is received. The
    result is in `results` from the start, so a stream cut by the phase's time limit counts."""
    kinds: list[str] = []
    sequences: list[int] = []
    done: resources_pb2.TurnDone | None = None
    result = TurnResult(sent_ns=time.time_ns(), conversation_id=conversation_id)
    results.append(result)
    call = user.stub.Chat(
        gateway_pb2.ChatRequest(conversation_id=conversation_id, text=text),
        metadata=user.metadata,
        timeout=CALL_TIMEOUT_SECONDS,
    )
    try:
        async for event in call:
            received = time.time_ns()
            kind = event.WhichOneof("event")
            if kind is None:
                kinds.append("unknown")
                continue
            kinds.append(kind)
            if kind == "delta":
                lag = received - event.delta.emit_time_unix_nanos
                if result.first_receipt_ns is None:
                    result.first_receipt_ns = received
                    result.first_lag_ns = lag
                result.lags_ns.append(lag)
                sequences.append(event.delta.sequence)
            elif kind == "started":
                result.started_receipt_ns = received
                result.conversation_id = event.started.conversation_id
                result.memory_degraded = event.started.memory_degraded
            elif kind == "done":
                done = event.done
    except grpc.aio.AioRpcError as error:
        result.error = f"{error.code().name}: {error.details()}"
    except asyncio.CancelledError:
        call.cancel()
        result.error = "cut by the phase time limit"
        raise
    finally:
        result.deltas = len(sequences)
        result.lost, result.reordered, result.violations = check_stream(kinds, sequences, done)
        if result.error is None and done is None:
            result.error = "stream ended without `done`"
    return result


async def _user_turns(
    user: User, index: int, phase: Phase, start: asyncio.Event, results: list[TurnResult]
) -> None:
    await start.wait()
    conversation = ""
    for turn in range(phase.turns):
        if turn % phase.turns_per_conversation == 0:
            conversation = ""
        question = QUESTIONS[(index * 7 + turn) % len(QUESTIONS)]
        conversation = (await run_turn(user, question, conversation, results)).conversation_id


async def _probe_loop(delays: list[int]) -> None:
    """How late this process's event loop wakes up: a busy client inflates the lags."""
    while True:
        before = time.monotonic_ns()
        await asyncio.sleep(LOOP_PROBE_SECONDS)
        delays.append(time.monotonic_ns() - before - int(LOOP_PROBE_SECONDS * 1e9))


async def run_phase(users: Sequence[User], phase: Phase, monitor: ProcessMonitor) -> PhaseResult:
    """The phase's users all at once, bounded in time; streams cut by the limit are failed."""
    result = PhaseResult(phase=phase)
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(_user_turns(user, i, phase, start, result.turns))
        for i, user in enumerate(users)
    ]
    probe = asyncio.create_task(_probe_loop(result.loop_delays_ns))
    await asyncio.sleep(0)  # every user is now waiting for the start signal
    with monitor.phase() as usage:
        began = time.monotonic()
        start.set()
        _, pending = await asyncio.wait(tasks, timeout=PHASE_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.wall_seconds = time.monotonic() - began
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    result.usage = usage
    return result


async def _make_users(address: str, keys: Sequence[str]) -> list[User]:
    users = []
    for key in keys:
        channel = await user_channel(address)
        users.append(
            User(
                stub=gateway_pb2_grpc.GatewayServiceStub(channel),
                channel=channel,
                metadata=(("authorization", f"Bearer {key}"),),
            )
        )
    return users


def _phases(options: Options) -> tuple[Phase, Phase]:
    if options.quick:
        return Phase("c=1", 1, 8, 4), Phase("c=50", 50, 2, 2)
    return Phase("c=1", 1, 30, 5), Phase("c=50", 50, 3, 3)


async def run(options: Options) -> list[Row]:
    """Starts the stack, warms it up, runs concurrency 1 then 50, and returns the rows."""
    single, many = _phases(options)
    warmup = (Phase("warm-up 1", 1, 3, 3), Phase("warm-up 10", 10, 1, 1))
    progress(options, f"{NAME}: starting the stack")
    async with running_stack(NAME, STACK_ENV, options) as stack:
        info = stack.info()
        pids = {name: stack.services[name].process.pid for name in SERVICES}
        # Every phase has users of its own: measured users start with empty memory.
        phases = (*warmup, single, many)
        owners = [
            (f"bench-tenant-{i % 10}", f"bench-user-{i}")
            for i in range(sum(p.users for p in phases))
        ]
        keys = iter(await create_keys(stack, owners))
        users = [
            await _make_users(info.address("gateway"), [next(keys) for _ in range(p.users)])
            for p in phases
        ]
        results = []
        try:
            async with ProcessMonitor({**pids, CLIENT: os.getpid()}) as monitor:
                for phase, phase_users in zip(phases, users, strict=True):
                    if phase in warmup:
                        progress(options, f"{NAME}: {phase.column}")
                        await run_phase(phase_users, phase, monitor)
                        continue
                    await asyncio.sleep(1.0)  # let the log consumer catch up between phases
                    progress(options, f"{NAME}: {phase.column}")
                    results.append(await run_phase(phase_users, phase, monitor))
        finally:
            for user in (u for phase_users in users for u in phase_users):
                await user.channel.close()
    progress(options, f"{NAME}: done")
    return rows(results)


def _per_phase(
    results: Sequence[PhaseResult], value: Callable[[PhaseResult], float | None]
) -> dict[str, float | None]:
    return {r.phase.column: value(r) for r in results}


def _percentiles(
    results: Sequence[PhaseResult], samples: Callable[[PhaseResult], list[int]], fraction: float
) -> dict[str, float | None]:
    return _per_phase(results, lambda r: ns_to_ms(percentile(samples(r), fraction)))


def _total(
    results: Sequence[PhaseResult], value: Callable[[TurnResult], int]
) -> dict[str, float | None]:
    return _per_phase(results, lambda r: float(sum(value(t) for t in r.turns)))


def _lags(r: PhaseResult) -> list[int]:
    return [lag for t in r.turns for lag in t.lags_ns]


def _first_lags(r: PhaseResult) -> list[int]:
    return [t.first_lag_ns for t in r.turns if t.first_lag_ns is not None]


def _overheads(r: PhaseResult) -> list[int]:
    delay_ns = int(FIRST_TOKEN_SECONDS * 1e9)
    return [
        t.first_receipt_ns - t.sent_ns - delay_ns for t in r.turns if t.first_receipt_ns is not None
    ]


def _to_started(r: PhaseResult) -> list[int]:
    return [t.started_receipt_ns - t.sent_ns for t in r.turns if t.started_receipt_ns is not None]


def rows(results: Sequence[PhaseResult]) -> list[Row]:
    """The table of the benchmark, one column per phase (the first is concurrency 1, the last
    the most concurrent)."""
    c1, cmax = results[0].phase.column, results[-1].phase.column
    zero = Target(0, op="==")
    out = [
        Row(NAME, "turns (streams)", "", _total(results, lambda t: 1), precision=0),
        Row(
            NAME,
            "streams failed (error / no done)",
            "",
            _total(results, lambda t: t.failed),
            zero,
            0,
        ),
        Row(NAME, "tokens (deltas) received", "", _total(results, lambda t: t.deltas), precision=0),
        Row(NAME, "lost tokens", "", _total(results, lambda t: t.lost), zero, 0),
        Row(
            NAME,
            "reordered or duplicate tokens",
            "",
            _total(results, lambda t: t.reordered),
            zero,
            0,
        ),
        Row(
            NAME,
            "other stream-contract violations",
            "",
            _total(results, lambda t: len(t.violations)),
            zero,
            0,
        ),
        Row(NAME, "relay lag per token p50", "ms", _percentiles(results, _lags, 0.50)),
        Row(
            NAME,
            "relay lag per token p99",
            "ms",
            _percentiles(results, _lags, 0.99),
            Target(5, cmax),
        ),
        Row(NAME, "relay lag per token max", "ms", _percentiles(results, _lags, 1.0)),
        Row(
            NAME,
            "added TTFT (first-token relay lag) p50",
            "ms",
            _percentiles(results, _first_lags, 0.50),
            Target(3, c1),
        ),
        Row(
            NAME,
            "added TTFT (first-token relay lag) p99",
            "ms",
            _percentiles(results, _first_lags, 0.99),
            Target(6, c1),
        ),
        Row(
            NAME,
            "whole pre-model overhead p50 (no target)",
            "ms",
            _percentiles(results, _overheads, 0.50),
        ),
        Row(
            NAME,
            "whole pre-model overhead p99 (no target)",
            "ms",
            _percentiles(results, _overheads, 0.99),
        ),
        Row(
            NAME,
            "request -> `started` (first token) p50",
            "ms",
            _percentiles(results, _to_started, 0.5),
        ),
        Row(
            NAME,
            "request -> `started` (first token) p99",
            "ms",
            _percentiles(results, _to_started, 0.99),
        ),
        Row(
            NAME,
            "answers without memory (recall failed/timed out)",
            "",
            _total(results, lambda t: t.memory_degraded),
            precision=0,
        ),
        Row(
            NAME,
            "bench client event-loop delay p99",
            "ms",
            _percentiles(results, lambda r: r.loop_delays_ns, 0.99),
        ),
        Row(
            NAME, "phase wall time", "s", _per_phase(results, lambda r: r.wall_seconds), precision=1
        ),
    ]
    processes = (*SERVICES, CLIENT)
    out += [
        Row(NAME, f"peak RSS {name}", "MiB", _peak_rss(results, name), precision=0)
        for name in processes
    ]
    out += [Row(NAME, f"CPU seconds {name}", "s", _cpu(results, name)) for name in processes]
    out.append(
        Row(
            NAME,
            "CPU seconds other processes (not ours)",
            "s",
            _per_phase(results, lambda r: r.usage.other_cpu_seconds),
        )
    )
    cpus = len(os.sched_getaffinity(0))
    out.append(
        Row(
            NAME,
            "machine share used by other work (>10%: noisy)",
            "%",
            _per_phase(
                results, lambda r: 100 * r.usage.other_cpu_seconds / (r.wall_seconds * cpus)
            ),
            precision=0,
        )
    )
    return out


def _peak_rss(results: Sequence[PhaseResult], name: str) -> dict[str, float | None]:
    return _per_phase(results, lambda r: _mib(r.usage.peak_rss_bytes.get(name)))


def _cpu(results: Sequence[PhaseResult], name: str) -> dict[str, float | None]:
    return _per_phase(results, lambda r: r.usage.cpu_seconds.get(name))


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20
