"""TensorRT backend: runs model.engine (a plain TensorRT plan) with the TensorRT runtime and
cuda-python.

Loader: `engine_from_plan` checks the plan against the spec and the GPU before TensorRT
sees it (TensorRT version, compute capability, file hash), deserialises it, and checks the
engine's inputs, outputs and batch profile against the spec. Runner: `TensorRTBackend`
owns one execution context, one non-blocking stream, device buffers sized for the spec's
largest batch and pinned host buffers for the copies. Addresses never change, so a CUDA
graph captured per batch size (cuda_graph=True) can replay the engine with one launch.

Two ways in: `infer(images)` takes host NumPy crops (copied through pinned memory);
`input_device_buffer(batch)` + `infer_device(batch)` let GPU preprocessing write the
crops straight into the engine's input buffer on `stream`, skipping the upload.
With timing=True the last batch's host-to-device, compute and device-to-host times (CUDA
events) are in `timings`.

The full `tensorrt` package is preferred; `tensorrt_lean` (the lean runtime) is used when
it is the one installed, and runs version-compatible plans only. Not thread-safe: use
one backend per thread.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from pmtiqa_deploy import device as cuda
from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.backends.contract import TensorInfo, check_io
from pmtiqa_deploy.errors import InputError, SpecError
from pmtiqa_deploy.spec import Artifact, ModelSpec


def _import_tensorrt() -> Any:
    """The full TensorRT bindings if installed, else the lean runtime's. An empty `tensorrt`
    namespace (what tensorrt-stubs leaves behind) does not count as installed."""
    for name in ("tensorrt", "tensorrt_lean"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Runtime"):
            return module
    raise ImportError("neither tensorrt nor tensorrt_lean is installed", name="tensorrt")


if TYPE_CHECKING:  # type-check against the TensorRT 10 stubs (tensorrt-stubs)
    import tensorrt as trt
else:
    trt = _import_tensorrt()


LEAN_RUNTIME = trt.__name__ == "tensorrt_lean"

_DTYPES = {
    trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.UINT8: "uint8",
    trt.DataType.INT8: "int8", trt.DataType.INT32: "int32", trt.DataType.INT64: "int64",
    trt.DataType.BOOL: "bool",
}


class _Logger(trt.ILogger):
    """Keeps TensorRT's warnings and errors so a failed load can say why."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.messages: list[str] = []

    def log(self, severity: Any, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR,
                        trt.ILogger.Severity.WARNING):
            self.messages.append(msg)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:4])


def parse_compute_capability(text: str) -> tuple[tuple[int, int], bool]:
    """"8.6" -> ((8, 6), False): exactly that GPU generation; "8.0+" -> ((8, 0), True):
    any GPU from 8.0 on (engines built hardware-compatible, AMPERE_PLUS)."""
    match = re.fullmatch(r"\s*(?:sm_?)?(\d+)\.?(\d)?\s*(\+?)\s*", text)
    if not match:
        raise SpecError(f"compute_capability {text!r} is not of the form '8.6' or '8.0+'")
    digits, minor, plus = match.groups()
    if minor is None:  # "86" or "sm_86"
        major_i, minor_i = int(digits[:-1] or 0), int(digits[-1])
    else:
        major_i, minor_i = int(digits), int(minor)
    return (major_i, minor_i), bool(plus)


# Version-compatible plans across majors: (plan's major, runtime's major) pairs that
# TensorRT's support matrix allows (11.4: "TensorRT 10 version-compatible engines can run
# with a TensorRT 11 runtime, and TensorRT 8 version-compatible engines can run with a
# TensorRT 10 runtime. No other combination across major versions is supported").
CROSS_MAJOR_PAIRS = frozenset({(10, 11), (8, 10)})
# Version compatibility exists from TensorRT 8.6 on, for plans and runtimes alike.
FIRST_VERSION_COMPATIBLE = (8, 6)


