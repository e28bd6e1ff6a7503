"""A registry variant's retrieval filters (docs/registry.md): which recalled items its prompt
may use, by kind (earlier turns, document chunks) and by document name. Memory is asked for
more items than k when a filter is set, then the filter keeps the best k that match."""

from __future__ import annotations

from dataclasses import replace

from chatplane.agent.memory_client import Recollection
from chatplane.v1 import resources_pb2

_KINDS = {
    resources_pb2.CITATION_KIND_TURN: "turn",
    resources_pb2.CITATION_KIND_DOCUMENT: "document",
}
# How many more items memory is asked for when a filter may drop some (capped at memory's 100).
OVERFETCH = 4
MAX_TOP_K = 100


def recall_k(k: int, kinds: tuple[str, ...] | None, documents: tuple[str, ...] | None) -> int:
    """How many items to ask memory for."""
    if kinds is None and documents is None:
        return k
    return min(MAX_TOP_K, k * OVERFETCH)


def _kept(
    citation: resources_pb2.Citation,
    kinds: tuple[str, ...] | None,
    documents: tuple[str, ...] | None,
) -> bool:
    kind = _KINDS.get(citation.kind, "")
    if kinds is not None and kind not in kinds:
        return False
    return documents is None or kind != "document" or citation.title in documents


def filtered(
    recollection: Recollection,
    k: int,
    kinds: tuple[str, ...] | None,
    documents: tuple[str, ...] | None,
) -> Recollection:
    """The best `k` recalled items that pass the filters (history is never filtered)."""
    if kinds is None and documents is None:
        return recollection
    keep = [
        index
        for index, citation in enumerate(recollection.citations)
        if _kept(citation, kinds, documents)
    ][:k]
    conversations = recollection.passage_conversations
    return replace(
        recollection,
        passages=[recollection.passages[i] for i in keep],
        citations=[recollection.citations[i] for i in keep],
        passage_conversations=[conversations[i] for i in keep] if conversations else (),
    )
