"""The benchmark: every backend at every batch size, timed through the very `Scorer` and
backend objects users run, with each backend's agreement with PyTorch and with MOS.

Per backend and batch size, one `BenchRow`:
- model-only: one batch of preprocessed crops held in memory, `warmup` untimed runs,
  then `iterations` timed `Scorer.infer` calls: latency mean/p50/p90/p95/p99, images/s
  and crops/s (batch / mean latency), and the host-to-device / compute / device-to-host
  split where the backend measures it (TensorRT with timing=True);
- end-to-end: `Scorer.score_files` over the image files (decode, preprocess, batching,
  inference, overlapped as users run it): images/s, and the scores used for agreement;
  `preprocess` ("auto", "cpu", "gpu") is the Scorer's choice, and each row's `preprocess`
  column says where its crops were made;
- memory: peak host RSS during the row (the kernel's high-water mark, reset before each
  row where /proc allows it), device memory where the backend runs on a GPU.
Agreement (pmtiqa_deploy.agreement): SRCC/PLCC/max abs difference against the torch
backend's scores (the reference; needs the checkpoint), and SRCC/PLCC against MOS labels
when the images come with them (a manifest.csv, as the built-in dataset has).
A backend that cannot be opened here gets rows whose status is "unavailable: <reason>".
"""

from __future__ import annotations

import csv
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.agreement import agreement
from pmtiqa_deploy.errors import (
    BackendUnavailable, CheckpointError, DatasetError, DecodeError, PmtIqaError, SpecError)
from pmtiqa_deploy.inputs import walk_images
from pmtiqa_deploy.preprocess import decode_image, preprocess
from pmtiqa_deploy.score import Scorer, open_backend
from pmtiqa_deploy.spec import ModelSpec

DEFAULT_BACKENDS = ("onnxruntime:fp32", "onnxruntime:fp16", "tensorrt", "torch:fp32")
MODEL_FILES = {("onnxruntime", "fp32"): "model.onnx", ("onnxruntime", "fp16"): "model.fp16.onnx"}


@dataclass(frozen=True)
class BackendChoice:
    """`name` or `name:precision` from the command line (precision None: the backend's default)."""

    name: str
    precision: str | None = None

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        name, _, precision = text.partition(":")
        if precision and precision not in ("fp32", "fp16"):
            raise ValueError(f"{text!r}: precision must be fp32 or fp16 (as in onnxruntime:fp16)")
        return cls(name, precision or None)


@dataclass(frozen=True)
class BenchImages:
    """The images to benchmark on, and their MOS labels where known (same order)."""

    paths: tuple[Path, ...]
    mos: tuple[float, ...] | None = None
    source: str = ""


@dataclass
class BenchRow:
    backend: str
    precision: str
    batch: int
    status: str = "ok"
    preprocess: str | None = None  # "cpu" or "gpu": where the end-to-end crops were made
    file: str | None = None
    file_bytes: int | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None
    crops_per_s: float | None = None
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None
    peak_rss_mb: float | None = None
    rss_scope: str | None = None  # "row": reset before this row; "process": since start
    device_mem_mb: float | None = None
    end_to_end_images_per_s: float | None = None
    end_to_end_ratio: float | None = None
    scored: int = 0
    failed: int = 0
    srcc_vs_torch: float | None = None
    plcc_vs_torch: float | None = None
    max_abs_diff: float | None = None
    srcc_vs_mos: float | None = None
    plcc_vs_mos: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


@dataclass
class BenchResult:
    rows: list[BenchRow]
    latencies_ms: dict[tuple[str, str, int], list[float]] = field(default_factory=dict)
    scores: dict[tuple[str, str, int], np.ndarray] = field(default_factory=dict)
    images: BenchImages | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --- images ---------------------------------------------------------------------------

