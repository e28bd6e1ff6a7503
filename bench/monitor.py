"""Resource use during a benchmark: the RSS of the watched processes (the services and the bench
client), sampled with psutil every 100 ms from the bench process (peak per phase); the CPU
seconds (user + system) each consumed in a phase, from the kernel's per-process counters at the
phase's start and end; and the CPU seconds the rest of the machine consumed meanwhile (all
CPUs' busy time less the watched processes'), since other work on the machine skews latency."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL_SECONDS = 0.1


@dataclass(slots=True)
class PhaseUsage:
    """What each process used during one phase."""

    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    # Busy CPU seconds of every other process on the machine during the phase.
    other_cpu_seconds: float = 0.0
    samples: int = 0


class ProcessMonitor:
    """Samples the RSS of named processes in the background; `phase()` measures a span."""

    def __init__(self, pids: Mapping[str, int], interval: float = SAMPLE_INTERVAL_SECONDS) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval = interval
        self._current: PhaseUsage | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProcessMonitor:
        self._task = asyncio.create_task(self._sample_forever())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _cpu(self) -> dict[str, float]:
        usage: dict[str, float] = {}
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                usage[name] = times.user + times.system
        return usage

    def _sample(self) -> None:
        usage = self._current
        if usage is None:
            return
        for name, process in self._processes.items():
            with contextlib.suppress(psutil.Error):
                rss = process.memory_info().rss
                usage.peak_rss_bytes[name] = max(rss, usage.peak_rss_bytes.get(name, 0))
        usage.samples += 1

    async def _sample_forever(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self._interval)

    @staticmethod
    def _machine_busy() -> float:
        """Busy CPU seconds of all CPUs since boot; time stolen by the hypervisor counts as
        busy (the CPU was not ours). guest time is already inside user time on Linux."""
        times = psutil.cpu_times()
        return sum(
            getattr(times, name, 0.0)
            for name in ("user", "nice", "system", "irq", "softirq", "steal")
        )

    @contextlib.contextmanager
    def phase(self) -> Iterator[PhaseUsage]:
        """Measures the enclosed span; the usage is complete when the block exits."""
        usage = PhaseUsage()
        start = self._cpu()
        busy = self._machine_busy()
        self._current = usage
        self._sample()
        try:
            yield usage
        finally:
            self._sample()
            self._current = None
            end = self._cpu()
            usage.cpu_seconds = {n: end[n] - start[n] for n in end if n in start}
            busy = self._machine_busy() - busy
            usage.other_cpu_seconds = max(0.0, busy - sum(usage.cpu_seconds.values()))
