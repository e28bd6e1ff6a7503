"""ONNX Runtime backend of the sentence embedder: the BERT encoder as an ONNX graph, no torch.

The graph is built here from the model's safetensors weights with `onnx.helper`, doing the same
maths as the numpy reference in `embedding.py`: word + position + token-type embeddings and
LayerNorm, then per layer Q/K/V projections (query pre-scaled by 1/sqrt(head size)), scaled
dot-product attention with padding keys masked out, output projection, residual
LayerNorm, feed-forward with exact (erf) GELU and a second residual LayerNorm; finally mean
pooling over the attention mask and L2 normalisation, so the session returns finished
sentence vectors.

The graph is serialised once per weights file to `<cache dir>/<model>-<sha256 prefix>-g<N>.onnx`
(written to a temporary file and renamed, so concurrent first starts never see a partial file;
`N` is `GRAPH_VERSION`, bumped whenever the construction changes) and loaded from there
afterwards. If the cache directory is not writable the graph is built in memory every time; a
cached file that fails to load is rebuilt and replaced.

The session runs on the CPU provider with one intra-op and one inter-op thread, sequential
execution and every graph optimisation on (ORT fuses MatMul + bias + Gelu into BiasGelu
itself; writing the layers with its `com.microsoft` Attention/SkipLayerNormalization kernels
by hand measured no faster on this model, so the graph stays in standard operators). One query
costs one core for a few milliseconds and never wakes a second thread; concurrent `run` calls
are safe, each running on its caller's thread.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf
from onnxruntime.quantization import QuantType, quantize_dynamic
from safetensors.numpy import load_file

Matrix = npt.NDArray[np.float32]

# Bump whenever `build_model` changes what it emits: the version is part of the cache file name.
GRAPH_VERSION: Final = 1
# Bump whenever `quantized` changes what it emits (part of the int8 cache file's name).
QUANTIZATION_VERSION: Final = 1
Precision = Literal["fp32", "int8"]
PRECISIONS: Final[tuple[Precision, ...]] = ("fp32", "int8")
# 17 is the first opset with LayerNormalization, 20 the first with Gelu.
OPSET: Final = 20
CACHE_DIR_ENV: Final = "CHATPLANE_MODEL_CACHE"
INPUT_IDS: Final = "input_ids"
ATTENTION_MASK: Final = "attention_mask"
OUTPUT: Final = "sentence_embedding"

# Same constants as the numpy reference: the additive bias of padding keys, the pooling and
# normalisation floors.
_MASKED_SCORE: Final = -1e9
_POOLING_FLOOR: Final = 1e-9
_NORM_FLOOR: Final = 1e-12
_HASH_PREFIX_CHARS: Final = 16
_LOAD_ERRORS: Final = (Fail, InvalidGraph, InvalidProtobuf, OSError, DecodeError)
_Loaded = TypeVar("_Loaded")
_SPLIT_HEADS: Final = "split_heads_shape"
_MERGE_HEADS: Final = "merge_heads_shape"


def default_cache_dir() -> Path:
    """`$CHATPLANE_MODEL_CACHE`, else `$XDG_CACHE_HOME/chatplane/models` (~/.cache by default)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "chatplane" / "models"


