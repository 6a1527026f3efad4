"""The benchmark: every backend at every thread count and batch size, timed through the
very `Scorer` and backend objects users run, beside the machine's GEMM ceiling, with each
backend's agreement with PyTorch and with MOS.

Fairness on shared, noisy machines:
- Interleaved rounds. Per thread count and batch size every backend is open at once and
  timed in rounds, A, B, C, A, B, C, ... (`rounds` of `iterations / rounds` calls each);
  a row reports the median over rounds of images/s and the spread (slowest and fastest
  round), so load that comes and goes hits every backend alike. End to end is
  interleaved the same way (`e2e_rounds` passes over the image files per backend).
- Threads set explicitly, per library, for every row: ONNX Runtime's intra-op pool
  (inter-op 1), torch.set_num_threads, OpenCV's pool, the BLAS pool of the GEMM probe,
  and the decode workers of the end-to-end pipeline (`workers`, default: the thread count).
- The ceiling (`pmtiqa_deploy.ceiling`): the best FP32 GEMM of this process (ONNX
  Runtime's MatMul, NumPy's BLAS), timed in the same rounds at the same thread count; each
  row's achieved GFLOP/s (the model's FLOPs per crop from model.onnx x crops/s) over it,
  model-only and end to end.

Per row (`BenchRow`): model-only latency mean/p50/p90/p95/p99 over every timed call, images/s
and crops/s (median over rounds, with min and max), the host-to-device / compute /
device-to-host split where the backend measures it (TensorRT with timing=True); end to end
(`Scorer.score_files` over the image files: decode, preprocess (on the CPU or, with
`preprocess` "gpu"/"auto", the CUDA kernel; the row says which), batching, inference,
overlapped): images/s (median over passes) and its ratio to model-only; peak host RSS of
the row's group (every backend of one thread count and batch size is open at once; reset
before the group where /proc allows it) and device memory on a GPU; agreement
(pmtiqa_deploy.agreement) with the torch fp32 backend's scores (the reference, whose own
rows say so instead of agreeing with themselves) and with MOS labels (a manifest.csv).
A backend that cannot be opened here gets rows whose status is "unavailable: <reason>".
"""

from __future__ import annotations

import csv
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy import ceiling
from pmtiqa_deploy.agreement import agreement
from pmtiqa_deploy.errors import (
    BackendUnavailable, CheckpointError, DatasetError, DecodeError, PmtIqaError, SpecError)
from pmtiqa_deploy.footprint import CountPoint, count_sweep, device_used_mb, peak_rss_mb, reset_peak_rss
from pmtiqa_deploy.inputs import walk_images
from pmtiqa_deploy.preprocess import decode_image, preprocess
from pmtiqa_deploy.score import Scorer, open_backend
from pmtiqa_deploy.spec import PRECISIONS, ModelSpec

__all__ = ["BackendChoice", "BenchImages", "BenchResult", "BenchRow", "builtin_images",
           "images_from_folder", "peak_rss_mb", "reset_peak_rss", "run_benchmark"]

DEFAULT_BACKENDS = ("onnxruntime:fp32", "onnxruntime:fp16", "tensorrt", "torch:fp32")
REFERENCE = ("torch", "fp32")
Key = tuple[str, str, int, int]  # backend, precision, batch, threads


