"""Unit tests of reciprocal rank fusion."""

from __future__ import annotations

import pytest

from chatplane.memory.index.fusion import FusedRank, fuse_reciprocal_rank


def test_an_id_in_both_lists_wins() -> None:
    fused = fuse_reciprocal_rank(["a", "b", "c"], ["c", "d"], k=10, rrf_k=60)
    assert fused[0] == FusedRank("c", 1 / 63 + 1 / 61, keyword_rank=3, dense_rank=1)
    assert [f.item_id for f in fused] == ["c", "a", "b", "d"]


def test_scores_are_reciprocal_ranks() -> None:
    fused = fuse_reciprocal_rank(["a", "b"], [], k=10, rrf_k=0)
    assert fused == [FusedRank("a", 1.0, 1, None), FusedRank("b", 0.5, 2, None)]


def test_ties_are_deterministic() -> None:
    # Equal scores: the better single rank first, then the id.
    assert [f.item_id for f in fuse_reciprocal_rank(["b"], ["a"], k=2)] == ["a", "b"]
    assert [f.item_id for f in fuse_reciprocal_rank(["x", "z"], ["y"], k=3)] == ["x", "y", "z"]


def test_k_limits_and_repeats_keep_the_best_rank() -> None:
    fused = fuse_reciprocal_rank(["a", "a", "b", "c"], ["b"], k=2)
    assert [(f.item_id, f.keyword_rank) for f in fused] == [("b", 3), ("a", 1)]
    assert fuse_reciprocal_rank(["a"], ["a"], k=0) == []
    assert fuse_reciprocal_rank([], [], k=5) == []


def test_negative_rrf_k_is_refused() -> None:
    with pytest.raises(ValueError, match="rrf_k"):
        fuse_reciprocal_rank(["a"], [], k=1, rrf_k=-1)
