"""Parity: every exported artifact against PyTorch FP32, on real images.

The reference is the checkpoint's own model in PyTorch FP32, fed by the reference
preprocessing (`pmtiqa_deploy.preprocess`: decode, resize, fixed crop grid, normalise),
one score per image (the mean over its crops). Each artifact scores the same crops in
the spec's input dtype and layout. Per artifact: the largest absolute score difference
(in the score spec's units), SRCC, PLCC and KRCC against PyTorch's scores.

Tolerances (`TOLERANCES`), with max abs stated in points on a 0..100 scale and scaled by
(score max - score min) / 100 for other ranges:
| artifact                 | max abs  | SRCC     |
| ONNX FP32 (ONNX Runtime) | 1e-3     | >= 0.9999 |
| ONNX FP16 (ONNX Runtime) | 1.0      | >= 0.999  |
| TensorRT engine (FP16)   | 1.0      | >= 0.999  |
| TensorRT engine (FP32)   | 1e-2     | >= 0.9999 |
| ONNX INT8 (ONNX Runtime) | 5.0      | >= --int8-min-srcc (0.999) |
| TensorRT engine (INT8)   | 5.0      | >= --int8-min-srcc (0.999) |
FP32 ONNX must reproduce PyTorch to rounding. FP16 and INT8 are judged on ranking (SRCC); their max
abs bound is a guard against an offset or scale error that ranks would not show (a
wrong normalisation, a lost mean), not a precision target. An undefined SRCC (constant
scores, fewer than two images) fails: parity then proves nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.agreement import Agreement, agreement
from pmtiqa_deploy.errors import DatasetError
from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
from pmtiqa_deploy.spec import ModelSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
REFERENCE = "pytorch-fp32"


@dataclass(frozen=True)
class Tolerance:
    max_abs_per_100: float  # points on a 0..100 scale
    min_srcc: float

    def max_abs(self, score_min: float, score_max: float) -> float:
        return self.max_abs_per_100 * (score_max - score_min) / 100.0


TOLERANCES = {
    "onnxruntime-fp32": Tolerance(1e-3, 0.9999),
    "onnxruntime-fp16": Tolerance(1.0, 0.999),
    "tensorrt-fp16": Tolerance(1.0, 0.999),
    "tensorrt-fp32": Tolerance(1e-2, 0.9999),
    "onnxruntime-int8": Tolerance(5.0, 0.999),
    "tensorrt-int8": Tolerance(5.0, 0.999),
}


@dataclass(frozen=True)
class BackendParity:
    backend: str
    artifact: str
    agreement: Agreement
    max_abs_allowed: float
    min_srcc: float
    passed: bool
    scores: tuple[float, ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "artifact": self.artifact, **self.agreement.to_dict(),
                "max_abs_allowed": self.max_abs_allowed, "min_srcc": self.min_srcc,
                "passed": self.passed, "scores": list(self.scores)}


@dataclass(frozen=True)
class ParityReport:
    images: tuple[str, ...]
    reference_scores: tuple[float, ...]
    score_range: tuple[float, float]
    results: tuple[BackendParity, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[BackendParity]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": REFERENCE, "passed": self.passed, "count": len(self.images),
                "score_range": list(self.score_range), "images": list(self.images),
                "reference_scores": list(self.reference_scores),
                "backends": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """The per-backend table printed after every export."""
        header = (f"{'backend':<18} {'artifact':<17} {'max abs':>10} {'allowed':>9} "
                  f"{'SRCC':>8} {'min':>7} {'PLCC':>8}  result")
        lines = [f"parity against {REFERENCE} on {len(self.images)} images", header,
                 "-" * len(header)]
        for r in self.results:
            a = r.agreement
            lines.append(f"{r.backend:<18} {r.artifact:<17} {a.max_abs_diff:>10.2e} "
                         f"{r.max_abs_allowed:>9.1e} {a.srcc:>8.5f} {r.min_srcc:>7.4f} "
                         f"{a.plcc:>8.5f}  {'pass' if r.passed else 'FAIL'}")
        return "\n".join(lines)


def judge(backend: str, artifact: str, scores: np.ndarray, reference: np.ndarray,
          score_range: tuple[float, float], tolerance: Tolerance | None = None) -> BackendParity:
    """Compare one backend's scores with the reference under its tolerance (the table's,
    unless `tolerance` is given: the INT8 gate's --int8-min-srcc)."""
    tolerance = tolerance or TOLERANCES[backend]
    result = agreement(scores, reference)
    allowed = tolerance.max_abs(*score_range)
    passed = (not math.isnan(result.srcc) and result.srcc >= tolerance.min_srcc
              and result.max_abs_diff <= allowed)
    return BackendParity(backend, artifact, result, allowed, tolerance.min_srcc, passed,
                         tuple(float(s) for s in scores))