def version_compatible_plan_runs(built: tuple[int, ...], here: tuple[int, ...]) -> str | None:
    """None when a version-compatible plan built by TensorRT `built` runs on runtime `here`
    (the support matrix: same major and not older, or one of CROSS_MAJOR_PAIRS); else why not."""
    if built[:2] < FIRST_VERSION_COMPATIBLE or here[:2] < FIRST_VERSION_COMPATIBLE:
        return "version compatibility starts with TensorRT 8.6"
    if built[0] == here[0]:
        return None if here[:3] >= built[:3] else "newer than this runtime: upgrade TensorRT"
    if (built[0], here[0]) in CROSS_MAJOR_PAIRS:
        return None
    if built[0] > here[0]:
        return "newer than this runtime: upgrade TensorRT"
    return (f"TensorRT runs version-compatible plans across majors only as 10.x on 11.x and "
            f"8.x on 10.x, not {built[0]}.x on {here[0]}.x")


def check_plan_compatibility(artifact: Artifact, runtime_version: str, lean: bool,
                             gpu: cuda.DeviceInfo) -> None:
    """Raise SpecError, before deserialising, when the plan cannot run here."""
    rebuild = ("rebuild the engine on this machine with pmtiqa-export (or export it "
               "version-compatible and hardware-compatible to move it between machines)")
    if lean and artifact.version_compatible is False:
        raise SpecError(f"{artifact.file} is not version-compatible and tensorrt_lean runs only "
                        "version-compatible plans: install the full 'tensorrt' package or " + rebuild)
    if artifact.tensorrt_version:
        built, here = _version(artifact.tensorrt_version), _version(runtime_version)
        if artifact.version_compatible:
            why = version_compatible_plan_runs(built, here)
            if why is not None:
                raise SpecError(f"{artifact.file} was built by TensorRT {artifact.tensorrt_version} "
                                f"and this runtime is {runtime_version}: {why}; or {rebuild}")
        else:
            n = min(len(built), len(here))
            if built[:n] != here[:n]:
                raise SpecError(f"{artifact.file} was built by TensorRT {artifact.tensorrt_version} and "
                                f"this runtime is {runtime_version}; a plan that is not version-"
                                f"compatible runs only on the version that built it: {rebuild}")
    if artifact.compute_capability and artifact.compute_capability != "unknown":
        wanted, or_newer = parse_compute_capability(artifact.compute_capability)
        have = gpu.compute_capability
        if (have < wanted) if or_newer else (have != wanted):
            raise SpecError(f"{artifact.file} was built for compute capability "
                            f"{artifact.compute_capability}; this GPU ({gpu.name}) is {gpu.sm}: {rebuild}")


