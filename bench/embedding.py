"""The sentence encoder at each precision (docs/rag.md "Embedding precision"): the time of one
question back to back and after an idle gap like the one between chat turns, of a long answer,
and how far the int8 vectors are from the float ones on the labelled recall set."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.harness import Options, progress
from bench.report import Row
from chatplane.memory.embedding import SentenceEmbedder
from chatplane.memory.embedding_onnx import PRECISIONS

NAME = "embedding"
TITLE = "embedding: the sentence encoder in float32 and int8"
NOTES = (
    "One question = 'Tell me more about the second answer you gave earlier today' (13 word "
    "pieces), embedded alone on the calling thread: back to back (CPU time of the process per "
    "call, mean of 50 after 5 warm-up calls), and after 1.5 s idle (wall p50 of 8), which is "
    "what a chat turn's recall meets; a long answer = 200 words (wall p50 of 10).",
    "Labelled set = tests/data/recall_questions.json (158 passages, 61 questions): cosine of "
    "each text's int8 vector to its float one; top-5 overlap = share of each question's top 5 "
    "passages (float) still in its top 5 when the question is int8 and the passages float "
    "(an index switched without a rebuild) or both int8.",
)
QUESTION = "Tell me more about the second answer you gave earlier today"
LONG_TEXT = " ".join(["word"] * 200)
IDLE_SECONDS = 1.5  # the gap between a chat turn's end and the next question, roughly
LABELLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "recall_questions.json"

Vectors = npt.NDArray[np.float32]


def _wall_ms(call: Callable[[], object], times: int, pause: float = 0.0) -> float:
    samples = []
    for _ in range(times):
        if pause:
            time.sleep(pause)  # the measured condition: an encoder left idle
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def _cpu_ms(call: Callable[[], object], times: int) -> float:
    for _ in range(5):
        call()
    began = time.process_time()
    for _ in range(times):
        call()
    return (time.process_time() - began) / times * 1000


def _top5(questions: Vectors, passages: Vectors) -> list[set[int]]:
    return [set(np.argsort(-(passages @ q))[:5].tolist()) for q in questions]


def _overlap(reference: list[set[int]], other: list[set[int]]) -> float:
    return float(np.mean([len(a & b) / 5 for a, b in zip(reference, other, strict=True)]))


def measure() -> list[Row]:
    data = json.loads(LABELLED.read_text(encoding="utf-8"))
    passages = [p["text"] for p in data["passages"]]
    questions = [q["text"] for q in data["questions"]]
    values: dict[str, dict[str, float]] = {}
    vectors: dict[str, tuple[Vectors, Vectors]] = {}
    for precision in PRECISIONS:
        embedder = SentenceEmbedder(precision=precision)
        timing = values.setdefault(precision, {})
        timing["cpu"] = _cpu_ms(lambda e=embedder: e.embed([QUESTION]), 50)
        timing["idle"] = _wall_ms(lambda e=embedder: e.embed([QUESTION]), 8, IDLE_SECONDS)
        timing["long"] = _wall_ms(lambda e=embedder: e.embed([LONG_TEXT]), 10)
        vectors[precision] = (embedder.embed(passages), embedder.embed(questions))
    (float_passages, float_questions), (int8_passages, int8_questions) = (
        vectors["fp32"],
        vectors["int8"],
    )
    cosines = np.sum(
        np.vstack([int8_passages, int8_questions]) * np.vstack([float_passages, float_questions]),
        axis=1,
    )  # rows are unit-norm
    reference = _top5(float_questions, float_passages)
    columns = list(PRECISIONS)

    def row(metric: str, unit: str, key: str) -> Row:
        return Row(NAME, metric, unit, {c: values[c][key] for c in columns})

    return [
        row("one question, back to back: CPU per call", "ms", "cpu"),
        row("one question after 1.5 s idle: wall p50", "ms", "idle"),
        row("a 200-word answer: wall p50", "ms", "long"),
        Row(
            NAME,
            "cosine to the float vector, labelled set: min",
            "",
            {"int8": cosines.min()},
            precision=4,
        ),
        Row(
            NAME,
            "cosine to the float vector, labelled set: mean",
            "",
            {"int8": cosines.mean()},
            precision=4,
        ),
        Row(
            NAME,
            "top-5 overlap, int8 question vs float passages",
            "",
            {"int8": _overlap(reference, _top5(int8_questions, float_passages))},
            precision=3,
        ),
        Row(
            NAME,
            "top-5 overlap, both int8",
            "",
            {"int8": _overlap(reference, _top5(int8_questions, int8_passages))},
            precision=3,
        ),
    ]


async def run(options: Options) -> list[Row]:
    progress(options, f"{NAME}: fp32 and int8 encoders (~40 s, most of it idle gaps)")
    return await asyncio.to_thread(measure)
