"""Reciprocal rank fusion: merges a keyword ranking and a dense ranking into one hybrid ranking.

Engine-neutral so every memory index implementation fuses the same way (Cormack et al., 2009).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_RRF_K = 60


@dataclass(frozen=True, slots=True)
class FusedRank:
    """One item of a fused ranking; ranks are 1-based, None where the item is not in that list."""

    item_id: str
    score: float
    keyword_rank: int | None
    dense_rank: int | None


def fuse_reciprocal_rank(
    keyword: Sequence[str], dense: Sequence[str], k: int, rrf_k: int = DEFAULT_RRF_K
) -> list[FusedRank]:
    """The best `k` ids by sum of 1 / (rrf_k + rank) over the two rankings, best first.

    Only ranks count, never raw scores, so BM25 and cosine scales need no calibration. An id
    repeated within one list keeps its best rank. Ties go to the better single rank, then to
    the id, so the order is deterministic.
    """
    if k <= 0:
        return []
    if rrf_k < 0:
        raise ValueError("rrf_k must not be negative")
    keyword_ranks = _ranks(keyword)
    dense_ranks = _ranks(dense)
    fused: list[FusedRank] = []
    for item_id in keyword_ranks.keys() | dense_ranks.keys():
        keyword_rank = keyword_ranks.get(item_id)
        dense_rank = dense_ranks.get(item_id)
        score = sum(1.0 / (rrf_k + rank) for rank in (keyword_rank, dense_rank) if rank is not None)
        fused.append(FusedRank(item_id, score, keyword_rank, dense_rank))
    fused.sort(
        key=lambda f: (
            -f.score,
            min(rank for rank in (f.keyword_rank, f.dense_rank) if rank is not None),
            f.item_id,
        )
    )
    return fused[:k]


def _ranks(ranking: Sequence[str]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for position, item_id in enumerate(ranking, start=1):
        ranks.setdefault(item_id, position)
    return ranks