def read_manifest(root: Path) -> dict[Path, float]:
    """`root/manifest.csv` (columns path,score; paths relative to root) as {path: MOS}."""
    labels = {}
    with open(root / "manifest.csv", newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            if "path" not in record or "score" not in record:
                raise DatasetError(f"{root / 'manifest.csv'} needs the columns path,score")
            labels[(root / record["path"]).resolve()] = float(record["score"])
    return labels


def spread(items: Sequence[Any], limit: int | None) -> list[Any]:
    """`limit` items taken evenly across `items` (all of them when limit is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    return [items[int(i * len(items) / limit)] for i in range(limit)]


def images_from_folder(folder: str | os.PathLike, limit: int | None = None) -> BenchImages:
    """The image files under `folder`, with MOS labels when it holds a manifest.csv."""
    root = Path(folder)
    # walk_images also yields broken links and unlistable folders (scoring gives them an
    # error row); a benchmark times readable files only, as before.
    paths = spread([p for p in walk_images(root) if p.is_file()], limit)
    if not paths:
        raise DatasetError(f"{root} holds no image files")
    mos = None
    if (root / "manifest.csv").is_file():
        labels = read_manifest(root)
        if all(p.resolve() in labels for p in paths):
            mos = tuple(labels[p.resolve()] for p in paths)
    return BenchImages(tuple(paths), mos, str(root))


def builtin_images(directory: str | os.PathLike | None = None, limit: int | None = None,
                   sources: Sequence[str] | None = None) -> BenchImages:
    """The built-in dataset's images and pseudo-MOS, built first when absent (needs the
    train extra for scikit-image). `sources` picks a subset of its photographs (a quick
    small build); the default is the whole dataset."""
    from pmtiqa_deploy.train import builtin

    root = Path(builtin.make_builtin(directory or builtin.default_dir(), progress=False, sources=sources))
    images = images_from_folder(root / "images", limit)
    labels = read_manifest(root)
    return BenchImages(images.paths, tuple(labels[p.resolve()] for p in images.paths), f"builtin:{root}")


# --- measurement helpers --------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (or process start), in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def device_used_mb() -> float | None:
    """Device memory in use on the current GPU (all processes, cudaMemGetInfo), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    return (total - free) / (1024 * 1024)


def _runs_on_gpu(choice: BackendChoice, device: str | None) -> bool:
    return choice.name == "tensorrt" or device == "cuda"


