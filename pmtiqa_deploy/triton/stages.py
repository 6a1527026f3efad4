"""The served pipeline's steps as plain functions over NumPy arrays, so the Python-backend
models of the Triton repository, `pmtiqa-serve` and the tests all run the same code, and
that code is the runtime's own: `pmtiqa_deploy.preprocess` through `score.load_or_error`
(the error texts local scoring writes), and `score.score_row` (the score, level and
error of a row).

Tensors cross Triton as batches of rows: an image is `image[i, 0]` (bytes), its crops
`crops[i]`, its score `score[i, 0]` and its error `error[i, 0]` (bytes, empty when none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pmtiqa_deploy.preprocess import decode_image, preprocess
from pmtiqa_deploy.score import ScoreRow, load_or_error, score_row
from pmtiqa_deploy.spec import ModelSpec

Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


def image_bytes(images: np.ndarray) -> list[bytes]:
    """The encoded files of an `image` tensor ([B, 1] or [B]; object or bytes dtype)."""
    return [bytes(value) for value in np.asarray(images, dtype=object).reshape(-1)]


def prepare_images(images: Sequence[bytes], spec: ModelSpec,
                   mapper: Mapper = map) -> tuple[np.ndarray, list[str | None]]:
    """Decode and preprocess each image with the runtime's reference preprocessing:
    crops [B, N, ...] in the network's input dtype and layout, and one error text per
    image (None when it decoded). A failed image gets zero crops, so the batch keeps
    its shape; aggregation discards whatever the network makes of them. `mapper` (a
    thread pool's `map`, say) runs the per-image work."""
    def load(data: bytes) -> np.ndarray:
        return preprocess(decode_image(data), spec.preprocess, spec.input)

    results = list(mapper(lambda data: load_or_error(load, data), images))
    blank = np.zeros(spec.input_shape(1)[1:], dtype=spec.input.dtype)
    crops = [blank if value is None else value for value, _ in results]
    stacked = np.stack(crops) if crops else np.zeros((0, *blank.shape), blank.dtype)
    return stacked, [error for _, error in results]


def error_tensor(errors: Sequence[str | None]) -> np.ndarray:
    """[B, 1] object array of UTF-8 bytes, empty where there is no error."""
    encoded = [(error or "").encode("utf-8") for error in errors]
    return np.array(encoded, dtype=object).reshape(-1, 1)


def errors_from_tensor(tensor: np.ndarray) -> list[str | None]:
    """The inverse of `error_tensor`."""
    return [text.decode("utf-8") or None for text in image_bytes(tensor)]


def rows_from_scores(scores: np.ndarray, errors: Sequence[str | None], spec: ModelSpec,
                     backend: str) -> list[ScoreRow]:
    """One row per image (path left empty: the client knows it) from the network's
    scores and the preprocessing errors; see `score.score_row`."""
    values = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(values) != len(errors):
        raise ValueError(f"{len(values)} scores for {len(errors)} images")
    return [score_row("", None if error else float(value), error, spec, backend)
            for value, error in zip(values, errors)]


def row_tensors(rows: Sequence[ScoreRow]) -> dict[str, np.ndarray]:
    """The served outputs of rows: score [B, 1] float32 (NaN on error), level [B, 1] int64
    (-1 on error), error [B, 1] bytes."""
    return {
        "score": np.array([np.nan if r.score is None else r.score for r in rows],
                          dtype=np.float32).reshape(-1, 1),
        "level": np.array([-1 if r.level is None else r.level for r in rows],
                          dtype=np.int64).reshape(-1, 1),
        "error": error_tensor([r.error for r in rows]),
    }


def rows_from_tensors(paths: Sequence[str], outputs: dict[str, np.ndarray]) -> list[ScoreRow]:
    """A client's rows from the served outputs (the inverse of `row_tensors`, paths added).
    The score is written as the shortest decimal of its float32, as local scoring does."""
    scores = np.asarray(outputs["score"], dtype=np.float32).reshape(-1)
    levels = np.asarray(outputs["level"]).reshape(-1)
    errors = errors_from_tensor(outputs["error"])
    if not len(paths) == len(scores) == len(levels) == len(errors):
        raise ValueError(f"the server answered {len(scores)} scores, {len(levels)} levels and "
                         f"{len(errors)} errors for {len(paths)} images")
    return [ScoreRow(path, error=error) if error is not None
            else ScoreRow(path, float(str(score)), int(level))
            for path, score, level, error in zip(paths, scores, levels, errors)]
