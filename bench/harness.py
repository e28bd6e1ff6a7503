"""What the benchmarks share: their options, the real stack (four service processes, embedded
profile) in a temporary data dir, API keys made through Persistence, a Gateway channel
per simulated user, and a description of the machine the numbers were measured on."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from chatplane.common.tls import TlsFiles, client_channel
from chatplane.internal.v1 import identity_pb2
from chatplane.launcher import Stack
from chatplane.launcher.stack import SERVICES
from chatplane.persistence.client import PersistenceClient
from chatplane.v1 import admin_resources_pb2

# One TCP connection per simulated user: without a local subchannel pool, channels to the
# same target with the same options share one connection inside the process.
USER_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


@dataclass(frozen=True, slots=True)
class Options:
    """Options of one `python -m bench` run, passed to every benchmark."""

    quick: bool = False  # fewer turns: a smoke run, not numbers to publish
    keep_data: bool = False  # keep the stacks' data dirs (service logs) after the run
    verbose: bool = False  # progress on stderr
    # Extra CHATPLANE_* (or other) variables for every stack, over the benchmark's own: for
    # what-if runs; the report's preamble lists them.
    env: Mapping[str, str] = field(default_factory=dict)


def progress(options: Options, message: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    if options.verbose:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def running_stack(
    name: str,
    env: Mapping[str, str],
    options: Options,
    tls_dir: Path | None = None,
    *,
    edge: bool = False,
) -> AsyncIterator[Stack]:
    """The four services on free loopback ports, with `env` (then `options.env`) over this
    process's environment, in a fresh temporary data dir (removed afterwards unless
    `options.keep_data`); on mutual TLS with the certificates of `tls_dir` when given; with
    `edge`, Envoy in front of the Gateway too."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"chatplane-bench-{name}-"))
    stack = Stack(
        data_dir=data_dir,
        host="127.0.0.1",
        ports=dict.fromkeys(SERVICES, 0),
        env={**os.environ, **env, **options.env},
        tls_dir=tls_dir,
        edge=edge,
    )
    try:
        await stack.start()
        try:
            yield stack
        finally:
            await stack.stop(timeout=15)
    finally:
        if options.keep_data:
            print(f"[bench] {name}: data dir and service logs kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def create_keys(stack: Stack, owners: list[tuple[str, str]]) -> list[str]:
    """One new API key per (tenant, user), made through IdentityService.CreateApiKey."""
    keys: list[str] = []
    async with stack.channel("persistence") as channel:
        stub = PersistenceClient(channel)
        for tenant, user in owners:
            response = await stub.identity.CreateApiKey(
                identity_pb2.CreateApiKeyRequest(
                    owner=admin_resources_pb2.Owner(tenant_id=tenant, user_id=user),
                    label="bench",
                ),
                timeout=10,
            )
            keys.append(response.api_key)
    return keys


async def user_channel(address: str, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """A connected channel of its own (its own TCP connection) to `address`; mutual TLS with
    the client certificate `tls` when given."""
    channel = client_channel(address, tls, USER_CHANNEL_OPTIONS)
    await channel.channel_ready()
    return channel


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    """One line: CPUs, CPU model, Python, and the load average when called."""
    cpus = len(os.sched_getaffinity(0))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {cpus} CPUs ({_cpu_model()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load}"
    )