@dataclass(frozen=True)
class BackendChoice:
    """`name` or `name:precision` from the command line (precision None: the backend's default)."""

    name: str
    precision: str | None = None

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        name, _, precision = text.partition(":")
        if precision and precision not in PRECISIONS:
            raise ValueError(f"{text!r}: precision must be one of {', '.join(PRECISIONS)} "
                             "(as in onnxruntime:int8)")
        return cls(name, precision or None)

    def label(self) -> str:
        return f"{self.name}{':' + self.precision if self.precision else ''}"


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
    threads: int | None = None
    status: str = "ok"
    preprocess: str | None = None  # "cpu" or "gpu": where the end-to-end crops were made
    reference: bool = False  # the torch fp32 rows: what the others agree with
    file: str | None = None
    file_bytes: int | None = None
    rounds: int = 0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None  # median over rounds
    images_per_s_min: float | None = None
    images_per_s_max: float | None = None
    crops_per_s: float | None = None
    gflop_per_crop: float | None = None
    gflops: float | None = None  # achieved, model-only
    ceiling_gflops: float | None = None  # the best FP32 GEMM, same run, same threads
    ceiling_fraction: float | None = None
    h2d_ms: float | None = None
    compute_ms: float | None = None
    d2h_ms: float | None = None
    peak_rss_mb: float | None = None
    rss_scope: str | None = None  # "group": reset before this thread count and batch; "process"
    device_mem_mb: float | None = None
    end_to_end_images_per_s: float | None = None  # median over passes
    end_to_end_ratio: float | None = None
    end_to_end_ceiling_fraction: float | None = None
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
    latencies_ms: dict[Key, list[float]] = field(default_factory=dict)
    scores: dict[Key, np.ndarray] = field(default_factory=dict)
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


# --- the run --------------------------------------------------------------------------

def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int) -> None:
    """Set the pools a row uses that are not per session: OpenCV's, and torch's when the
    torch backend is loaded (ONNX Runtime's is set per session, BLAS's per GEMM probe)."""
    import sys

    import cv2

    cv2.setNumThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@dataclass
class _Open:
    """One backend open for one thread count, and its rows' running measurements."""

    choice: BackendChoice
    backend: Any
    on_gpu: bool
    row: BenchRow | None = None
    scorer: Scorer | None = None
    latencies: list[float] = field(default_factory=list)
    round_ips: list[float] = field(default_factory=list)
    e2e_ips: list[float] = field(default_factory=list)
    splits: list[dict[str, float]] = field(default_factory=list)


def run_benchmark(model_dir: str | os.PathLike, images: BenchImages, *,
                  backends: Sequence[str | BackendChoice] = DEFAULT_BACKENDS,
                  batches: Sequence[int] = (1, 8), threads: Sequence[int] | int | None = None,
                  warmup: int = 3, iterations: int = 20, rounds: int = 5, e2e_rounds: int = 1,
                  checkpoint: str | os.PathLike | None = None, device: str | None = None,
                  workers: int | None = None, preprocess: str = "auto", measure_ceiling: bool = True,
                  log: Callable[[str], None] = lambda message: None,
                  show_progress: bool = False) -> BenchResult:
    """Benchmark every backend at every thread count and batch size (module docstring).
    `iterations` timed model-only calls per row are spread over `rounds` rounds; `preprocess`
    ("auto", "cpu", "gpu") is the Scorers' choice of where crops are made; with
    `show_progress`, a bar over the (thread count, batch size) groups on stderr."""
    from pmtiqa_deploy.progress import progress_bar
    spec = ModelSpec.load(model_dir)
    low, high = spec.input.batch_min, spec.input.batch_max
    bad = [b for b in batches if not low <= b <= high]
    if bad:
        raise SpecError(f"batch size(s) {bad} are outside the model's range {low}..{high} "
                        "(model.json); pick batch sizes in it or re-export with a wider range")
    if warmup < 0 or iterations < 1 or rounds < 1 or e2e_rounds < 1:
        raise ValueError("warmup must be >= 0 and iterations, rounds and e2e_rounds >= 1")
    thread_counts = [threads] if isinstance(threads, int) else list(threads or [available_cpus()])
    if min(thread_counts) < 1:
        raise ValueError(f"thread counts must be positive, got {thread_counts}")
    choices = [BackendChoice.parse(b) if isinstance(b, str) else b for b in backends]
    crops = _load_crops(spec, images.paths[:max(batches)])
    flops = _flops(model_dir, spec)
    result = BenchResult([], images=images, meta=_meta(model_dir, images, warmup, iterations, rounds,
                                                       e2e_rounds, thread_counts, flops))
    per_round = max(1, math.ceil(iterations / rounds))
    bar = progress_bar(total=len(thread_counts) * len(batches), desc="benchmark", unit="group",
                       enabled=show_progress)
    for count in thread_counts:
        set_threads(count)
        opened = _open_all(result, choices, model_dir, batches, count, device, checkpoint, log)
        try:
            cpu_rows = any(not entry.on_gpu for entry in opened)
            probes, notes = ceiling.gemm_probes(count) if measure_ceiling and cpu_rows else ([], [])
            result.meta.setdefault("ceiling_notes", []).extend(n for n in notes
                                                               if n not in result.meta["ceiling_notes"])
            for batch in batches:
                log(f"threads {count}, batch {batch}: {rounds} interleaved rounds of "
                    f"{', '.join(e.choice.label() for e in opened)}")
                _measure_group(result, opened, batch, count, crops, warmup, rounds, per_round,
                               e2e_rounds, workers if workers is not None else count, probes, flops, log,
                               preprocess)
                bar.update()
        finally:
            for entry in opened:
                entry.backend.close()
    bar.close()
    labels = [c.label() for c in choices]
    result.rows.sort(key=lambda r: (thread_counts.index(r.threads), _choice_index(r, choices, labels),
                                    list(batches).index(r.batch)))
    _agreement(result)
    result.meta["load_average_after"] = list(os.getloadavg())
    return result