def _backend_options(choice: BackendChoice, device: str | None, threads: int | None,
                     checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """The benchmark's shared options, given to the backends that take them."""
    options: dict[str, Any] = {"precision": choice.precision}
    if choice.name in ("onnxruntime", "torch"):
        options.update(device=device, threads=threads)
    if choice.name == "torch":
        options["checkpoint"] = checkpoint
    if choice.name == "tensorrt":
        options["timing"] = True
    return options


# --- the run --------------------------------------------------------------------------

def run_benchmark(model_dir: str | os.PathLike, images: BenchImages, *,
                  backends: Sequence[str | BackendChoice] = DEFAULT_BACKENDS,
                  batches: Sequence[int] = (1, 8), warmup: int = 3, iterations: int = 20,
                  checkpoint: str | os.PathLike | None = None, device: str | None = None,
                  threads: int | None = None, workers: int | None = None, preprocess: str = "auto",
                  log: Callable[[str], None] = lambda message: None,
                  show_progress: bool = False) -> BenchResult:
    """Benchmark every backend at every batch size (see the module docstring); with
    `show_progress`, a bar over the (backend, batch size) measurements on stderr."""
    from pmtiqa_deploy.progress import progress_bar

    spec = ModelSpec.load(model_dir)
    low, high = spec.input.batch_min, spec.input.batch_max
    bad = [b for b in batches if not low <= b <= high]
    if bad:
        raise SpecError(f"batch size(s) {bad} are outside the model's range {low}..{high} "
                        "(model.json); pick batch sizes in it or re-export with a wider range")
    if warmup < 0 or iterations < 1:
        raise ValueError("warmup must be >= 0 and iterations >= 1")
    choices = [BackendChoice.parse(b) if isinstance(b, str) else b for b in backends]
    crops = _load_crops(spec, images.paths[:max(batches)])
    result = BenchResult([], images=images, meta=_meta(model_dir, images, warmup, iterations, threads))
    bar = progress_bar(total=len(choices) * len(batches), desc="benchmark", unit="run", enabled=show_progress)
    for choice in choices:
        log(f"{choice.name}{':' + choice.precision if choice.precision else ''}: opening")
        baseline = device_used_mb() if _runs_on_gpu(choice, device) else None
        try:
            backend = open_backend(choice.name, model_dir,
                                   **_backend_options(choice, device, threads, checkpoint))
        except (BackendUnavailable, SpecError, CheckpointError, ValueError) as exc:
            for batch in batches:
                result.rows.append(BenchRow(choice.name, choice.precision or "-", batch,
                                            status=f"unavailable: {exc}"))
            log(f"  unavailable: {exc}")
            bar.update(len(batches))
            continue
        with backend:
            for batch in batches:
                row = _measure(result, backend, batch, crops, warmup, iterations, workers, baseline,
                               preprocess)
                log(f"  batch {batch}: {row.status}" if row.status != "ok" else
                    f"  batch {batch}: p50 {row.p50_ms:.2f} ms, {row.images_per_s:.1f} images/s, "
                    f"end to end {row.end_to_end_images_per_s or 0:.1f} images/s")
                bar.update()
    bar.close()
    _agreement(result)
    return result


def _measure(result: BenchResult, backend: Any, batch: int, crops: list[np.ndarray], warmup: int,
             iterations: int, workers: int | None, baseline: float | None, preprocess: str = "auto") -> BenchRow:
    """One row: model-only, then end to end, through a Scorer at this batch size. A backend
    that fails here (out of device memory at a large batch, say) gets a "failed" row."""
    path = getattr(backend, "path", None)
    row = BenchRow(backend.name, backend.precision, batch, file=path and Path(path).name,
                   file_bytes=path and Path(path).stat().st_size)
    key = (backend.name, backend.precision, batch)
    on_torch_gpu = backend.name == "torch" and str(getattr(backend, "device", "cpu")).startswith("cuda")
    if on_torch_gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        with Scorer(backend, batch_size=batch, workers=workers, preprocess=preprocess) as scorer:
            row.preprocess = scorer.stage.name
            result.latencies_ms[key] = _model_only(scorer, crops, row, warmup, iterations)
            result.scores[key] = _end_to_end(scorer, result.images.paths if result.images else (), row)
    except PmtIqaError as exc:
        row.status = f"failed: {exc}"
    if baseline is not None:
        used = device_used_mb()
        row.device_mem_mb = None if used is None else round(used - baseline, 1)
    if on_torch_gpu:
        row.device_mem_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result.rows.append(row)
    return row


def _load_crops(spec: ModelSpec, paths: Sequence[Path]) -> list[np.ndarray]:
    """The model-only batches' images, preprocessed once and kept in memory."""
    crops = []
    for path in paths:
        try:
            crops.append(preprocess(decode_image(path), spec.preprocess, spec.input))
        except DecodeError as exc:
            raise DatasetError(f"benchmark image {exc}; remove it from the image folder") from None
    return crops


def _model_only(scorer: Scorer, crops: list[np.ndarray], row: BenchRow, warmup: int,
                iterations: int) -> list[float]:
    batch = np.stack([crops[i % len(crops)] for i in range(row.batch)])
    for _ in range(warmup):
        scorer.infer(batch)
    scoped = reset_peak_rss()
    latencies, splits = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        scorer.infer(batch)
        latencies.append((time.perf_counter() - start) * 1000.0)
        timings = getattr(scorer.backend, "timings", None)
        if timings:
            splits.append(timings)
    ms = np.asarray(latencies)
    row.mean_ms = float(ms.mean())
    row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    row.images_per_s = row.batch / (row.mean_ms / 1000.0)
    row.crops_per_s = row.images_per_s * scorer.spec.preprocess.crop_count
    if splits:
        row.h2d_ms, row.compute_ms, row.d2h_ms = (
            float(np.mean([s[k] for s in splits])) for k in ("h2d_ms", "compute_ms", "d2h_ms"))
    row.rss_scope = "row" if scoped else "process"
    return latencies


def _end_to_end(scorer: Scorer, paths: Sequence[Path], row: BenchRow) -> np.ndarray:
    start = time.perf_counter()
    rows = list(scorer.score_files(paths))
    elapsed = time.perf_counter() - start
    scores = np.asarray([np.nan if r.score is None else r.score for r in rows], dtype=np.float64)
    row.scored = int(np.isfinite(scores).sum())
    row.failed = len(rows) - row.scored
    row.end_to_end_images_per_s = row.scored / elapsed if elapsed > 0 else None
    if row.images_per_s and row.end_to_end_images_per_s:
        row.end_to_end_ratio = row.end_to_end_images_per_s / row.images_per_s
    row.peak_rss_mb = round(peak_rss_mb(), 1)
    return scores


def _pair(scores: np.ndarray, target: Sequence[float] | np.ndarray) -> Any:
    """Agreement over the images both lists scored (None below two)."""
    other = np.asarray(target, dtype=np.float64)
    keep = np.isfinite(scores) & np.isfinite(other)
    return agreement(scores[keep], other[keep]) if keep.sum() >= 2 else None


def _agreement(result: BenchResult) -> None:
    """Fill each measured row's agreement with the torch fp32 reference and with MOS."""
    reference = next((result.scores[k] for k in result.scores if k[0] == "torch" and k[1] == "fp32"), None)
    mos = result.images.mos if result.images else None
    for row in result.rows:
        scores = result.scores.get((row.backend, row.precision, row.batch))
        if scores is None:
            continue
        if reference is not None and (vs := _pair(scores, reference)) is not None:
            row.srcc_vs_torch, row.plcc_vs_torch, row.max_abs_diff = vs.srcc, vs.plcc, vs.max_abs_diff
        if mos is not None and (vs := _pair(scores, mos)) is not None:
            row.srcc_vs_mos, row.plcc_vs_mos = vs.srcc, vs.plcc


def _meta(model_dir: Any, images: BenchImages, warmup: int, iterations: int,
          threads: int | None) -> dict[str, Any]:
    from pmtiqa_deploy import __version__

    return {"model_dir": str(model_dir), "images": images.source, "image_count": len(images.paths),
            "mos_labels": images.mos is not None, "warmup": warmup, "iterations": iterations,
            "threads": threads, "machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(),
            "pmtiqa_deploy": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
