"""The whole chain against a model paced like a real one, beside the peer users would pick:
the LLM emulator (OpenAI-compatible protocol, first token after 600 ms, 60 tokens/s) answers
(1) a lean OpenAI-compatible streaming client directly (the baseline), (2) the same client
through LiteLLM's proxy (one worker, a master key) and (3) chatplane's gRPC client through
Envoy + Gateway + Agent (API keys, rate limit and token quotas on). Every token's text is its
emission time, so each token's lag is measured exactly; "added" is a chain's percentile less
the baseline's, measured in the same run. Also: tokens delivered / tokens emitted, and the
most concurrent chatplane streams whose added per-token p99 stays under 5 ms."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import httpx

from bench.harness import Options, create_keys, progress, running_stack, user_channel
from bench.report import Row, Target
from bench.stats import ns_to_ms, percentile
from chatplane.internal.v1 import quota_pb2
from chatplane.llm_emulator.process import EmulatorProcess, running_emulator
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import gateway_pb2, gateway_pb2_grpc

NAME = "llm-chain"
TITLE = (
    "LLM chain: Envoy + Gateway + Agent vs LiteLLM's proxy, in front of one paced "
    "OpenAI-compatible emulator"
)

FIRST_TOKEN_SECONDS = 0.6
TOKENS_PER_SECOND = 60.0
ANSWER_TOKENS = 60  # one second of streaming after the first token
MODEL = "bench-model"
MASTER_KEY = "sk-chatplane-bench"
TENANT = "bench-chain"
LEVELS = (1, 50, 100)
# After LEVELS, chatplane alone at rising concurrency (two turns per stream: sustained),
# until its added per-token p99 passes PEAK_LAG_MS.
RAMP = (1, 10, 25, 50, 75, 100, 150, 200, 300)
PEAK_LAG_MS = 5.0
CALL_TIMEOUT_SECONDS = 60.0
LITELLM_READY_SECONDS = 180.0
QUESTION = "Tell me about the weather on the coast this weekend."

STACK_ENV = {
    "CHATPLANE_LLM_BACKEND": "openai_compatible",
    "CHATPLANE_LLM_MODEL": MODEL,
    "CHATPLANE_OPENAI_API_KEY": "emulator",
    "CHATPLANE_RATE_LIMIT_PER_MINUTE": "60000",
    "CHATPLANE_RATE_LIMIT_BURST": "1000",
    "CHATPLANE_EDGE_RATE_LIMIT_PER_SECOND": "10000",
    "CHATPLANE_EDGE_RATE_LIMIT_BURST": "10000",
}
NOTES = (
    f"emulator: OpenAI-compatible streaming, first token after {FIRST_TOKEN_SECONDS * 1000:g} "
    f"ms, {TOKENS_PER_SECOND:g} tokens/s, {ANSWER_TOKENS} tokens per answer; c=N: N streams "
    "at once, each user one turn after another",
    "direct: a lean OpenAI-compatible streaming client (aiohttp, SSE lines, json.loads per "
    "chunk) to the emulator; LiteLLM: the same client to `litellm --num_workers 1` with a "
    "master key (requirements/bench-litellm.txt, "
    "own venv); chatplane: the gRPC client to Envoy -> Gateway -> Agent (openai_compatible "
    "backend), one API key per user, a token quota set for the tenant (reserve + settle on "
    "every turn)",
    "TTFT = request sent -> first token received; per-token lag = receipt time - the "
    "emulator's emission time written in the token (same clock); added = the chain's "
    "percentile - the direct percentile at the same c",
    "delivered / emitted = tokens received by the clients / tokens the emulator wrote",
    "peak = the largest c (of "
    + ", ".join(str(c) for c in RAMP)
    + f", each stream two turns, stopping at the first miss) at which chatplane's added "
    f"per-token p99 <= {PEAK_LAG_MS:g} ms (baseline: the direct run at the nearest c)",
    "each target gets one unmeasured warm-up turn first (LiteLLM's first request is slow)",
    "ratio = chatplane added / LiteLLM added (targets: <= 0.5 at c=1, <= 0.1 at c=50); the "
    "client, the emulator and every process share the machine's cores",
)


@dataclass(slots=True)
class Sample:
    """What one target's clients saw at one concurrency."""

    ttft_ns: list[int] = field(default_factory=list)
    lags_ns: list[int] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    emitted: int = 0