def engine_io(engine: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The engine's input and output tensors in the form `check_io` reads."""
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = engine.get_tensor_dtype(name)
        info = TensorInfo(name, _DTYPES.get(dtype, str(dtype)), tuple(engine.get_tensor_shape(name)))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(info)
        else:
            outputs.append(info)
    return inputs, outputs


def engine_from_plan(path: str | os.PathLike, spec: ModelSpec, artifact: Artifact,
                     gpu: cuda.DeviceInfo) -> tuple[Any, Any, _Logger]:
    """(runtime, engine, logger) for a hash-checked plan file; SpecError when the plan does
    not fit this machine or the spec. Keep all three alive as long as the engine."""
    check_plan_compatibility(artifact, trt.__version__, LEAN_RUNTIME, gpu)
    logger = _Logger()
    runtime = trt.Runtime(logger)
    if artifact.version_compatible:
        # A version-compatible plan carries the lean runtime as host code; the plan's hash
        # was just checked against model.json, so it is the file export wrote.
        runtime.engine_host_code_allowed = True
    with open(path, "rb") as handle:
        engine = runtime.deserialize_cuda_engine(handle.read())
    if engine is None:
        detail = "; ".join(logger.messages[-3:]) or "no message"
        raise SpecError(f"TensorRT {trt.__version__} could not load {path} on {gpu.name} (compute "
                        f"capability {gpu.sm}): {detail}. Rebuild the engine with pmtiqa-export")
    level = engine.hardware_compatibility_level
    if level == trt.HardwareCompatibilityLevel.AMPERE_PLUS and gpu.compute_capability < (8, 0):
        raise SpecError(f"{path} is built for Ampere or newer GPUs; {gpu.name} is {gpu.sm}")
    inputs, outputs = engine_io(engine)
    check_io(spec, inputs, outputs, str(path))
    if engine.num_optimization_profiles > 0 and -1 in tuple(engine.get_tensor_shape(inputs[0].name)):
        low, _, high = engine.get_tensor_profile_shape(inputs[0].name, 0)
        if low[0] > spec.input.batch_min or high[0] < spec.input.batch_max:
            raise SpecError(f"{path} accepts batches {low[0]}..{high[0]} but the spec promises "
                            f"{spec.input.batch_min}..{spec.input.batch_max}: rebuild the engine")
    return runtime, engine, logger


def _pick_artifact(spec: ModelSpec, precision: str | None) -> Artifact:
    if precision is not None:
        return spec.artifact("tensorrt", precision)
    engines = [a for a in spec.artifacts if a.format == "tensorrt"]
    for artifact in engines:
        if artifact.precision == "fp16":
            return artifact
    return spec.artifact("tensorrt", "fp32")  # the only one left, or a SpecError listing what exists


class TensorRTBackend(Backend):
    """Options: precision "fp16"/"fp32"/"int8" (default: the spec's fp16 engine, else fp32),
    device (GPU index), cuda_graph (replay a captured graph per batch size), timing
    (record h2d/compute/d2h times of each batch in `timings`)."""

    name = "tensorrt"

    def __init__(self, model_dir: str | os.PathLike, spec: ModelSpec | None = None, *,
                 precision: str | None = None, device: int = 0, cuda_graph: bool = False,
                 timing: bool = False):
        super().__init__(model_dir, spec)
        self.cuda_graph, self.timing = cuda_graph, timing
        self.timings: dict[str, float] | None = None
        self._graphs: dict[int, cuda.CudaGraph] = {}
        self._buffers: dict[str, tuple[cuda.DeviceBuffer, cuda.PinnedBuffer, np.dtype, tuple[int, ...]]] = {}
        self._events: list[cuda.Event] = []
        self._batch: int | None = None
        self._closed = True
        self.stream: Any = None
        self.gpu = cuda.cuda_device(device)
        artifact = _pick_artifact(self.spec, precision)
        self.precision = artifact.precision
        self.path = self.model_file("tensorrt", artifact.precision)
        self.runtime, self.engine, self._logger = engine_from_plan(self.path, self.spec, artifact, self.gpu)
        self._closed = False
        try:
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise SpecError(f"TensorRT could not create an execution context for {self.path} "
                                f"({'; '.join(self._logger.messages[-3:])}); is the GPU out of memory?")
            self.stream = cuda.create_stream()
            self._events = [cuda.Event() for _ in range(4)] if timing else []
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _allocate(self) -> None:
        """Device and pinned buffers for the largest batch, bound to the context once."""
        spec, batch = self.spec, self.spec.input.batch_max
        self._input_name = spec.input.name
        self._input_shape = spec.input_shape(batch)
        self._set_batch(batch)
        for name in [self._input_name] + [o.name for o in spec.outputs]:
            shape = tuple(self.context.get_tensor_shape(name))
            # Leading axis: B for the input, score and level_probs; B*N for debug outputs.
            if not shape or min(shape) < 0 or shape[0] % batch:
                raise SpecError(f"{self.path}: tensor {name!r} has shape {shape} at batch {batch}")
            dtype = np.dtype(_DTYPES[self.engine.get_tensor_dtype(name)])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            buffers = (cuda.DeviceBuffer(nbytes), cuda.PinnedBuffer(nbytes), dtype, shape)
            self._buffers[name] = buffers
            if not self.context.set_tensor_address(name, buffers[0].ptr):
                raise SpecError(f"{self.path}: TensorRT refused the address of tensor {name!r}")

    def _set_batch(self, batch: int) -> None:
        if batch != self._batch:
            shape = self.spec.input_shape(batch)
            if not self.context.set_input_shape(self._input_name, shape):
                raise InputError(f"{self.path}: the engine does not accept input shape {shape}")
            self._batch = batch

    def _check_batch(self, batch: int) -> None:
        low, high = self.spec.input.batch_min, self.spec.input.batch_max
        if not low <= batch <= high:
            raise InputError(f"{self.name}: batch {batch} is outside the model's range {low}..{high}")
        if self._closed:
            raise RuntimeError(f"{self.name} backend for {self.path} is closed")

    def _per_image(self, name: str, batch: int) -> tuple[int, tuple[int, ...]]:
        """(bytes, shape) of tensor `name` for a batch of `batch` images."""
        _, _, dtype, shape = self._buffers[name]
        rows = shape[0] // self.spec.input.batch_max * batch
        return rows * int(np.prod(shape[1:])) * dtype.itemsize, (rows,) + shape[1:]

    device_input = True

    @property
    def gpu_index(self) -> int:
        return self.gpu.index

    @property
    def input_slot_bytes(self) -> int:
        """Bytes of one image's crops in the input buffer: image i starts at
        `input_device_buffer(b) + i * input_slot_bytes`."""
        return self._per_image(self._input_name, 1)[0]

    def input_device_buffer(self, batch: int) -> int:
        """The device address of the engine's input for a batch of `batch` images, for a
        caller that fills it on `stream` (GPU preprocessing) and then calls infer_device."""
        self._check_batch(batch)
        return self._buffers[self._input_name][0].ptr

    def infer_device(self, batch: int) -> dict[str, np.ndarray]:
        """Run on the crops already in the input buffer (written on `stream`)."""
        self._check_batch(batch)
        return self._run(batch, upload=False)

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = images.shape[0]
        self._check_batch(batch)
        _, pinned, dtype, _ = self._buffers[self._input_name]
        np.copyto(pinned.view(dtype, self._per_image(self._input_name, batch)[1]), images)
        return self._run(batch, upload=True)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise SpecError(f"TensorRT failed to enqueue {self.path}: "
                            f"{'; '.join(self._logger.messages[-3:])}")

    def _graph(self, batch: int) -> cuda.CudaGraph:
        """The CUDA graph of the engine at this batch size, captured on first use. TensorRT
        wants one ordinary enqueue after a shape change before a capture."""
        if batch not in self._graphs:
            self._enqueue()
            cuda.synchronize(self.stream)
            self._graphs[batch] = cuda.CudaGraph.capture(self.stream, self._enqueue)
        return self._graphs[batch]

    def _run(self, batch: int, upload: bool) -> dict[str, np.ndarray]:
        self._set_batch(batch)
        events, stream = self._events, self.stream
        device_in, pinned_in, _, _ = self._buffers[self._input_name]
        if events:
            events[0].record(stream)
        if upload:
            cuda.copy_to_device(device_in.ptr, pinned_in.ptr, self._per_image(self._input_name, batch)[0],
                                stream)
        if events:
            events[1].record(stream)
        if self.cuda_graph:
            self._graph(batch).launch(stream)
        else:
            self._enqueue()
        if events:
            events[2].record(stream)
        outputs = [o.name for o in self.spec.outputs]
        for name in outputs:
            device_out, pinned_out, _, _ = self._buffers[name]
            cuda.copy_to_host(pinned_out.ptr, device_out.ptr, self._per_image(name, batch)[0], stream)
        if events:
            events[3].record(stream)
        cuda.synchronize(stream)
        if events:
            self.timings = {"h2d_ms": events[1].ms_since(events[0]),
                            "compute_ms": events[2].ms_since(events[1]),
                            "d2h_ms": events[3].ms_since(events[2])}
        result = {}
        for name in outputs:
            _, pinned_out, out_dtype, _ = self._buffers[name]
            result[name] = pinned_out.view(out_dtype, self._per_image(name, batch)[1]).astype(np.float32)
        return result

    def close(self) -> None:
        """Free graphs, buffers, events, the stream, then the context, engine and runtime."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            cuda.synchronize(self.stream)
        for graph in self._graphs.values():
            graph.destroy()
        self._graphs.clear()
        for device_buffer, pinned, _, _ in self._buffers.values():
            device_buffer.free()
            pinned.free()
        self._buffers.clear()
        for event in self._events:
            event.destroy()
        if self.stream is not None:
            cuda.destroy_stream(self.stream)
            self.stream = None
        self.context = self.engine = self.runtime = None