def weights_digest(path: Path) -> str:
    """The hex sha256 of the weights file, which names the cached graph."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OnnxSentenceEncoder:
    """Runs the cached ONNX graph: (ids, mask) of a padded batch -> unit-norm sentence vectors."""

    def __init__(
        self,
        model_dir: Path,
        config: Mapping[str, Any],
        *,
        model_name: str,
        cache_dir: Path | str | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        weights_path = model_dir / "model.safetensors"
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        stem = model_name.rsplit("/", 1)[-1] or "model"
        digest = weights_digest(weights_path)[:_HASH_PREFIX_CHARS]
        path = directory / f"{stem}-{digest}-g{GRAPH_VERSION}.onnx"
        # Where the graph was loaded from, or None if the cache was unwritable and it was built
        # in memory; `built_graph` tells whether this process built it.
        self.model_path: Path | None = path
        self.built_graph = False

        def full_precision() -> bytes:
            return build_model(load_file(str(weights_path)), config).SerializeToString()

        if precision == "int8":
            # The quantised graph is derived from the float graph (cached or built now).
            int8_path = directory / f"{stem}-{digest}-g{GRAPH_VERSION}-q{QUANTIZATION_VERSION}.onnx"
            self.model_path = int8_path
            self._session = self._cached(
                int8_path, lambda: quantized(self._cached(path, full_precision, _graph)), _session
            )
        else:
            self._session = self._cached(path, full_precision, _session)

    def _cached(
        self, path: Path, build: Callable[[], bytes], load: Callable[[str | bytes], _Loaded]
    ) -> _Loaded:
        """`load` of the graph cached at `path`; when the file is missing or fails to load,
        `build` makes the graph, which is cached (a damaged file is replaced) and loaded."""
        if path.is_file():
            try:
                return load(str(path))
            except _LOAD_ERRORS:
                pass  # unreadable or damaged cache file: rebuilt and replaced below
        model = build()
        self.built_graph = True
        if not _write_atomically(path, model) and path == self.model_path:
            self.model_path = None
        return load(model)

    def run(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        """Embeds a padded batch: `ids` int64 and `mask` float32 (1 = token), both (batch, len)."""
        outputs = self._session.run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})
        return np.asarray(outputs[0], dtype=np.float32)


def quantized(model: bytes) -> bytes:
    """The graph with every weight MatMul in int8 (ONNX Runtime's dynamic quantisation: weights
    int8 per output channel, activations quantised per call): ~1.6-2.2x less CPU per text on
    this model, vectors at cosine 0.988-1.0 (mean 0.994) to the float ones (docs/rag.md,
    "Embedding precision")."""
    with tempfile.TemporaryDirectory(prefix="chatplane-quantize-") as work:
        source, target = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        source.write_bytes(model)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        return target.read_bytes()


def _graph(model: str | bytes) -> bytes:
    """The serialised graph (read from the file `model` names), checked to parse."""
    data = Path(model).read_bytes() if isinstance(model, str) else model
    onnx.load_from_string(data)
    return data


def _session(model: str | bytes) -> ort.InferenceSession:
    return ort.InferenceSession(
        model, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )


def session_options() -> ort.SessionOptions:
    """One thread, sequential execution, every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _write_atomically(path: Path, data: bytes) -> bool:
    """Writes `data` to `path` via a temporary file and a rename; False if that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    except OSError:
        return False
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide the cache from other users
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        return False
    return True


class _Graph:
    """Accumulates nodes and initializers; every helper returns the name of its output."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names = 0

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        self._names += 1
        output = f"{op_type.lower()}_{self._names}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attributes))
        return output

    def linear(self, x: str, weight: str, bias: str) -> str:
        return self.op("Add", self.op("MatMul", x, weight), bias)

    def layer_norm(self, x: str, scale: str, bias: str, eps: float) -> str:
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=eps)


