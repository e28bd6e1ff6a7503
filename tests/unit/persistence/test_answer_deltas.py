"""The delta ends kept with a stored answer: only ends that describe the text are kept, and
they survive their stored form."""

from __future__ import annotations

import pytest

from chatplane.persistence.store.answer_deltas import decode, delta_rows, valid_delta_ends


@pytest.mark.parametrize(
    ("ends", "text", "kept"),
    [
        ([2, 5, 6], "ab cd!", (2, 5, 6)),
        ([1, 3], "é🙂x", (1, 3)),  # code points, not bytes or UTF-16 units
        ([], "abc", ()),
        ([2, 4], "abc", ()),  # does not end at the text's end
        ([2, 2, 3], "abc", ()),  # an empty delta: not what was streamed
        ([3, 2, 3], "abc", ()),  # not ascending
        ([0, 3], "abc", ()),
    ],
)
def test_only_ends_that_describe_the_text_are_kept(
    ends: list[int], text: str, kept: tuple[int, ...]
) -> None:
    assert valid_delta_ends(ends, text) == kept


def test_ends_survive_their_stored_form() -> None:
    assert decode(None) == () and decode("") == ()
    assert decode("3,10,11") == (3, 10, 11)
    assert delta_rows([]) == []
