"""The Persistence consumer's metrics: batch size, how long a batch and its database
transaction take, what became of each record, and retried steps."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from chatplane.common.metrics import FAST_BUCKETS

BATCH_RECORDS = Histogram(
    "chatplane_persistence_batch_records",
    "Records per consumed batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
BATCH_DURATION = Histogram(
    "chatplane_persistence_batch_duration_seconds",
    "One batch's store step: decoding its records and storing them (with retries); the "
    "dead letters and the offset commit that follow it are not included",
    buckets=FAST_BUCKETS,
)
DB_WRITE_DURATION = Histogram(
    "chatplane_persistence_db_batch_duration_seconds",
    "The database transaction that stores one batch (including retries)",
    buckets=FAST_BUCKETS,
)
RECORDS = Counter(
    "chatplane_persistence_records_total",
    "Consumed records by outcome: stored, skipped (already stored or deleted), dead_lettered",
    ["outcome"],
)
RETRIES = Counter(
    "chatplane_persistence_consumer_retries_total",
    "Consumer steps retried after a failure (poll, store, dead-letter, commit)",
    ["step"],
)
for _outcome in ("stored", "skipped", "dead_lettered"):
    RECORDS.labels(_outcome)
for _step in ("poll", "store", "dead-letter", "commit"):
    RETRIES.labels(_step)
