"""The Memory service's metrics: how long recall (on the path to the first token) and
remember take."""

from __future__ import annotations

from prometheus_client import Histogram

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
