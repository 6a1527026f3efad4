"""Scoring: image files in, one row per file out (path, score in the spec's units, quality
level, error), chaining decode, preprocess, the backend and crop-combining.

The pipeline (`Scorer.score_files`):
- Paths are pulled from the (lazy) input iterator only as fast as they are scored; at
  most `prefetch` images are decoded or waiting at once, so memory is flat in the number
  of images.
- Decoding and preprocessing run on a thread pool while the calling thread runs the
  backend on the previous batch: OpenCV and ONNX Runtime release the GIL, so the two
  overlap. Where they run is the Scorer's stage (`pmtiqa_deploy.stages`, `preprocess`
  and `decode`): the reference preprocessing on the threads ("cpu"), or decoding on the
  threads and the crops made by the GPU kernel straight into the backend's device input
  ("gpu"; JPEG decoding on the GPU too with decode="gpu"). "auto" takes the GPU where the
  backend runs on one; `stage.name` and `stage.reason` say what was chosen and why.
- Batches are formed in input order from the images that decoded; an image that fails
  to decode costs its own error row and nothing else. Rows come out in input order.
- Backend calls are serialised by a lock, so one Scorer may be used from many threads
  (TensorRT contexts are not thread-safe); the decode pool is shared by them.

Determinism: the crops are fixed, and a backend's score of an image does not depend on
the other images of its batch on ONNX Runtime CPU and the null backend (tested). Backends
that choose kernels per batch shape (TensorRT) can differ in the last bits between batch
sizes; `pad=True` runs every batch at `batch_size` (padding with copies of the last image)
so an image gets bit-identical scores whatever company it is scored in.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np

from pmtiqa_deploy.backends import backend_class
from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.errors import DecodeError, InputError
from pmtiqa_deploy.inputs import unreadable_reason
from pmtiqa_deploy.preprocess import decode_image, preprocess
from pmtiqa_deploy.spec import ModelSpec
from pmtiqa_deploy.stages import choose_stage

# Failures of one image's decode/preprocess that become its error row. Anything else
# (a bug, KeyboardInterrupt) stops the run.
_IMAGE_ERRORS = (DecodeError, OSError, ValueError, MemoryError, cv2.error)
Loaded = TypeVar("Loaded")


@dataclass(frozen=True)
class ScoreRow:
    """One input's result: `score` and `level` are None exactly when `error` is set."""

    path: str
    score: float | None = None
    level: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "score": self.score, "level": self.level, "error": self.error}


def open_backend(name: str, model_dir: str | os.PathLike, *, precision: str | None = None,
                 device: str | None = None, threads: int | None = None,
                 checkpoint: str | os.PathLike | None = None, cuda_graph: bool = False,
                 **extra: Any) -> Backend:
    """Open backend `name` on an exported model directory with the options the command
    lines offer, mapped to that backend's keywords. An option the backend has no use for
    is a ValueError, not silently dropped.

    threads: ONNX Runtime intra-op threads; for the torch backend, torch.set_num_threads
    (process-wide, as PyTorch has no per-model setting). checkpoint: torch only.
    cuda_graph: replay a CUDA graph per batch size (tensorrt, and torch on CUDA).
    """
    cls = backend_class(name)
    options: dict[str, Any] = dict(extra)
    if precision is not None:
        options["precision"] = precision
    if cuda_graph:
        if name not in ("tensorrt", "torch"):
            raise ValueError(f"the {name} backend has no CUDA graphs (tensorrt and torch on CUDA do); "
                             "drop --cuda-graph")
        options["cuda_graph"] = True
    unused = []
    if name == "onnxruntime":
        options.update({k: v for k, v in (("device", device), ("threads", threads)) if v is not None})
        unused = [n for n, v in (("checkpoint", checkpoint),) if v is not None]
    elif name == "torch":
        if device is not None:
            options["device"] = device
        if checkpoint is not None:
            options["checkpoint"] = checkpoint
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    elif name == "tensorrt":
        if device not in (None, "cuda") and not str(device).isdigit():
            raise ValueError(f"the tensorrt backend runs on a GPU: --device must be 'cuda' or a "
                             f"GPU index, not {device!r}")
        if device is not None and str(device).isdigit():
            options["device"] = int(device)
        unused = [n for n, v in (("threads", threads), ("checkpoint", checkpoint)) if v is not None]
    else:
        unused = [n for n, v in (("device", device), ("threads", threads),
                                 ("checkpoint", checkpoint)) if v is not None]
    if unused:
        raise ValueError(f"the {name} backend takes no {'/'.join(unused)} option; drop it")
    return cls(model_dir, **options)