def _choice_index(row: BenchRow, choices: list[BackendChoice], labels: list[str]) -> int:
    """Where a row's backend stands in the order asked for (its precision may have been
    the backend's default)."""
    for i, choice in enumerate(choices):
        if choice.name == row.backend and choice.precision in (None, row.precision):
            return i
    return len(labels)


def backend_options(choice: BackendChoice, threads: int, device: str | None,
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


def run_count_sweep(model_dir: str | os.PathLike, images: BenchImages, choice: BackendChoice, *,
                    batch: int, threads: int, counts: Sequence[int], workers: int | None = None,
                    device: str | None = None, checkpoint: str | os.PathLike | None = None,
                    log: Callable[[str], None] = lambda message: None) -> list[CountPoint]:
    """Time and memory per image from a hundred images to tens of thousands, through one
    backend (`pmtiqa_deploy.footprint.count_sweep`), with its pools set to `threads`."""
    set_threads(threads)
    options = backend_options(choice, threads, device, checkpoint)
    options.pop("timing", None)
    log(f"image-count sweep: {choice.label()}, batch {batch}, {threads} threads, up to {max(counts)} images")
    with Scorer.open(model_dir, choice.name, batch_size=batch, workers=workers or threads, **options) as scorer:
        return count_sweep(scorer, images.paths, counts, log)


def _open_all(result: BenchResult, choices: list[BackendChoice], model_dir: Any, batches: Sequence[int],
              threads: int, device: str | None, checkpoint: Any, log: Callable[[str], None]) -> list[_Open]:
    opened = []
    for choice in choices:
        try:
            options = backend_options(choice, threads, device, checkpoint)
            backend = open_backend(choice.name, model_dir, **options)
        except (BackendUnavailable, SpecError, CheckpointError, ValueError) as exc:
            result.rows.extend(BenchRow(choice.name, choice.precision or "-", batch, threads,
                                        status=f"unavailable: {exc}") for batch in batches)
            log(f"{choice.label()}: unavailable: {exc}")
            continue
        on_gpu = choice.name == "tensorrt" or device == "cuda"
        opened.append(_Open(choice, backend, on_gpu))
    return opened


def _measure_group(result: BenchResult, opened: list[_Open], batch: int, threads: int,
                   crops: list[np.ndarray], warmup: int, rounds: int, per_round: int, e2e_rounds: int,
                   workers: int, probes: list[ceiling.GemmProbe], flops: float | None,
                   log: Callable[[str], None], preprocess: str = "auto") -> None:
    """Every open backend at one batch size, interleaved; appends one row per backend."""
    x = np.stack([crops[i % len(crops)] for i in range(batch)])
    baseline = device_used_mb() if any(e.on_gpu for e in opened) else None
    live = []
    for entry in opened:
        path = getattr(entry.backend, "path", None)
        entry.row = BenchRow(entry.backend.name, entry.backend.precision, batch, threads,
                             reference=(entry.backend.name, entry.backend.precision) == REFERENCE,
                             file=path and Path(path).name, file_bytes=path and Path(path).stat().st_size,
                             rounds=rounds, gflop_per_crop=None if flops is None else flops / 1e9)
        entry.latencies, entry.round_ips, entry.e2e_ips, entry.splits = [], [], [], []
        entry.scorer = None

        def start(e: _Open = entry) -> None:  # GPU preprocessing may be refused for this backend
            e.scorer = Scorer(e.backend, batch_size=batch, workers=workers, preprocess=preprocess)
            e.row.preprocess = e.scorer.stage.name
            for _ in range(warmup):
                e.scorer.infer(x)
        if _guarded(entry, start):
            live.append(entry)
    scoped = reset_peak_rss()
    gemm: dict[str, list[float]] = {probe.name: [] for probe in probes}
    for _ in range(rounds):
        for entry in [e for e in live if e.row.status == "ok"]:
            _guarded(entry, lambda e=entry: _timed_calls(e, x, per_round))
        for probe in probes:
            gemm[probe.name].append(probe.time_once())
    paths = result.images.paths if result.images else ()
    for _ in range(e2e_rounds):
        for entry in [e for e in live if e.row.status == "ok"]:
            _guarded(entry, lambda e=entry: _end_to_end(result, e, paths))
    medians = {name: statistics.median(values) for name, values in gemm.items() if values}
    best = max(medians.values()) if medians else None
    if medians:
        result.meta.setdefault("ceilings", []).append(
            {"threads": threads, "batch": batch, "gflops": best, "source": max(medians, key=medians.get),
             **{f"{name}_gflops": value for name, value in medians.items()}})
    used = device_used_mb() if baseline is not None else None
    for entry in opened:
        row = entry.row
        if entry.scorer is not None:
            entry.scorer.close()
        if row.status == "ok":
            _summarise(entry, scoped, best, flops)
            result.latencies_ms[_key(row)] = entry.latencies
        if entry.on_gpu and used is not None and baseline is not None:
            row.device_mem_mb = round(used - baseline, 1)
        result.rows.append(row)
        log(f"  {row.backend} {row.precision}: {row.status}" if row.status != "ok" else
            f"  {row.backend} {row.precision}: {row.images_per_s:.1f} images/s "
            f"({row.images_per_s_min:.1f}..{row.images_per_s_max:.1f}), end to end "
            f"{row.end_to_end_images_per_s or 0:.1f}"
            + (f", {row.ceiling_fraction:.2f} of the {best:.0f} GFLOP/s ceiling"
               if row.ceiling_fraction and best else ""))


def _guarded(entry: _Open, work: Callable[[], Any]) -> bool:
    """Run `work`; a backend failure (out of device memory at a large batch, say) makes
    the row "failed" and takes the backend out of the remaining rounds."""
    try:
        work()
        return True
    except PmtIqaError as exc:
        entry.row.status = f"failed: {exc}"
        return False


def _timed_calls(entry: _Open, x: np.ndarray, calls: int) -> None:
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        entry.scorer.infer(x)
        latencies.append((time.perf_counter() - start) * 1000.0)
        timings = getattr(entry.backend, "timings", None)
        if timings:
            entry.splits.append(timings)
    entry.latencies += latencies
    entry.round_ips.append(len(latencies) * x.shape[0] / (sum(latencies) / 1000.0))


def _end_to_end(result: BenchResult, entry: _Open, paths: Sequence[Path]) -> None:
    start = time.perf_counter()
    rows = list(entry.scorer.score_files(paths))
    elapsed = time.perf_counter() - start
    scores = np.asarray([np.nan if r.score is None else r.score for r in rows], dtype=np.float64)
    scored = int(np.isfinite(scores).sum())
    entry.row.scored, entry.row.failed = scored, len(rows) - scored
    if elapsed > 0:
        entry.e2e_ips.append(scored / elapsed)
    result.scores.setdefault(_key(entry.row), scores)


def _key(row: BenchRow) -> Key:
    return (row.backend, row.precision, row.batch, row.threads or 0)


def _summarise(entry: _Open, scoped: bool, ceiling_gflops: float | None, flops: float | None) -> None:
    row, crop_count = entry.row, entry.scorer.spec.preprocess.crop_count
    ms = np.asarray(entry.latencies)
    row.mean_ms = float(ms.mean())
    row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    row.images_per_s = float(statistics.median(entry.round_ips))
    row.images_per_s_min, row.images_per_s_max = min(entry.round_ips), max(entry.round_ips)
    row.crops_per_s = row.images_per_s * crop_count
    if entry.splits:
        row.h2d_ms, row.compute_ms, row.d2h_ms = (
            float(np.mean([s[k] for s in entry.splits])) for k in ("h2d_ms", "compute_ms", "d2h_ms"))
    if entry.e2e_ips:
        row.end_to_end_images_per_s = float(statistics.median(entry.e2e_ips))
        row.end_to_end_ratio = row.end_to_end_images_per_s / row.images_per_s
    if flops is not None:
        row.gflops = row.crops_per_s * flops / 1e9
        if ceiling_gflops and not entry.on_gpu:
            row.ceiling_gflops = ceiling_gflops
            row.ceiling_fraction = row.gflops / ceiling_gflops
            if row.end_to_end_images_per_s:
                row.end_to_end_ceiling_fraction = (row.end_to_end_images_per_s * crop_count * flops
                                                   / 1e9 / ceiling_gflops)
    row.peak_rss_mb = round(peak_rss_mb(), 1)
    row.rss_scope = "group" if scoped else "process"


def _load_crops(spec: ModelSpec, paths: Sequence[Path]) -> list[np.ndarray]:
    """The model-only batches' images, preprocessed once and kept in memory."""
    crops = []
    for path in paths:
        try:
            crops.append(preprocess(decode_image(path), spec.preprocess, spec.input))
        except DecodeError as exc:
            raise DatasetError(f"benchmark image {exc}; remove it from the image folder") from None
    return crops


def _flops(model_dir: Any, spec: ModelSpec) -> float | None:
    fp32 = [a for a in spec.artifacts if a.format == "onnx" and a.precision == "fp32"]
    if not fp32 or not (Path(model_dir) / fp32[0].file).is_file():
        return None
    return ceiling.flops_per_crop(Path(model_dir) / fp32[0].file, spec.preprocess.crop_count)


def _pair(scores: np.ndarray, target: Sequence[float] | np.ndarray) -> Any:
    """Agreement over the images both lists scored (None below two)."""
    other = np.asarray(target, dtype=np.float64)
    keep = np.isfinite(scores) & np.isfinite(other)
    return agreement(scores[keep], other[keep]) if keep.sum() >= 2 else None


def _agreement(result: BenchResult) -> None:
    """Fill each measured row's agreement with the torch fp32 reference and with MOS."""
    reference = next((v for k, v in result.scores.items() if k[:2] == REFERENCE), None)
    mos = result.images.mos if result.images else None
    for row in result.rows:
        scores = result.scores.get(_key(row))
        if scores is None:
            continue
        if not row.reference and reference is not None and (vs := _pair(scores, reference)) is not None:
            row.srcc_vs_torch, row.plcc_vs_torch, row.max_abs_diff = vs.srcc, vs.plcc, vs.max_abs_diff
        if mos is not None and (vs := _pair(scores, mos)) is not None:
            row.srcc_vs_mos, row.plcc_vs_mos = vs.srcc, vs.plcc


def _meta(model_dir: Any, images: BenchImages, warmup: int, iterations: int, rounds: int,
          e2e_rounds: int, threads: list[int], flops: float | None) -> dict[str, Any]:
    from pmtiqa_deploy import __version__

    return {"model_dir": str(model_dir), "images": images.source, "image_count": len(images.paths),
            "mos_labels": images.mos is not None, "warmup": warmup, "iterations": iterations,
            "rounds": rounds, "e2e_rounds": e2e_rounds, "threads": threads,
            "gflop_per_crop": None if flops is None else flops / 1e9,
            "machine": platform.machine(), "cpu_model": ceiling.cpu_model(),
            "cpu_flags": ceiling.cpu_flags(), "blas_environment": ceiling.blas_environment(),
            "cpu_count": os.cpu_count(), "available_cpus": available_cpus(),
            "load_average": list(os.getloadavg()), "python": platform.python_version(),
            "pmtiqa_deploy": __version__, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
