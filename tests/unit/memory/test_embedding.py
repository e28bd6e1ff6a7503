"""Unit tests of the numpy sentence embedder (no torch: agreement with sentence-transformers is
checked by hand, see the report of the change that added it)."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from chatplane.memory.embedding import BUNDLED_MODEL_NAME, SentenceEmbedder, bundled_model_dir

SENTENCES = [
    "How do I reset my password?",
    "password reset steps",
    "the weather in Paris",
    "",
    "Café crème brûlée à Montréal",
    "東京の天気は晴れです。",
    "My order #12345 hasn't arrived yet.",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative "
    "phosphorylation in eukaryotic organisms.",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


def similarity(embedder: SentenceEmbedder, a: str, b: str) -> float:
    first, second = embedder.embed([a, b])
    return float(first @ second)


def test_dimension_and_name(embedder: SentenceEmbedder) -> None:
    assert embedder.dimension == 384
    assert embedder.model_name == BUNDLED_MODEL_NAME
    assert embedder.max_seq_length == 256
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32


def test_rows_are_unit_norm(embedder: SentenceEmbedder) -> None:
    norms = np.linalg.norm(embedder.embed(SENTENCES), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_deterministic(embedder: SentenceEmbedder) -> None:
    np.testing.assert_array_equal(embedder.embed(SENTENCES), embedder.embed(SENTENCES))


def test_batch_equals_one_by_one(embedder: SentenceEmbedder) -> None:
    batched = embedder.embed(SENTENCES)
    single = np.vstack([embedder.embed([text]) for text in SENTENCES])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_small_batches_keep_the_callers_order() -> None:
    # Tiny batches force texts of different lengths into different batches after sorting.
    small = SentenceEmbedder(max_batch_size=2, max_batch_tokens=40)
    np.testing.assert_allclose(
        small.embed(SENTENCES),
        np.vstack([small.embed([text]) for text in SENTENCES]),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    ("text", "paraphrase", "unrelated"),
    [
        ("How do I reset my password?", "password reset steps", "the weather in Paris"),
        (
            "I would like a refund for my order",
            "Can I get my money back for this purchase?",
            "The cat is sleeping on the sofa",
        ),
        (
            "The meeting was moved to Thursday afternoon",
            "We rescheduled the meeting for Thursday",
            "Photosynthesis converts light into chemical energy",
        ),
        (
            "My laptop will not turn on",
            "The computer does not power up",
            "I love hiking in the mountains",
        ),
    ],
)
def test_paraphrase_is_closer_than_unrelated(
    embedder: SentenceEmbedder, text: str, paraphrase: str, unrelated: str
) -> None:
    assert similarity(embedder, text, paraphrase) > similarity(embedder, text, unrelated) + 0.2


def test_empty_input(embedder: SentenceEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
    (empty,) = embedder.embed([""])
    assert np.linalg.norm(empty) == pytest.approx(1.0, abs=1e-5)


def test_a_bare_string_is_refused(embedder: SentenceEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_long_text_is_truncated(embedder: SentenceEmbedder) -> None:
    head = " ".join(f"topic{i} alpha beta" for i in range(200))  # well over 256 word pieces
    long_text, longer_text = embedder.embed([head, head + " and a tail that is cut off"])
    assert np.linalg.norm(long_text) == pytest.approx(1.0, abs=1e-5)
    # Only the first 256 word pieces count, so what follows them changes nothing.
    np.testing.assert_allclose(long_text, longer_text, atol=1e-6)


def test_concurrent_calls_agree(embedder: SentenceEmbedder) -> None:
    expected = embedder.embed(SENTENCES)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: embedder.embed(SENTENCES), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_explicit_model_dir() -> None:
    embedder = SentenceEmbedder(bundled_model_dir())
    assert embedder.model_name == "model"
    assert embedder.embed(["hello"]).shape == (1, 384)