class Scorer:
    """Scores image files with one backend. Owns a decode thread pool; closes the backend
    too when `owns_backend` (what `Scorer.open` does). Use as a context manager."""

    def __init__(self, backend: Backend, *, batch_size: int | None = None,
                 workers: int | None = None, prefetch: int | None = None, pad: bool = False,
                 owns_backend: bool = False, preprocess: str = "auto", decode: str = "cpu"):
        self.backend = backend
        self.spec: ModelSpec = backend.spec
        low, high = self.spec.input.batch_min, self.spec.input.batch_max
        self.batch_size = batch_size if batch_size is not None else min(max(self.spec.input.batch_opt, low), high)
        if not low <= self.batch_size <= high:
            raise InputError(f"batch size {self.batch_size} is outside the model's range "
                             f"{low}..{high} (model.json); choose a batch size in it or re-export "
                             "with a wider --batch-max")
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self.prefetch = prefetch if prefetch is not None else self.batch_size + 2 * self.workers
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {self.prefetch}")
        self.pad = pad
        self.owns_backend = owns_backend
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.stage = choose_stage(backend, preprocess, decode, self.infer, self._target)

    @classmethod
    def open(cls, model_dir: str | os.PathLike, backend: str = "onnxruntime", *,
             batch_size: int | None = None, workers: int | None = None, pad: bool = False,
             preprocess: str = "auto", decode: str = "cpu", **backend_options: Any) -> Scorer:
        """A Scorer over a freshly opened backend (see `open_backend` for the options)."""
        opened = open_backend(backend, model_dir, **backend_options)
        try:
            return cls(opened, batch_size=batch_size, workers=workers, pad=pad, owns_backend=True,
                       preprocess=preprocess, decode=decode)
        except BaseException:
            opened.close()
            raise

    # --- pieces ------------------------------------------------------------------------

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded HxWx3 RGB image's crops in the model's input dtype and layout."""
        return preprocess(image, self.spec.preprocess, self.spec.input)

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """One file's crops (decode + preprocess, the reference implementation)."""
        return self.prepare(decode_image(path))

    def _target(self, count: int) -> int:
        """The batch size `count` images run at: the model's minimum, or `batch_size` with pad."""
        target = max(count, self.spec.input.batch_min)
        return max(target, self.batch_size) if self.pad else target

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the backend on one batch of crops, under the Scorer's lock. Batches below
        the model's minimum (and every batch with `pad`) are padded with copies of the
        last image; the outputs are cut back to the real images."""
        count = batch.shape[0]
        target = self._target(count)
        if target > count:
            batch = np.concatenate([batch, np.repeat(batch[-1:], target - count, axis=0)])
        with self._lock:
            if self._closed:
                raise RuntimeError("the Scorer is closed")
            outputs = self.backend.infer(batch)
            return {name: np.array(value[:count]) for name, value in outputs.items()}

    def score_crops(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Scores and quality levels of images given as their crops (`load`'s output),
        run in batches of `batch_size`."""
        scores = []
        for start in range(0, len(crops), self.batch_size):
            scores.append(self.infer(np.stack(crops[start:start + self.batch_size]))["score"])
        score = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        return score, np.asarray(self.spec.score.level(score), dtype=np.int64).reshape(-1)

    def score_file(self, path: str | os.PathLike) -> ScoreRow:
        """One file, alone."""
        return next(self.score_files([path]))

    # --- the pipeline ------------------------------------------------------------------

    def score_files(self, paths: Iterable[str | os.PathLike]) -> Iterator[ScoreRow]:
        """One row per path, in input order, as soon as its batch has run. `paths` is
        consumed lazily; see the module docstring for the pipeline."""
        pool = self._executor()
        source = iter(paths)
        window: deque[tuple[str, Future]] = deque()
        pending: list[list[Any]] = []  # rows in input order: [path, crops-or-None, error]
        batch_rows: list[list[Any]] = []
        exhausted = False

        def top_up() -> None:
            nonlocal exhausted
            while not exhausted and len(window) < self.prefetch:
                try:
                    path = next(source)
                except StopIteration:
                    exhausted = True
                    return
                window.append((os.fspath(path), pool.submit(self._load_or_error, path)))

        def run_batch() -> Iterator[ScoreRow]:
            if batch_rows:
                top_up()  # keep the decoders busy while the backend runs
                for row, outcome in zip(batch_rows, self._run_items([row[1] for row in batch_rows])):
                    if isinstance(outcome, Exception):
                        row[1], row[2] = None, _error_text(outcome, row[0])
                    else:
                        row[1] = outcome
                batch_rows.clear()
            for path, value, error in pending:
                yield self._row(path, value, error)
            pending.clear()

        try:
            top_up()
            while window:
                path, future = window.popleft()
                top_up()
                crops, error = future.result()
                row = [path, crops, error]
                pending.append(row)
                if error is None:
                    batch_rows.append(row)
                # Flush on a full batch, or when error rows pile up behind a partial one.
                if len(batch_rows) == self.batch_size or len(pending) >= self.prefetch + self.batch_size:
                    yield from run_batch()
            yield from run_batch()
        finally:  # the caller stopped early or the backend failed: drop queued decodes
            for _, future in window:
                future.cancel()

    def _run_items(self, items: list[Any]) -> list[float | Exception]:
        """One batch of the stage's items: a score, or the image's own error, per item. The
        lock serialises the backend (and GPU work on its stream) between threads."""
        if self.stage.name == "cpu":
            return self.stage.run(items)  # Scorer.infer takes the lock
        with self._lock:
            if self._closed:
                raise RuntimeError("the Scorer is closed")
            return self.stage.run(items)

    def _load_or_error(self, path: str | os.PathLike) -> tuple[Any, str | None]:
        return load_or_error(self.stage.load, path)

    def _row(self, path: str, score: float | None, error: str | None) -> ScoreRow:
        return score_row(path, score, error, self.spec, self.backend.name)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise RuntimeError("the Scorer is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pmtiqa-decode")
            return self._pool

    def close(self) -> None:
        """Stop the decode pool and, when owned, close the backend. Safe to call twice."""
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self.stage.close()
            if self.owns_backend:
                self.backend.close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_or_error(load: Callable[[Any], Loaded], source: str | os.PathLike | bytes,
                  ) -> tuple[Loaded | None, str | None]:
    """`load(source)` (a path or encoded bytes: decode and preprocess), or None and the text
    of the image's error row when this one image cannot be used. Only an image's own
    failures become error texts; anything else (a bug, KeyboardInterrupt) propagates.
    Servers call this with the request's bytes, so their error texts are local scoring's."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    try:
        return load(source), None
    except _IMAGE_ERRORS as exc:
        return None, _error_text(exc, name)


def score_row(path: str, score: float | None, error: str | None, spec: ModelSpec,
              backend: str) -> ScoreRow:
    """The row of one image: its error, or its score (the shortest decimal that reads back
    as the backend's float32 value) and level; a non-finite score is an error row that
    names `backend`."""
    if error is not None:
        return ScoreRow(path, error=error)
    if score is None or not math.isfinite(score):
        return ScoreRow(path, error=f"the {backend} backend returned a non-finite "
                                    f"score ({score}); check the model with pmtiqa-bench")
    short = float(str(np.float32(score)))
    return ScoreRow(path, short, int(spec.score.level(short)))


def _error_text(exc: BaseException, path: str) -> str:
    """The exception's message without a leading copy of the path (the row has it), or
    what the path is when that explains the failure (a broken link, a folder)."""
    if isinstance(exc, (DecodeError, OSError)) and path != "<bytes>":  # bytes: a server's request
        reason = unreadable_reason(path)
        if reason is not None:
            return f"cannot read file: {reason}"
    text = str(exc) or type(exc).__name__
    if text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    if isinstance(exc, MemoryError):
        return f"out of memory decoding the image ({text}); score it with fewer --workers"
    if isinstance(exc, cv2.error):
        return f"OpenCV could not process the image ({exc.err or text})"
    return text