def build_model(
    weights: Mapping[str, npt.NDArray[Any]], config: Mapping[str, Any]
) -> onnx.ModelProto:
    """The whole encoder + pooling + normalisation as an ONNX model (see the module docstring).

    Inputs: `input_ids` int64 and `attention_mask` float32, both (batch, length); output:
    `sentence_embedding` float32 (batch, hidden), rows of unit L2 norm.
    """
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_size = hidden // heads
    eps = float(config["layer_norm_eps"])
    head_scale = np.float32(1.0 / math.sqrt(head_size))

    g = _Graph()
    # Every input is a single segment, so token type 0's row is folded into the positions.
    positions = g.const(
        "embeddings.position_plus_token_type",
        _f32(weights["embeddings.position_embeddings.weight"])
        + _f32(weights["embeddings.token_type_embeddings.weight"])[0],
    )
    words = g.const(
        "embeddings.word_embeddings", _f32(weights["embeddings.word_embeddings.weight"])
    )
    zero = g.const("zero_1d", np.array([0], dtype=np.int64))
    one_1d = g.const("one_1d", np.array([1], dtype=np.int64))
    length = g.op("Shape", INPUT_IDS, start=1, end=2)
    embedded = g.op(
        "Add",
        g.op("Gather", words, INPUT_IDS, axis=0),
        g.op("Slice", positions, zero, length, zero, one_1d),
    )
    state = g.layer_norm(
        embedded,
        g.const("embeddings.ln.scale", _f32(weights["embeddings.LayerNorm.weight"])),
        g.const("embeddings.ln.bias", _f32(weights["embeddings.LayerNorm.bias"])),
        eps,
    )

    # Additive key bias (batch, 1, 1, length): 0 for tokens, -1e9 for padding.
    key_bias = g.op(
        "Unsqueeze",
        g.op(
            "Mul",
            g.op("Sub", g.const("one", np.array(1.0, dtype=np.float32)), ATTENTION_MASK),
            g.const("masked_score", np.array(_MASKED_SCORE, dtype=np.float32)),
        ),
        g.const("axes_1_2", np.array([1, 2], dtype=np.int64)),
    )
    g.const(_SPLIT_HEADS, np.array([0, 0, heads, head_size], dtype=np.int64))
    g.const(_MERGE_HEADS, np.array([0, 0, hidden], dtype=np.int64))

    for index in range(int(config["num_hidden_layers"])):
        prefix = f"encoder.layer.{index}."
        arrays = _layer_arrays(weights, prefix, head_scale)
        names = {key: g.const(prefix + key, value) for key, value in arrays.items()}
        state = _encoder_layer(g, state, names, key_bias, eps)

    # Mean pooling as a batched matmul: (batch, 1, length) @ (batch, length, hidden).
    mask_row = g.op("Unsqueeze", ATTENTION_MASK, one_1d)
    summed = g.op("Squeeze", g.op("MatMul", mask_row, state), one_1d)
    counts = g.op(
        "Max",
        g.op("ReduceSum", ATTENTION_MASK, one_1d, keepdims=1),
        g.const("pooling_floor", np.array(_POOLING_FLOOR, dtype=np.float32)),
    )
    pooled = g.op("Div", summed, counts)
    norms = g.op(
        "Max",
        g.op("ReduceL2", pooled, one_1d, keepdims=1),
        g.const("norm_floor", np.array(_NORM_FLOOR, dtype=np.float32)),
    )
    g.nodes.append(helper.make_node("Div", [pooled, norms], [OUTPUT]))

    graph = helper.make_graph(
        g.nodes,
        "sentence_encoder",
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.FLOAT, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chatplane"
    )
    # The IR version the opset needs, not the newest this onnx knows, so older runtimes load it.
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _encoder_layer(g: _Graph, state: str, w: Mapping[str, str], key_bias: str, eps: float) -> str:
    """One encoder layer; `w` maps `_layer_arrays` keys to initializer names, `key_bias` is the
    (batch, 1, 1, length) additive mask."""

    def heads(name: str, perm: list[int]) -> str:
        projected = g.linear(state, w[name + ".w"], w[name + ".b"])
        return g.op("Transpose", g.op("Reshape", projected, _SPLIT_HEADS), perm=perm)

    query = heads("query", [0, 2, 1, 3])  # (batch, heads, length, head_size), pre-scaled
    key_t = heads("key", [0, 2, 3, 1])  # (batch, heads, head_size, length)
    value = heads("value", [0, 2, 1, 3])
    scores = g.op("Add", g.op("MatMul", query, key_t), key_bias)
    probabilities = g.op("Softmax", scores, axis=-1)
    context = g.op(
        "Reshape",
        g.op("Transpose", g.op("MatMul", probabilities, value), perm=[0, 2, 1, 3]),
        _MERGE_HEADS,
    )
    attended = g.linear(context, w["attention_out.w"], w["attention_out.b"])
    state = g.layer_norm(
        g.op("Add", attended, state), w["attention_ln.scale"], w["attention_ln.bias"], eps
    )
    intermediate = g.op(
        "Gelu", g.linear(state, w["intermediate.w"], w["intermediate.b"]), approximate="none"
    )
    output = g.linear(intermediate, w["output.w"], w["output.b"])
    return g.layer_norm(g.op("Add", output, state), w["output_ln.scale"], w["output_ln.bias"], eps)


def _layer_arrays(
    weights: Mapping[str, npt.NDArray[Any]], prefix: str, head_scale: np.float32
) -> dict[str, Matrix]:
    """One layer's weights laid out for x @ W, the query projection pre-scaled by 1/sqrt(d)."""

    def weight(name: str) -> Matrix:
        # torch Linear stores (out, in).
        return np.ascontiguousarray(_f32(weights[prefix + name + ".weight"]).T)

    def vector(name: str, suffix: str = ".bias") -> Matrix:
        return _f32(weights[prefix + name + suffix])

    return {
        "query.w": weight("attention.self.query") * head_scale,
        "query.b": vector("attention.self.query") * head_scale,
        "key.w": weight("attention.self.key"),
        "key.b": vector("attention.self.key"),
        "value.w": weight("attention.self.value"),
        "value.b": vector("attention.self.value"),
        "attention_out.w": weight("attention.output.dense"),
        "attention_out.b": vector("attention.output.dense"),
        "attention_ln.scale": vector("attention.output.LayerNorm", ".weight"),
        "attention_ln.bias": vector("attention.output.LayerNorm"),
        "intermediate.w": weight("intermediate.dense"),
        "intermediate.b": vector("intermediate.dense"),
        "output.w": weight("output.dense"),
        "output.b": vector("output.dense"),
        "output_ln.scale": vector("output.LayerNorm", ".weight"),
        "output_ln.bias": vector("output.LayerNorm"),
    }


def _f32(array: npt.NDArray[Any]) -> Matrix:
    return np.asarray(array, dtype=np.float32)