def _stamps(text: str, receipt_ns: int, sample: Sample) -> None:
    for word in text.split():
        if word.isdigit():
            sample.lags_ns.append(receipt_ns - int(word))
            sample.tokens += 1


def _turns(options: Options) -> int:
    return 1 if options.quick else 2


@dataclass(frozen=True, slots=True)
class OpenAiTarget:
    """An OpenAI-compatible chat-completions endpoint and the client session to stream from it."""

    session: aiohttp.ClientSession
    url: str
    api_key: str


async def _openai_streams(target: OpenAiTarget, level: int, turns: int, sample: Sample) -> None:
    """`level` users streaming chat completions, read as SSE with one json.loads per chunk:
    a lean client, so that at 50-100 streams the client's own parsing (the SDK's pydantic
    models cost several times more) does not become the lag being measured."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": QUESTION}],
            "stream": True,
            "max_tokens": 1024,
        }
    )
    headers = {"authorization": f"Bearer {target.api_key}", "content-type": "application/json"}

    async def user() -> None:
        for _ in range(turns):
            sent = time.time_ns()
            first = True
            try:
                async with target.session.post(target.url, data=body, headers=headers) as response:
                    response.raise_for_status()
                    async for line in response.content:
                        receipt = time.time_ns()
                        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                            continue
                        choices = json.loads(line[6:]).get("choices") or ()
                        text = choices[0].get("delta", {}).get("content") if choices else None
                        if not text:
                            continue
                        if first:
                            sample.ttft_ns.append(receipt - sent)
                            first = False
                        _stamps(text, receipt, sample)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                sample.errors += 1

    await asyncio.gather(*(user() for _ in range(level)))


async def _chatplane_streams(
    users: Sequence[tuple[gateway_pb2_grpc.GatewayServiceAsyncStub, tuple[tuple[str, str], ...]]],
    turns: int,
    sample: Sample,
) -> None:
    async def user(
        stub: gateway_pb2_grpc.GatewayServiceAsyncStub, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        for _ in range(turns):
            sent = time.time_ns()
            first = True
            try:
                call = stub.Chat(
                    gateway_pb2.ChatRequest(text=QUESTION),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                async for event in call:
                    receipt = time.time_ns()
                    if event.WhichOneof("event") != "delta":
                        continue
                    if first:
                        sample.ttft_ns.append(receipt - sent)
                        first = False
                    _stamps(event.delta.text, receipt, sample)
            except grpc.aio.AioRpcError:
                sample.errors += 1

    await asyncio.gather(*(user(stub, metadata) for stub, metadata in users))


async def _emitted(emulator: EmulatorProcess) -> int:
    return sum(int(r.get("tokens_sent", 0)) for r in await emulator.requests())


async def _measure(emulator: EmulatorProcess, run: Callable[[Sample], Awaitable[None]]) -> Sample:
    await emulator.reset()
    sample = Sample()
    await run(sample)
    sample.emitted = await _emitted(emulator)
    return sample


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _litellm(emulator_url: str, options: Options) -> AsyncIterator[str]:
    """LiteLLM's proxy (one worker, a master key) in front of the emulator; its base URL."""
    command = await _litellm_command()
    workdir = Path(tempfile.mkdtemp(prefix="chatplane-bench-litellm-"))
    config = workdir / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {emulator_url}/v1\n"
        "      api_key: emulator\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    port = _free_port()
    env = {
        **os.environ,
        # Offline: the model cost map shipped in the wheel, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    log = (workdir / "litellm.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        command,
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe, asyncio.timeout(LITELLM_READY_SECONDS):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"litellm exited; see {workdir / 'litellm.log'}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await probe.get(f"{url}/health/liveliness", timeout=2)
                    if response.status_code == 200:
                        break
                await asyncio.sleep(0.5)
        progress(options, f"litellm ready on {url}")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()
        if options.keep_data:
            progress(options, f"litellm config and log kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _litellm_command() -> str:
    """The `litellm` command of its own venv, installed (cached) by scripts/bench-litellm.sh."""
    installer = await asyncio.create_subprocess_exec(
        "scripts/bench-litellm.sh", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(1800):
        output, _ = await installer.communicate()
    if installer.returncode != 0:
        raise RuntimeError("scripts/bench-litellm.sh failed")
    return output.decode().strip()


def _openai_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000),
        timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS),
    )


