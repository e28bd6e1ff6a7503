"""Splitting documents into overlapping chunks (chatplane.memory.chunking)."""

from __future__ import annotations

import itertools
import random

import pytest

from chatplane.memory.chunking import chunk_text, split_text

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def prose(rng: random.Random, sentences: int) -> str:
    parts = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        parts.append(" ".join(words).capitalize() + ".")
        if rng.random() < 0.2:
            parts.append("\n\n")
    return " ".join(parts)


def test_blank_text_has_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n \t") == []
    assert chunk_text("# Title only\n", markdown=True) == []


def test_short_text_is_one_chunk() -> None:
    chunks = chunk_text("Refunds within 30 days.")
    assert [(c.index, c.heading, c.text) for c in chunks] == [(0, "", "Refunds within 30 days.")]


def test_chunks_respect_the_size_and_are_numbered_in_order() -> None:
    text = prose(random.Random(1), 300)
    chunks = chunk_text(text, size=400, overlap=60)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(0 < len(c.text) <= 400 for c in chunks)


def test_consecutive_chunks_overlap() -> None:
    text = prose(random.Random(2), 200)
    pieces = split_text(text, 300, 80)
    for before, after in itertools.pairwise(pieces):
        # The start of each piece repeats text from the end of the one before.
        head = after[:20]
        assert head in before, (before[-100:], after[:100])


def test_no_overlap_means_disjoint_pieces_covering_every_word() -> None:
    text = prose(random.Random(3), 150)
    pieces = split_text(text, 250, 0)
    assert " ".join(pieces).split() == text.split()


def test_every_word_survives_with_overlap() -> None:
    text = prose(random.Random(4), 150)
    pieces = split_text(text, 250, 50)
    joined = " ".join(pieces).split()
    for word_index, word in enumerate(text.split()):
        assert word in joined, word_index


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    paragraph = "word " * 50  # 250 characters
    text = paragraph.strip() + ".\n\n" + paragraph.strip() + "."
    pieces = split_text(text, 300, 0)
    assert pieces[0].endswith(".") and pieces[0].count("word") == 50
    sentences = "Short sentence here. " * 20
    pieces = split_text(sentences, 100, 0)
    assert all(p.endswith(".") for p in pieces)


def test_a_long_word_is_cut_hard() -> None:
    pieces = split_text("x" * 1000, 300, 50)
    assert all(len(p) <= 300 for p in pieces)
    assert "".join(pieces).count("x") >= 1000


def test_markdown_sections_never_share_a_chunk_and_carry_their_heading_path() -> None:
    text = (
        "# Guide\nIntro text.\n\n## Install\nRun the installer.\n\n### Linux\n"
        "Use the package.\n\n## Use\nStart it.\n"
    )
    chunks = chunk_text(text, markdown=True)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Guide", "Guide\nIntro text."),
        ("Guide > Install", "Guide > Install\nRun the installer."),
        ("Guide > Install > Linux", "Guide > Install > Linux\nUse the package."),
        ("Guide > Use", "Guide > Use\nStart it."),
    ]


def test_markdown_headings_inside_code_fences_are_code() -> None:
    text = "# Setup\n```sh\n# not a heading\nmake run\n```\nDone.\n"
    chunks = chunk_text(text, markdown=True)
    assert len(chunks) == 1
    assert "# not a heading" in chunks[0].text


def test_every_chunk_of_a_long_section_starts_with_the_heading() -> None:
    text = "## Refunds\n" + prose(random.Random(5), 100)
    chunks = chunk_text(text, markdown=True, size=300, overlap=40)
    assert len(chunks) > 3
    assert all(c.text.startswith("Refunds\n") and len(c.text) <= 300 for c in chunks)


def test_plain_text_ignores_hashes() -> None:
    chunks = chunk_text("# not a heading\nbody")
    assert chunks[0].heading == "" and chunks[0].text == "# not a heading\nbody"


def test_line_ends_and_blank_runs_are_normalised() -> None:
    chunks = chunk_text("a  \r\nb\r\n\r\n\r\n\r\nc")
    assert chunks[0].text == "a\nb\n\nc"


@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (100, 50), (100, -1)])
def test_unusable_sizes_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("text", size=size, overlap=overlap)


@pytest.mark.parametrize("seed", range(30))
def test_random_text_always_terminates_within_bounds(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab .\n#,!?"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3000)))
    size = rng.randint(20, 500)
    overlap = rng.randint(0, size // 2 - 1)
    for markdown in (False, True):
        chunks = chunk_text(text, markdown=markdown, size=size, overlap=overlap)
        assert all(0 < len(c.text) <= size for c in chunks)
        assert len(chunks) <= len(text)
