"""Encryption at rest (docs/security.md "Encryption at rest"): what sealing costs. The seal and
open of one message with a cached data key (AES-256-GCM), and the rows/s of the persistence
batch path (PostgreSQL's direct COPY) without sealing, sealing in the store, and
storing text that arrives sealed from the log (what the Agent writes)."""

from __future__ import annotations

import dataclasses
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from bench.harness import Options, progress
from bench.persistence import BATCH, running_postgres, workload
from bench.report import Row
from chatplane.crypto.kek import new_kek_line, parse_keks
from chatplane.crypto.keyring import Keyring, StoreKeySource, WrappedDataKey
from chatplane.crypto.sealed_store import sealed_store
from chatplane.persistence.store.base import ConversationStore, Message
from chatplane.persistence.store.postgres import PostgresConversationStore

NAME = "encryption"
TITLE = "encryption: seal/open per message, and the persistence batch path with sealing"
NOTES = (
    "Seal + open: one message's text with its owner's cached data key (AES-256-GCM, a fresh "
    "nonce, base64 into the text column), through the async Keyring API, in CPU time of the "
    "process (not wall time: the machine is shared), median of 5 rounds of 5,000.",
    "Batch path: write_messages in batches of 500, ~300 B texts, 200 owners; plain = no "
    "sealing, sealed in store = plaintext in and sealed by the store, sealed in log = text "
    "sealed by the Agent already (the store stores it as it is). Median of 3 alternating "
    "rounds; the spread (max-min)/median says how noisy the shared machine was.",
)
_ROUNDS = 3
_MICRO_COUNT = 5_000
_SIZES = (300, 2_000)


class _MemoryKeys:
    """Wrapped keys in a dict: the benchmark measures the cipher, not the key table."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], WrappedDataKey] = {}

    async def get_data_key(self, tenant_id: str, user_id: str) -> WrappedDataKey | None:
        return self._keys.get((tenant_id, user_id))

    async def add_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        return self._keys.setdefault((key.tenant_id, key.user_id), key)

    async def rewrap_data_key(self, key: WrappedDataKey) -> None:
        self._keys[(key.tenant_id, key.user_id)] = key

    async def delete_data_key(self, tenant_id: str, user_id: str) -> bool:
        return self._keys.pop((tenant_id, user_id), None) is not None


def _keyring() -> Keyring:
    keks = parse_keks(new_kek_line("bench"), "bench")
    return Keyring(StoreKeySource(_MemoryKeys(), keks), keks, cache_seconds=300)


async def _seal_open_us(size: int) -> float:
    keyring = _keyring()
    text = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    record = str(uuid.uuid4())
    await keyring.seal("t", "u", record, text)  # the key is created and cached
    rounds = []
    for _ in range(5):
        # CPU time of this process: on a shared machine, wall time mostly measures the others.
        started = time.process_time()
        for _ in range(_MICRO_COUNT):
            sealed = await keyring.seal("t", "u", record, text)
            await keyring.open("t", "u", sealed, record)
        rounds.append((time.process_time() - started) / _MICRO_COUNT * 1e6)
    return statistics.median(rounds)


async def _presealed(messages: Sequence[Message], keyring: Keyring) -> list[Message]:
    return [
        dataclasses.replace(
            m,
            text=await keyring.seal(m.owner.tenant_id, m.owner.user_id, m.message_id, m.text),
        )
        for m in messages
    ]


async def _rows_per_second(
    store: ConversationStore, messages: Sequence[Message]
) -> tuple[float, float]:
    """Rows per wall-clock second, and this process's CPU µs per row (PostgreSQL's server CPU
    is not in it)."""
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(messages), BATCH):
        await store.write_messages(messages[start : start + BATCH])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    return len(messages) / seconds, cpu_seconds / len(messages) * 1e6


Opener = Callable[[str], Awaitable[ConversationStore]]


async def _batch_path(
    options: Options, engine: str, open_store: Opener, messages: Sequence[Message]
) -> dict[str, list[tuple[float, float]]]:
    keyring = _keyring()
    presealed = await _presealed(messages, keyring)
    results: dict[str, list[tuple[float, float]]] = {
        "plain": [],
        "sealed in store": [],
        "sealed in log": [],
    }
    for round_number in range(_ROUNDS):
        for label, measured in results.items():
            raw = await open_store(f"{label}-{round_number}")
            store = raw if label == "plain" else sealed_store(raw, keyring)
            batch = presealed if label == "sealed in log" else messages
            try:
                measured.append(await _rows_per_second(store, batch))
            finally:
                await raw.close()
            progress(options, f"{NAME}: {engine} {label}: {measured[-1][0]:,.0f} rows/s")
    return results


def _rows(engine: str, results: dict[str, list[tuple[float, float]]]) -> list[Row]:
    rates = {label: [r for r, _ in v] for label, v in results.items()}
    cpu = {label: statistics.median(c for _, c in v) for label, v in results.items()}
    return [
        Row(
            NAME,
            f"{engine} batch path",
            "rows/s",
            {label: statistics.median(v) for label, v in rates.items()},
            precision=0,
        ),
        Row(
            NAME,
            f"{engine} spread of rounds",
            "%",
            {label: (max(v) - min(v)) / statistics.median(v) * 100 for label, v in rates.items()},
            precision=0,
        ),
        Row(NAME, f"{engine} client CPU per row", "us", cpu, precision=1),
    ]


async def run(options: Options) -> list[Row]:
    """The micro-benchmark, then the batch path on PostgreSQL."""
    rows = [
        Row(
            NAME,
            "seal + open one message",
            "us",
            {f"{size} B": await _seal_open_us(size) for size in _SIZES},
            precision=1,
        )
    ]
    count = 4_000 if options.quick else 20_000
    messages = workload(count)
    async with running_postgres(options) as postgres:

        async def copy_direct(name: str) -> ConversationStore:
            dsn = await postgres.database(f"crypto_{uuid.uuid4().hex[:10]}")
            return await PostgresConversationStore.open(dsn, pool_max_size=2)

        rows += _rows(
            "PostgreSQL COPY", await _batch_path(options, "PostgreSQL", copy_direct, messages)
        )
    return rows