def _added(chain: list[int], direct: list[int], fraction: float) -> float | None:
    measured, baseline = percentile(chain, fraction), percentile(direct, fraction)
    if measured is None or baseline is None:
        return None
    return ns_to_ms(measured - baseline)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs <= 0:
        return None
    return max(0.0, ours) / theirs


async def run(options: Options) -> list[Row]:
    """Measure the direct baseline, LiteLLM and chatplane at each concurrency, then ramp."""
    results: dict[str, dict[int, Sample]] = {
        "direct": {},
        "litellm": {},
        "chatplane": {},
        "ramp": {},
    }
    arguments = (
        "--first-token-seconds",
        f"{FIRST_TOKEN_SECONDS:g}",
        "--tokens-per-second",
        f"{TOKENS_PER_SECOND:g}",
        "--tokens",
        str(ANSWER_TOKENS),
        "--stamp-tokens",
    )
    levels = (1, 10) if options.quick else LEVELS
    ramp = (5,) if options.quick else RAMP
    async with running_emulator(*arguments) as emulator:
        env = {**STACK_ENV, "CHATPLANE_OPENAI_BASE_URL": f"{emulator.url}/v1"}
        async with (
            _litellm(emulator.url, options) as litellm_url,
            running_stack(NAME, env, options, edge=True) as stack,
        ):
            most = max((*levels, *ramp))
            keys = await create_keys(stack, [(TENANT, f"user-{i}") for i in range(most)])
            async with stack.channel("persistence") as channel:
                await PersistenceClient(channel).quota.SetQuota(
                    quota_pb2.SetQuotaRequest(tenant_id=TENANT, tokens_per_day=10**12),
                    timeout=10,
                )
            edge = stack.info().address("edge")
            channels = [await user_channel(edge) for _ in range(most)]
            users = [
                (gateway_pb2_grpc.GatewayServiceStub(c), (("authorization", f"Bearer {k}"),))
                for c, k in zip(channels, keys, strict=True)
            ]
            session = _openai_session()
            direct = OpenAiTarget(session, f"{emulator.url}/v1/chat/completions", "emulator")
            through_litellm = OpenAiTarget(
                session, f"{litellm_url}/v1/chat/completions", MASTER_KEY
            )
            try:
                progress(options, f"{NAME}: warm-up")
                await _openai_streams(direct, 1, 1, Sample())
                await _openai_streams(through_litellm, 1, 1, Sample())
                await _chatplane_streams(users[:1], 1, Sample())
                turns = _turns(options)
                for level in levels:
                    progress(options, f"{NAME}: direct c={level}")
                    results["direct"][level] = await _measure(
                        emulator, functools.partial(_openai_streams, direct, level, turns)
                    )
                    progress(options, f"{NAME}: litellm c={level}")
                    results["litellm"][level] = await _measure(
                        emulator,
                        functools.partial(_openai_streams, through_litellm, level, turns),
                    )
                    progress(options, f"{NAME}: chatplane c={level}")
                    results["chatplane"][level] = await _measure(
                        emulator, functools.partial(_chatplane_streams, users[:level], turns)
                    )
                for level in ramp:
                    progress(options, f"{NAME}: ramp, chatplane c={level}")
                    sample = await _measure(
                        emulator, functools.partial(_chatplane_streams, users[:level], 2)
                    )
                    results["ramp"][level] = sample
                    lag = _added(sample.lags_ns, _nearest(results["direct"], level).lags_ns, 0.99)
                    if lag is None or lag > PEAK_LAG_MS:
                        break
            finally:
                await session.close()
                for channel in channels:
                    await channel.close()
    return _rows(results, levels)


