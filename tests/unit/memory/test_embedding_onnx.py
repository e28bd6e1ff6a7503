"""Unit tests of the ONNX Runtime embedding backend, checked against the numpy reference backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest

from chatplane.memory.embedding import SentenceEmbedder, bundled_model_dir
from chatplane.memory.embedding_onnx import (
    GRAPH_VERSION,
    QUANTIZATION_VERSION,
    OnnxSentenceEncoder,
    weights_digest,
)

MIN_COSINE = 0.99999
# Per element: the backends differ by ~3e-7; the cosine bound alone would even accept GELU's tanh
# approximation (max difference 4e-4, cosine 0.999997), this does not.
ATOL = 1e-5

LONG_TEXT = " ".join(f"topic{i} alpha beta" for i in range(200))  # well over 256 word pieces
TEXTS = [
    "",
    "a",
    "How do I reset my password?",
    "password reset steps",
    "the weather in Paris",
    "Café crème brûlée à Montréal",
    "東京の天気は晴れです。",
    "我想预订明天下午去上海的火车票",
    "서울에서 부산까지 얼마나 걸려요?",
    "Привет, как дела?",
    "My order #12345 hasn't arrived yet.",
    "!!! ??? ... ;;;",
    "emoji test 🎉🚀 with symbols ∑∫√",
    "def embed(texts): return model.encode(texts, normalize_embeddings=True)",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative "
    "phosphorylation in eukaryotic organisms.",
    "Could you remind me what we discussed about the quarterly budget meeting yesterday",
    " ".join(["word"] * 120),
    " ".join(f"token{i}" for i in range(90)),
    LONG_TEXT,
    LONG_TEXT + " and a tail that is cut off",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_embedder(cache_dir: Path) -> SentenceEmbedder:
    return SentenceEmbedder(backend="onnx", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def numpy_embedder() -> SentenceEmbedder:
    return SentenceEmbedder(backend="numpy")


def row_cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1, dtype=np.float64) / norms, dtype=np.float64)


def test_onnx_is_the_default(cache_dir: Path) -> None:
    assert SentenceEmbedder(cache_dir=cache_dir).backend == "onnx"


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        SentenceEmbedder(backend="torch")  # type: ignore[arg-type]


def test_public_api_is_unchanged(onnx_embedder: SentenceEmbedder) -> None:
    assert onnx_embedder.dimension == 384
    assert onnx_embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    vectors = onnx_embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_batched_matches_numpy(
    onnx_embedder: SentenceEmbedder, numpy_embedder: SentenceEmbedder
) -> None:
    # One call: texts of very different lengths share padded batches.
    onnx_vectors, numpy_vectors = onnx_embedder.embed(TEXTS), numpy_embedder.embed(TEXTS)
    cosines = row_cosines(onnx_vectors, numpy_vectors)
    assert cosines.min() >= MIN_COSINE, dict(zip(TEXTS, cosines.tolist(), strict=True))
    np.testing.assert_allclose(onnx_vectors, numpy_vectors, atol=ATOL)


def test_one_by_one_matches_numpy(
    onnx_embedder: SentenceEmbedder, numpy_embedder: SentenceEmbedder
) -> None:
    for text in TEXTS:
        onnx_vector, numpy_vector = onnx_embedder.embed([text]), numpy_embedder.embed([text])
        (cosine,) = row_cosines(onnx_vector, numpy_vector)
        assert cosine >= MIN_COSINE, text
        np.testing.assert_allclose(onnx_vector, numpy_vector, atol=ATOL, err_msg=text)


def test_padding_changes_nothing(onnx_embedder: SentenceEmbedder) -> None:
    # Forcing the short texts into a batch padded to the longest one (max_batch_tokens is not
    # reached) must give the same vectors as embedding them alone, unpadded.
    batched = onnx_embedder.embed(TEXTS)
    single = np.vstack([onnx_embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_padded_batch_directly(onnx_embedder: SentenceEmbedder) -> None:
    # The encoder itself, bypassing the length sorting: one short row padded to a long one.
    encoder = onnx_embedder._onnx
    assert encoder is not None
    ids_short = [101, 7592, 102]
    ids_long = [101, *range(2000, 2040), 102]
    ids = np.zeros((2, len(ids_long)), dtype=np.int64)
    mask = np.zeros(ids.shape, dtype=np.float32)
    ids[0, : len(ids_short)] = ids_short
    mask[0, : len(ids_short)] = 1.0
    ids[1] = ids_long
    mask[1] = 1.0
    padded = encoder.run(ids, mask)
    alone = encoder.run(np.array([ids_short], dtype=np.int64), np.ones((1, 3), dtype=np.float32))
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)


def test_long_text_is_truncated(onnx_embedder: SentenceEmbedder) -> None:
    long_text, longer_text = onnx_embedder.embed([LONG_TEXT, LONG_TEXT + " and more words"])
    np.testing.assert_allclose(long_text, longer_text, atol=1e-6)


def test_graph_is_cached_by_weights_hash(tmp_path: Path) -> None:
    model_dir = bundled_model_dir()
    digest = weights_digest(model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    first = OnnxSentenceEncoder(model_dir, config, model_name="org/mini", cache_dir=tmp_path)
    assert first.built_graph
    assert first.model_path == tmp_path / f"mini-{digest[:16]}-g{GRAPH_VERSION}.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.model_path.name]  # no temp file
    model = onnx.load(str(first.model_path))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17

    second = OnnxSentenceEncoder(model_dir, config, model_name="org/mini", cache_dir=tmp_path)
    assert not second.built_graph
    assert second.model_path == first.model_path
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    mask = np.ones(ids.shape, dtype=np.float32)
    np.testing.assert_array_equal(first.run(ids, mask), second.run(ids, mask))


def test_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    SentenceEmbedder(backend="onnx", cache_dir=tmp_path)
    (cached,) = tmp_path.iterdir()
    cached.write_bytes(b"not an onnx model")
    embedder = SentenceEmbedder(backend="onnx", cache_dir=tmp_path)
    assert embedder._onnx is not None
    assert embedder._onnx.built_graph
    assert cached.stat().st_size > 1_000_000
    (vector,) = embedder.embed(["hello"])
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    embedder = SentenceEmbedder(backend="onnx", cache_dir=not_a_directory / "models")
    assert embedder._onnx is not None
    assert embedder._onnx.model_path is None
    assert embedder.embed(["hello"]).shape == (1, 384)


def test_session_runs_on_one_thread(onnx_embedder: SentenceEmbedder) -> None:
    assert onnx_embedder._onnx is not None
    options = onnx_embedder._onnx._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


# int8 against fp32 on TEXTS (measured: minimum 0.985, mean 0.994 on the labelled recall set).
INT8_MIN_COSINE = 0.97
INT8_MEAN_COSINE = 0.985


def test_int8_is_cached_beside_the_float_graph(tmp_path: Path) -> None:
    model_dir = bundled_model_dir()
    digest = weights_digest(model_dir / "model.safetensors")[:16]
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    first = OnnxSentenceEncoder(
        model_dir, config, model_name="org/mini", cache_dir=tmp_path, precision="int8"
    )
    assert first.built_graph
    int8_name = f"mini-{digest}-g{GRAPH_VERSION}-q{QUANTIZATION_VERSION}.onnx"
    assert first.model_path == tmp_path / int8_name
    # The float graph it was derived from is cached too (the fp32 encoder reuses it).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"mini-{digest}-g{GRAPH_VERSION}.onnx", int8_name]
    )
    operators = {node.op_type for node in onnx.load(str(first.model_path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= operators
    assert (tmp_path / int8_name).stat().st_size < (
        tmp_path / f"mini-{digest}-g{GRAPH_VERSION}.onnx"
    ).stat().st_size / 2

    second = OnnxSentenceEncoder(
        model_dir, config, model_name="org/mini", cache_dir=tmp_path, precision="int8"
    )
    assert not second.built_graph
    ids = np.array([[101, 7592, 2088, 102]], dtype=np.int64)
    mask = np.ones(ids.shape, dtype=np.float32)
    np.testing.assert_array_equal(first.run(ids, mask), second.run(ids, mask))


def test_int8_vectors_stay_close_to_float(onnx_embedder: SentenceEmbedder, cache_dir: Path) -> None:
    quantized = SentenceEmbedder(backend="onnx", cache_dir=cache_dir, precision="int8")
    texts = [t for t in TEXTS if t]  # the empty text is the same vector either way
    cosines = row_cosines(quantized.embed(texts), onnx_embedder.embed(texts))
    assert cosines.min() >= INT8_MIN_COSINE, cosines
    assert cosines.mean() >= INT8_MEAN_COSINE, cosines
    # ...but it is a different encoder, not the float one under another name.
    assert cosines.min() < MIN_COSINE


def test_int8_needs_the_onnx_backend_and_a_known_precision(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="onnx backend"):
        SentenceEmbedder(backend="numpy", precision="int8")
    with pytest.raises(ValueError, match="unknown precision"):
        SentenceEmbedder(cache_dir=cache_dir, precision="int4")  # type: ignore[arg-type]
