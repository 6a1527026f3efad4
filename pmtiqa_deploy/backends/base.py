"""The one small base class every backend implements.

A backend holds one model (one artifact of an exported model directory) and runs batches
of preprocessed crops: NumPy in, named NumPy arrays out. `infer` checks the input against
the spec once and calls the subclass's `_infer`. Backends are context managers that free
what they hold (sessions, device buffers, streams) on exit.

Backends that run on a GPU may also take device input (`device_input = True`): GPU
preprocessing (pmtiqa_deploy.stages) then writes image i's crops at
`input_device_buffer(batch) + i * input_slot_bytes` on `stream` (a CUDA stream handle)
and calls `infer_device(batch)`; `gpu_index` is the CUDA device they run on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pmtiqa_deploy.errors import InputError, SpecError
from pmtiqa_deploy.spec import ModelSpec


class Backend:
    """Subclasses set `name` and `precision`, load in `__init__`, run in `_infer`."""

    name = "base"
    precision = "fp32"
    device_input = False  # True: the device-input protocol above is implemented

    def __init__(self, model_dir: str | os.PathLike | None, spec: ModelSpec | None = None):
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if spec is None:
            if model_dir is None:
                raise SpecError(f"{self.name}: give the exported model directory (holding "
                                "model.json) or a ModelSpec")
            spec = ModelSpec.load(model_dir)
        self.spec = spec

    def check_input(self, images: np.ndarray) -> None:
        spec = self.spec
        if not isinstance(images, np.ndarray):
            raise InputError(f"{self.name}: input must be a NumPy array, got {type(images).__name__}")
        expected = spec.input_shape(images.shape[0] if images.ndim else 0)
        if images.ndim != len(expected) or images.shape[1:] != expected[1:]:
            raise InputError(
                f"{self.name}: input shape {images.shape} does not match the spec's "
                f"{('B',) + expected[1:]} ({spec.input.layout}); preprocess with "
                "pmtiqa_deploy.preprocess.preprocess")
        if images.dtype != np.dtype(spec.input.dtype):
            raise InputError(f"{self.name}: input dtype {images.dtype} but the model takes "
                             f"{spec.input.dtype}")
        batch = images.shape[0]
        if not spec.input.batch_min <= batch <= spec.input.batch_max:
            raise InputError(
                f"{self.name}: batch {batch} is outside the model's range "
                f"{spec.input.batch_min}..{spec.input.batch_max}; split the batch or re-export "
                "with a wider --batch range")

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch: {'score': [B], 'level_probs': [B, K], ...}."""
        self.check_input(images)
        return self._infer(images)

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def model_file(self, format: str, precision: str) -> Path:
        """The spec's artifact of this format and precision in `model_dir`, hash-checked."""
        if self.model_dir is None:
            raise SpecError(f"{self.name}: a model directory is needed to load the {format} "
                            f"{precision} model file")
        return self.spec.verify_artifact(self.model_dir, self.spec.artifact(format, precision))

    def close(self) -> None:
        """Free sessions, buffers and streams. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