def _nearest(samples: dict[int, Sample], level: int) -> Sample:
    return samples[min(samples, key=lambda measured: abs(measured - level))]


def _rows(results: dict[str, dict[int, Sample]], levels: tuple[int, ...]) -> list[Row]:
    direct, litellm, ours = results["direct"], results["litellm"], results["chatplane"]
    fractions = (("p50", 0.5), ("p99", 0.99))
    measures = (("TTFT", "ttft_ns"), ("per-token lag", "lags_ns"))

    def samples(chain: dict[int, Sample], level: int, attribute: str) -> list[int]:
        found: list[int] = getattr(chain[level], attribute) if level in chain else []
        return found

    rows: list[Row] = []
    for what, attribute in measures:
        for label, fraction in fractions:
            rows.append(
                Row(
                    NAME,
                    f"direct {what} {label}",
                    "ms",
                    {
                        f"c={c}": ns_to_ms(percentile(samples(direct, c, attribute), fraction))
                        for c in levels
                    },
                )
            )
    for name, chain in (("chatplane", ours), ("LiteLLM", litellm)):
        for what, attribute in measures:
            for label, fraction in fractions:
                rows.append(
                    Row(
                        NAME,
                        f"{name} added {what} {label}",
                        "ms",
                        {
                            f"c={c}": _added(
                                samples(chain, c, attribute),
                                samples(direct, c, attribute),
                                fraction,
                            )
                            for c in levels
                        },
                    )
                )
    # chatplane added / LiteLLM added: one row per target (<= 0.5 at c=1, <= 0.1 at c=50).
    for what, attribute in measures:
        for label, fraction in fractions:
            for level, limit in zip(levels[:2], (0.5, 0.1), strict=True):
                baseline = samples(direct, level, attribute)
                ratio = _ratio(
                    _added(samples(ours, level, attribute), baseline, fraction),
                    _added(samples(litellm, level, attribute), baseline, fraction),
                )
                rows.append(
                    Row(
                        NAME,
                        f"ratio chatplane/LiteLLM added {what} {label}",
                        "x",
                        {f"c={level}": ratio},
                        target=Target(limit, f"c={level}"),
                        precision=3,
                    )
                )
    for name, chain in (("chatplane", ours), ("LiteLLM", litellm)):
        rows.append(
            Row(
                NAME,
                f"{name} tokens delivered / emitted",
                "ratio",
                {
                    f"c={c}": chain[c].tokens / chain[c].emitted
                    if c in chain and chain[c].emitted
                    else None
                    for c in levels
                },
                target=Target(1.0, op="=="),
                precision=4,
            )
        )
        rows.append(
            Row(
                NAME,
                f"{name} failed streams",
                "count",
                {f"c={c}": float(chain[c].errors) if c in chain else None for c in levels},
                precision=0,
            )
        )
    ramp_lags = {
        level: _added(sample.lags_ns, _nearest(direct, level).lags_ns, 0.99)
        for level, sample in sorted(results["ramp"].items())
    }
    rows.append(
        Row(
            NAME,
            "ramp: chatplane added per-token lag p99",
            "ms",
            {f"c={level}": lag for level, lag in ramp_lags.items()},
        )
    )
    peak = max(
        (level for level, lag in ramp_lags.items() if lag is not None and lag <= PEAK_LAG_MS),
        default=0,
    )
    rows.append(
        Row(
            NAME,
            f"chatplane peak concurrent streams, added per-token p99 <= {PEAK_LAG_MS:g} ms",
            "streams",
            {"peak": float(peak)},
            precision=0,
        )
    )
    return rows
