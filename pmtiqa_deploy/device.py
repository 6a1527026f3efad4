"""The CUDA device from Python through cuda-python's runtime API: device discovery, streams,
events, pinned host and device buffers, and CUDA-graph capture. Shared by the TensorRT
backend and GPU preprocessing so both use one stream discipline and one error check.

cuda-python calls return (error, value...) tuples instead of raising; `call` turns a
failed one into a DeviceError that names the call and CUDA's own message. A machine
without a driver or GPU is a BackendUnavailable raised by `cuda_device`, before any
library (TensorRT included) touches CUDA.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np
from cuda.bindings import runtime as cudart

from pmtiqa_deploy.errors import BackendUnavailable, DeviceError


def _message(err: Any) -> str:
    name = cudart.cudaGetErrorName(err)[1]
    text = cudart.cudaGetErrorString(err)[1]
    decode = (lambda b: b.decode() if isinstance(b, bytes) else str(b))
    return f"{decode(name)}: {decode(text)}"


def call(result: Any, what: str) -> Any:
    """Unpack a cuda-python runtime result: raise DeviceError on failure, else return the
    value (None for calls that only return an error, a tuple for several values)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise DeviceError(f"{what} failed ({_message(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def cuda_device(index: int = 0) -> DeviceInfo:
    """Make device `index` current and describe it; BackendUnavailable when there is no
    usable driver or GPU (checked first: TensorRT crashes if it meets a missing driver)."""
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(
            f"no usable CUDA device ({_message(err)}); the GPU backends need an NVIDIA GPU and "
            "driver: use the onnxruntime backend on this machine")
    if not 0 <= index < count:
        raise BackendUnavailable(f"CUDA device {index} does not exist (this machine has {count})")
    call(cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
    call(cudart.cudaFree(0), "initialising the CUDA context")  # makes the primary context current
    major = call(cudart.cudaDeviceGetAttribute(
        cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, index), "reading the compute capability")
    minor = call(cudart.cudaDeviceGetAttribute(
        cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, index), "reading the compute capability")
    props = call(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(props.name, bytes) \
        else str(props.name)
    return DeviceInfo(index, name, (int(major), int(minor)))


def create_stream() -> Any:
    """A non-blocking stream (does not synchronise with the legacy default stream)."""
    return call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")


def destroy_stream(stream: Any) -> None:
    call(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")


def synchronize(stream: Any) -> None:
    call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


class DeviceBuffer:
    """`nbytes` of device memory; `ptr` is its address as an int."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(call(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            call(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedBuffer:
    """`nbytes` of page-locked host memory (fast, truly asynchronous copies), seen from
    NumPy through `view`. Views die with the buffer: copy results out before `free`."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(call(cudart.cudaHostAlloc(self.nbytes, cudart.cudaHostAllocDefault),
                            f"cudaHostAlloc({self.nbytes})"))
        memory = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)
        self._bytes: np.ndarray | None = np.frombuffer(memoryview(memory), dtype=np.uint8)

    def view(self, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        if self._bytes is None:
            raise DeviceError("pinned buffer used after it was freed")
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self._bytes[:count].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._bytes = None
            call(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_to_device(dst: int, src: int, nbytes: int, stream: Any) -> None:
    call(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
         "cudaMemcpyAsync host to device")


def copy_to_host(dst: int, src: int, nbytes: int, stream: Any) -> None:
    call(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
         "cudaMemcpyAsync device to host")


class Event:
    """A CUDA event for timing work on a stream."""

    def __init__(self) -> None:
        self.handle: Any = call(cudart.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Any) -> None:
        call(cudart.cudaEventRecord(self.handle, stream), "cudaEventRecord")

    def synchronize(self) -> None:
        call(cudart.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def ms_since(self, start: Event) -> float:
        """Milliseconds between `start` and this event (both recorded and completed)."""
        return float(call(cudart.cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def destroy(self) -> None:
        if self.handle is not None:
            call(cudart.cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None


class CudaGraph:
    """Work captured once from a stream and replayed with one launch.

    Usage: `graph = CudaGraph.capture(stream, enqueue)` runs `enqueue()` (which must only
    enqueue asynchronous work on `stream`) under capture; `graph.launch(stream)` replays it.
    The captured work reads and writes the same addresses on every replay.
    """

    def __init__(self, graph: Any, executable: Any):
        self._graph, self._exec = graph, executable

    @classmethod
    def capture(cls, stream: Any, enqueue: Any) -> CudaGraph:
        call(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
             "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            cudart.cudaStreamEndCapture(stream)  # leaves the stream usable; report enqueue's error
            raise
        graph = call(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            executable = call(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except DeviceError:
            cudart.cudaGraphDestroy(graph)
            raise
        return cls(graph, executable)

    def launch(self, stream: Any) -> None:
        call(cudart.cudaGraphLaunch(self._exec, stream), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self._exec is not None:
            call(cudart.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            call(cudart.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._exec = self._graph = None
