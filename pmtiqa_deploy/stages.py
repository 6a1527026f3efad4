"""How a Scorer turns image files into scores: where decoding and preprocessing run.

- `CpuStage` (preprocess "cpu"): the reference (`pmtiqa_deploy.preprocess`) on the decode
  threads, crops stacked into host batches, the backend's `infer`.
- `GpuStage` (preprocess "gpu"): the decode threads only decode (and reject images the
  resize policy refuses); per batch, the uint8 images go up in one pinned copy and the
  kernel (`cuda_preprocess.GpuPreprocessor`) writes the crops straight into the backend's
  device input, on the backend's stream, before the backend runs (`infer_device`). With
  decode "gpu", JPEG files are read as bytes on the threads and decoded on the GPU in one
  nvImageCodec call per batch (`gpu_decoder.GpuDecoder`); other formats, and a JPEG the
  GPU decoder cannot read, are decoded by the reference decoder on the CPU.

A backend takes device input when it has `device_input = True` and the protocol:
`stream`, `input_slot_bytes`, `input_device_buffer(batch)`, `infer_device(batch)`
(TensorRT, and torch on CUDA). `choose_stage` resolves "auto": the GPU stage when the
backend takes device input, the kernel implements the spec's interpolation and CUDA is
usable; otherwise the CPU stage, with the reason kept in `stage.reason`. An explicit
"gpu" that cannot be honoured is an error that says why, never a silent CPU run.

CUDA modules are imported only when a GPU stage is built, so the CPU path needs none;
OpenCV (the reference) only when a stage is built, so the command lines' --help stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.errors import BackendUnavailable, DecodeError, SpecError

PREPROCESS_CHOICES = ("auto", "cpu", "gpu")
DECODE_CHOICES = ("cpu", "gpu")
# One batch's outcome per image: its score, or the exception that made it an error row.
Outcome = float | Exception


class CpuStage:
    """The reference preprocessing on the decode threads; host batches."""

    name = "cpu"
    decode = "cpu"

    def __init__(self, backend: Backend, infer: Callable[[np.ndarray], dict[str, np.ndarray]],
                 reason: str = "asked for"):
        from pmtiqa_deploy import preprocess

        self.spec, self._infer, self.reason, self._reference = backend.spec, infer, reason, preprocess

    def load(self, path: str | os.PathLike) -> np.ndarray:
        return self._reference.preprocess_file(path, self.spec.preprocess, self.spec.input)

    def run(self, items: Sequence[np.ndarray]) -> list[Outcome]:
        return [float(s) for s in self._infer(np.stack(items))["score"]]

    def close(self) -> None:
        """Nothing to free."""


class GpuStage:
    """Decode on the CPU threads (or JPEG on the GPU), preprocess on the GPU into the
    backend's device input. `target(count)` is the batch size to run `count` images at
    (the Scorer's padding rule); padding slots repeat the last image."""

    name = "gpu"

    def __init__(self, backend: Backend, target: Callable[[int], int], decode: str = "cpu",
                 reason: str = "asked for"):
        from pmtiqa_deploy import preprocess
        from pmtiqa_deploy.cuda_preprocess import GpuPreprocessor

        self.backend, self.spec, self._target, self.reason = backend, backend.spec, target, reason
        self.decode, self._reference = decode, preprocess
        self._decoder: Any = None
        self._gpu = GpuPreprocessor(self.spec, device=getattr(backend, "gpu_index", 0))
        try:
            if decode == "gpu":
                from pmtiqa_deploy.gpu_decoder import GpuDecoder

                self._decoder = GpuDecoder(getattr(backend, "gpu_index", 0))
        except BaseException:
            self._gpu.close()
            raise

    def _checked(self, image: Any, shape: tuple[int, ...]) -> Any:
        self._reference.resized_size(shape[0], shape[1], self.spec.preprocess)  # DecodeError: too small
        return image

    def load(self, path: str | os.PathLike) -> Any:
        """A decoded image, or ("jpeg", bytes) for the GPU decoder."""
        if self._decoder is not None:
            data = _read(path)
            if data[:2] == b"\xff\xd8":
                if not self._reference.is_complete_jpeg(data):
                    raise DecodeError(f"{os.fspath(path)}: JPEG is truncated (no end-of-image marker); "
                                      "re-copy the file")
                return ("jpeg", data)
            image = self._reference.decode_image(data)
        else:
            image = self._reference.decode_image(path)
        return self._checked(image, image.shape)

    def _decoded(self, items: Sequence[Any]) -> list[Any]:
        """Each item as an image on the host or the GPU, or the exception it raised."""
        out: list[Any] = list(items)
        jpegs = [i for i, item in enumerate(items) if isinstance(item, tuple)]
        if not jpegs:
            return out
        decoded = self._decoder.decode([items[i][1] for i in jpegs], self.backend.stream)
        for i, image in zip(jpegs, decoded):
            try:
                if image is None:  # not for the GPU decoder: the reference decoder judges it
                    image = self._reference.decode_image(items[i][1])
                    out[i] = self._checked(image, image.shape)
                else:
                    out[i] = self._checked(image, tuple(image.shape))
            except DecodeError as exc:
                out[i] = exc
        return out

    def run(self, items: Sequence[Any]) -> list[Outcome]:
        images = self._decoded(items)
        good = [i for i, image in enumerate(images) if not isinstance(image, Exception)]
        outcomes: list[Outcome] = [image for image in images]
        if good:
            batch = [images[i] for i in good]
            target = self._target(len(batch))
            batch += [batch[-1]] * (target - len(batch))
            scores = self._gpu.infer(batch, self.backend)["score"]
            for i, score in zip(good, scores):
                outcomes[i] = float(score)
        return outcomes

    def close(self) -> None:
        self._gpu.close()
        if self._decoder is not None:
            self._decoder.close()


def _read(path: str | os.PathLike) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(f"{os.fspath(path)}: cannot read file ({exc.strerror})") from None
    if not data:
        raise DecodeError(f"{os.fspath(path)}: file is empty (0 bytes)")
    return data


def gpu_unusable(backend: Backend) -> str | None:
    """Why the GPU stage cannot serve this backend here, or None when it can."""
    if not getattr(backend, "device_input", False):
        return (f"the {backend.name} backend takes host arrays, not device input (GPU "
                "preprocessing feeds the tensorrt backend, and torch on CUDA)")
    try:
        from pmtiqa_deploy.cuda_preprocess import kernel_resize_mode
    except ImportError as exc:
        return (f"cuda-python is not installed ({exc.name or exc}): pip install "
                "'pmtiqa-deploy[cuda]'")
    try:
        kernel_resize_mode(backend.spec)
    except SpecError as exc:
        return str(exc)
    return None


def choose_stage(backend: Backend, preprocess: str, decode: str,
                 infer: Callable[[np.ndarray], dict[str, np.ndarray]],
                 target: Callable[[int], int]) -> CpuStage | GpuStage:
    """The stage for these choices (module docstring); ValueError for an unknown or
    contradictory choice, BackendUnavailable/SpecError when "gpu" cannot run here."""
    if preprocess not in PREPROCESS_CHOICES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_CHOICES}, got {preprocess!r}")
    if decode not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {DECODE_CHOICES}, got {decode!r}")
    if preprocess == "cpu":
        if decode == "gpu":
            raise ValueError("GPU decoding feeds GPU preprocessing: use --preprocess gpu (or auto) "
                             "with --decode gpu, or --decode cpu")
        return CpuStage(backend, infer)
    why = gpu_unusable(backend)
    if why is None:
        return GpuStage(backend, target, decode,
                        reason="asked for" if preprocess == "gpu" else "auto: the backend runs on a GPU")
    if preprocess == "gpu" or decode == "gpu":
        raise BackendUnavailable(f"GPU {'decoding' if preprocess == 'auto' else 'preprocessing'} "
                                 f"cannot run: {why}")
    return CpuStage(backend, infer, reason=f"auto: {why}")
