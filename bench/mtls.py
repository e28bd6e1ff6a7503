"""mTLS benchmark: what native mutual TLS adds to the time to first token, in one run. Two
stacks run side by side (one plaintext, one on mTLS with `chatplane certs init` certificates:
client → Gateway → Agent → Memory and Gateway → Persistence all encrypted and verified); one
user per stack sends the same questions, the two alternating turn by turn so that machine noise
falls on both alike. Measured: time to first token on an open connection, the same for a turn
on a new connection (handshake included), and the connection handshake alone."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.harness import (
    USER_CHANNEL_OPTIONS,
    Options,
    create_keys,
    progress,
    running_stack,
    user_channel,
)
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from bench.streaming import FIRST_TOKEN_SECONDS, QUESTIONS, STACK_ENV, TurnResult, User, run_turn
from chatplane.common.tls import TlsCredentials, TlsFiles
from chatplane.launcher import Stack
from chatplane.launcher.certificates import CLIENT_PARTY, init_certificates, party_files
from chatplane.v1 import gateway_pb2_grpc

NAME = "mtls"
TITLE = "mtls: added time to first token with native mutual TLS (embedded profile, loopback)"
OFF, ON, ADDED = "mTLS off", "mTLS on", "added (on - off)"
TURNS_PER_CONVERSATION = 4
NOTES = (
    f"offline responder paced as in `streaming` (first token after "
    f"{FIRST_TOKEN_SECONDS * 1000:g} ms); concurrency 1; the two stacks run at the same time "
    "and their turns alternate",
    "TTFT = client receipt of the first delta - request sent; pre-model overhead = TTFT - the "
    "configured first-token delay (auth, BeginTurn, recall, prompt, relay: three internal hops "
    "on mTLS when on)",
    "new connection: a fresh channel per turn (TCP + TLS 1.3 handshake with client certificate "
    "verification when on), as a one-shot client such as `chatplane chat -m` does",
    "handshake = a fresh channel until READY, nothing sent; internal channels between services "
    "are long-lived, so their handshakes are not on the turn path",
    "`added` = on - off of the same percentile; percentiles are nearest-rank",
)


@dataclass(frozen=True, slots=True)
class Side:
    """One of the two stacks, with what a client needs to reach its Gateway."""

    column: str
    stack: Stack
    key: str
    tls: TlsFiles | None
    credentials: grpc.ChannelCredentials | None

    @property
    def address(self) -> str:
        """The Gateway's host:port."""
        return self.stack.info().address("gateway")

    def fresh_channel(self) -> grpc.aio.Channel:
        """A new channel with its own connection (credentials loaded once, not per channel)."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.address, options=USER_CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.address, self.credentials, USER_CHANNEL_OPTIONS)

    def user(self, channel: grpc.aio.Channel) -> User:
        """A benchmark user on `channel`."""
        return User(
            stub=gateway_pb2_grpc.GatewayServiceStub(channel),
            channel=channel,
            metadata=(("authorization", f"Bearer {self.key}"),),
        )


@dataclass(slots=True)
class Samples:
    """What one side measured."""

    open_turns: list[TurnResult] = field(default_factory=list)
    new_connection_turns: list[TurnResult] = field(default_factory=list)
    handshakes_ns: list[int] = field(default_factory=list)


def _counts(options: Options) -> tuple[int, int, int]:
    """(turns on an open connection, turns on a new connection, handshakes) per side."""
    return (12, 6, 20) if options.quick else (40, 16, 100)


@contextlib.asynccontextmanager
async def _certificates() -> AsyncIterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="chatplane-bench-tls-"))
    try:
        init_certificates(directory / "tls", days=1)
        yield directory / "tls"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _side(column: str, stack: Stack, tls: TlsFiles | None) -> Side:
    (key,) = await create_keys(stack, [(f"bench-{NAME}", f"user-{column}")])
    credentials = None if tls is None else TlsCredentials.load(tls).channel_credentials()
    return Side(column, stack, key, tls, credentials)


async def _open_turns(sides: Sequence[Side], turns: int, samples: dict[str, Samples]) -> None:
    """`turns` turns per side on one long-lived connection each, alternating sides."""
    channels = [await user_channel(side.address, side.tls) for side in sides]
    try:
        users = [side.user(channel) for side, channel in zip(sides, channels, strict=True)]
        conversations = [""] * len(sides)
        for turn in range(turns):
            if turn % TURNS_PER_CONVERSATION == 0:
                conversations = [""] * len(sides)
            # Who goes first alternates too: neither side always follows the other.
            order = range(len(sides)) if turn % 2 == 0 else reversed(range(len(sides)))
            for index in order:
                side = sides[index]
                result = await run_turn(
                    users[index],
                    QUESTIONS[turn % len(QUESTIONS)],
                    conversations[index],
                    samples[side.column].open_turns,
                )
                conversations[index] = result.conversation_id
    finally:
        for channel in channels:
            await channel.close()


async def _new_connection_turns(
    sides: Sequence[Side], turns: int, samples: dict[str, Samples]
) -> None:
    """`turns` one-shot turns per side, each on a channel of its own opened by the call."""
    for turn in range(turns):
        order = sides if turn % 2 == 0 else list(reversed(sides))
        for side in order:
            async with side.fresh_channel() as channel:
                await run_turn(
                    side.user(channel),
                    QUESTIONS[turn % len(QUESTIONS)],
                    "",
                    samples[side.column].new_connection_turns,
                )


async def _handshakes(sides: Sequence[Side], count: int, samples: dict[str, Samples]) -> None:
    for attempt in range(count):
        order = sides if attempt % 2 == 0 else list(reversed(sides))
        for side in order:
            channel = side.fresh_channel()
            began = time.perf_counter_ns()
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            samples[side.column].handshakes_ns.append(time.perf_counter_ns() - began)
            await channel.close()


async def run(options: Options) -> list[Row]:
    """Starts both stacks, warms them up, measures alternating turns and handshakes."""
    open_turns, new_turns, handshakes = _counts(options)
    progress(options, f"{NAME}: starting a plaintext and an mTLS stack")
    async with (
        _certificates() as certificates,
        running_stack(f"{NAME}-off", STACK_ENV, options) as plain,
        running_stack(f"{NAME}-on", STACK_ENV, options, tls_dir=certificates) as secure,
    ):
        sides = [
            await _side(OFF, plain, None),
            await _side(ON, secure, party_files(certificates, CLIENT_PARTY)),
        ]
        warmup = {side.column: Samples() for side in sides}
        progress(options, f"{NAME}: warm-up")
        await _open_turns(sides, 3, warmup)
        samples = {side.column: Samples() for side in sides}
        progress(options, f"{NAME}: {open_turns} turns per side on open connections")
        await _open_turns(sides, open_turns, samples)
        progress(options, f"{NAME}: {new_turns} turns per side on new connections")
        await _new_connection_turns(sides, new_turns, samples)
        progress(options, f"{NAME}: {handshakes} handshakes per side")
        await _handshakes(sides, handshakes, samples)
    progress(options, f"{NAME}: done")
    return rows(samples)


def _ttft(turns: Sequence[TurnResult]) -> list[int]:
    return [t.first_receipt_ns - t.sent_ns for t in turns if t.first_receipt_ns is not None]


def _overhead(turns: Sequence[TurnResult]) -> list[int]:
    delay_ns = int(FIRST_TOKEN_SECONDS * 1e9)
    return [ttft - delay_ns for ttft in _ttft(turns)]


def _compare(
    samples: dict[str, Samples], series: Callable[[Samples], list[int]], fraction: float
) -> dict[str, float | None]:
    off = ns_to_ms(percentile(series(samples[OFF]), fraction))
    on = ns_to_ms(percentile(series(samples[ON]), fraction))
    added = None if off is None or on is None else on - off
    return {OFF: off, ON: on, ADDED: added}


def rows(samples: dict[str, Samples]) -> list[Row]:
    """The table: one column per side and one for the difference."""
    zero = Target(0, op="==")
    failed = {
        column: float(sum(t.failed for t in (*s.open_turns, *s.new_connection_turns)))
        for column, s in samples.items()
    }
    return [
        Row(
            NAME,
            "turns (open / new connection)",
            "",
            {c: float(len(s.open_turns) + len(s.new_connection_turns)) for c, s in samples.items()},
            precision=0,
        ),
        Row(NAME, "streams failed", "", failed, zero, 0),
        Row(
            NAME,
            "TTFT, open connection p50",
            "ms",
            _compare(samples, lambda s: _ttft(s.open_turns), 0.5),
            Target(5, ADDED),
        ),
        Row(
            NAME,
            "TTFT, open connection p99",
            "ms",
            _compare(samples, lambda s: _ttft(s.open_turns), 0.99),
        ),
        Row(
            NAME,
            "pre-model overhead, open connection p50",
            "ms",
            _compare(samples, lambda s: _overhead(s.open_turns), 0.5),
        ),
        Row(
            NAME,
            "TTFT, new connection per turn p50",
            "ms",
            _compare(samples, lambda s: _ttft(s.new_connection_turns), 0.5),
            Target(10, ADDED),
        ),
        Row(
            NAME,
            "TTFT, new connection per turn p99",
            "ms",
            _compare(samples, lambda s: _ttft(s.new_connection_turns), 0.99),
        ),
        Row(
            NAME,
            "connection handshake p50",
            "ms",
            _compare(samples, lambda s: s.handshakes_ns, 0.5),
        ),
        Row(
            NAME,
            "connection handshake p99",
            "ms",
            _compare(samples, lambda s: s.handshakes_ns, 0.99),
        ),
    ]
