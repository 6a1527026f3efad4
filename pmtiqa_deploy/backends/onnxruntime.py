"""ONNX Runtime backend: model.onnx (fp32), model.fp16.onnx (fp16) or model.int8.onnx (int8,
a QDQ graph from `pmtiqa-export --int8`) on the CPU or CUDA execution provider.

Loader and runner are separate, as in Polygraphy: `session_from_onnx` builds an
InferenceSession from a file (and is useful on its own, e.g. for parity checks during
export); `OnnxRuntimeBackend` checks the file against the spec (hash, then the graph's
signature) and runs batches.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.backends.contract import TensorInfo, check_io
from pmtiqa_deploy.errors import BackendUnavailable, SpecError
from pmtiqa_deploy.spec import PRECISIONS, ModelSpec

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# ONNX Runtime reports element types as strings such as "tensor(float)".
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool", "tensor(bfloat16)": "bfloat16",
}


def session_from_onnx(path: str | os.PathLike, device: str = "cpu",
                      threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession for one ONNX file on `device` ("cpu" or "cuda").

    `threads` sets intra-op parallelism (None: ONNX Runtime's default, one per core).
    CUDA is asked for explicitly and never silently replaced by the CPU.
    """
    if device not in PROVIDERS:
        raise ValueError(f"device must be one of {sorted(PROVIDERS)}, got {device!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    provider = PROVIDERS[device]
    if provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"ONNX Runtime {ort.__version__} here has no {provider} (it has "
            f"{ort.get_available_providers()}); for CUDA install "
            "'pmtiqa-deploy[onnxruntime-gpu]' in place of the CPU onnxruntime package")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = [provider] if device == "cpu" else [provider, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types, all unrelated
        raise SpecError(f"ONNX Runtime cannot load {path} ({exc}); re-export the model") from None
    if session.get_providers()[0] != provider:
        raise BackendUnavailable(
            f"ONNX Runtime did not enable {provider} for {path} (active: {session.get_providers()}); "
            "check the CUDA and cuDNN libraries onnxruntime-gpu needs")
    return session


def session_io(session: ort.InferenceSession) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The session's inputs and outputs in the form `check_io` reads."""
    def info(arg) -> TensorInfo:
        return TensorInfo(arg.name, _ORT_TYPES.get(arg.type, arg.type), tuple(arg.shape))
    return [info(a) for a in session.get_inputs()], [info(a) for a in session.get_outputs()]


class OnnxRuntimeBackend(Backend):
    """Runs one exported ONNX file. Options: precision "fp32" (model.onnx), "fp16"
    (model.fp16.onnx) or "int8" (model.int8.onnx), device "cpu" or "cuda", threads
    (intra-op threads)."""

    name = "onnxruntime"

    def __init__(self, model_dir: str | os.PathLike, spec: ModelSpec | None = None, *,
                 precision: str = "fp32", device: str = "cpu", threads: int | None = None):
        super().__init__(model_dir, spec)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.device = device
        self.path: Path = self.model_file("onnx", precision)
        self._session: ort.InferenceSession | None = session_from_onnx(self.path, device, threads)
        inputs, outputs = session_io(self._session)
        check_io(self.spec, inputs, outputs, str(self.path))
        self._output_names = [o.name for o in self.spec.outputs]

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.name} backend for {self.path} is closed")
        return self._session

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, {self.spec.input.name: images})
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self._output_names, values)}

    def close(self) -> None:
        self._session = None