def image_files(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"--parity-images {folder} is not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise DatasetError(f"{folder} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
                           "parity needs at least 2 (SRCC is undefined below that), ideally 20+")
    return files[:limit] if limit else files


def builtin_test_images(directory: str | os.PathLike | None = None, limit: int | None = None,
                        progress: bool = True, references: Sequence[str] | None = None) -> list[Path]:
    """The built-in dataset's test images, building the dataset into `directory` (default:
    its cache folder) when it is not there yet.

    With `references` (a checkpoint's `training["test_references"]`), the images of those
    sources: the very images the checkpoint was tested on. Otherwise the content split
    that training uses by default (test fraction 0.2, seed 0).
    """
    from pmtiqa_deploy.train import builtin, datasets

    root = builtin.make_builtin(directory or builtin.default_dir(), progress=progress)
    dataset = datasets.load_dataset("builtin", root)
    wanted = set(references or ())
    test = [item for item in dataset.items if str(item.reference) in wanted]
    if not test:
        _, test = datasets.content_split(list(dataset.items), test_fraction=0.2, seed=0)
    files = sorted(Path(item.path) for item in test)
    return files[:limit] if limit else files


def load_crops(files: Sequence[Path], spec: ModelSpec,
               progress: Callable[[Any], Any] = lambda it: it) -> list[np.ndarray]:
    """Each image's crops, [N, H, W, 3] uint8, by the reference preprocessing."""
    return [crops_uint8(decode_image(path), spec.preprocess) for path in progress(files)]


def model_input(crops: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """A batch of images' crops in the graph's input dtype and layout."""
    if spec.input.dtype == "uint8":
        return np.ascontiguousarray(np.stack(crops))
    return np.stack([normalize(c, spec.preprocess, spec.input.dtype) for c in crops])


def batched_scores(run: Callable[[np.ndarray], np.ndarray], crops: Sequence[np.ndarray],
                   spec: ModelSpec, progress: Callable[[Any], Any] = lambda it: it) -> np.ndarray:
    """Scores of every image, in batches inside the spec's batch range (a short last
    batch is padded by repeating its first image and the padding dropped)."""
    size = spec.input.batch_max
    out = []
    for start in progress(range(0, len(crops), size)):
        chunk = list(crops[start:start + size])
        real = len(chunk)
        chunk += [chunk[0]] * max(0, spec.input.batch_min - real)
        out.append(np.asarray(run(model_input(chunk, spec)), dtype=np.float64)[:real])
    return np.concatenate(out)


def torch_scores(model, crops: Sequence[np.ndarray], spec: ModelSpec, batch: int = 8,
                 progress: Callable[[Any], Any] = lambda it: it) -> np.ndarray:
    """The reference: the PyTorch model on float32 normalised crops, mean over crops."""
    import torch

    scores = []
    with torch.no_grad():
        for start in progress(range(0, len(crops), batch)):
            chunk = crops[start:start + batch]
            x = torch.from_numpy(np.concatenate([normalize(c, spec.preprocess) for c in chunk]))
            crop_scores = model(x)[0].reshape(len(chunk), -1)
            scores.append(crop_scores.mean(dim=1).double().numpy())
    return np.concatenate(scores)


def onnxruntime_runner(path: str | os.PathLike,
                       threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function running an ONNX file on ONNX Runtime's CPU provider, returning `score`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(["score"], {name: images})[0]
