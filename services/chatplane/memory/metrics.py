"""The Memory service's metrics: how long recall (on the path to the first token) and
remember take, and how often the PostgreSQL index's HNSW search falls back to an exact scan."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from chatplane.common.metrics import FAST_BUCKETS

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
