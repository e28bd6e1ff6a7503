"""The Memory service's metrics: how long recall (on the path to the first token) and
remember take, how often the PostgreSQL index's HNSW search falls back to an exact scan, and
the indexer of the message log: its batches, its lag behind the log, what became of each
record."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from chatplane.common.metrics import DURATION_BUCKETS, FAST_BUCKETS

RECALL_DURATION = Histogram(
    "chatplane_memory_recall_duration_seconds",
    "Recall: recent turns + hybrid search (query embedding included)",
    buckets=FAST_BUCKETS,
)
REMEMBER_DURATION = Histogram(
    "chatplane_memory_remember_duration_seconds",
    "Remember: embedding and indexing a finished turn",
    buckets=FAST_BUCKETS,
)
INDEX_EXACT_FALLBACKS = Counter(
    "chatplane_memory_index_exact_fallbacks_total",
    "Dense searches of the PostgreSQL memory index whose HNSW scan came back short (its scan "
    "budget spent on rows the caller may not see) and were answered by the exact scan",
)
INDEX_BATCH_RECORDS = Histogram(
    "chatplane_memory_index_batch_records",
    "Records per batch the memory indexer consumed from the message log",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
INDEX_BATCH_DURATION = Histogram(
    "chatplane_memory_index_batch_duration_seconds",
    "One indexing batch: opening its texts, one embedding call, the index write",
    buckets=FAST_BUCKETS,
)
INDEXING_LAG = Histogram(
    "chatplane_memory_indexing_lag_seconds",
    "From a message's append to the message log until it is indexed (recall may lag the "
    "turn by this much)",
    buckets=DURATION_BUCKETS,
)
INDEX_RECORDS = Counter(
    "chatplane_memory_index_records_total",
    "Records the memory indexer consumed, by outcome: indexed, skipped (indexed already, no "
    "text, or its owner's data key destroyed), dead_lettered",
    ["outcome"],
)
INDEX_RETRIES = Counter(
    "chatplane_memory_index_retries_total",
    "Memory indexer steps retried after a failure (poll, open, index, dead-letter, commit)",
    ["step"],
)
for _outcome in ("indexed", "skipped", "dead_lettered"):
    INDEX_RECORDS.labels(_outcome)
for _step in ("poll", "open", "index", "dead-letter", "commit"):
    INDEX_RETRIES.labels(_step)
