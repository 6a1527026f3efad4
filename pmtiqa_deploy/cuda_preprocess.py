"""GPU preprocessing from Python: decoded images in, the engine's input crops out, written
straight into a device buffer (the TensorRT backend's input) with no host round trip.

The kernel is pmtiqa_deploy/kernels/preprocess.cu (`pmtiqa_crops`, specified in
KERNEL.md and shared with the C++ build). NVRTC compiles it at run time for the GPU at
hand (a cubin where NVRTC knows the architecture, PTX for the driver to JIT otherwise);
the driver API loads and launches it. The host computes each image's resized size and
crop corners with the reference functions (`resized_size`, `crop_boxes`), so geometry is
decided in one place; the kernel only samples, interpolates and normalises.

Per batch: every image and its crop corners are packed into one pinned staging buffer,
uploaded with one copy, and one kernel launch per image writes that image's slot of the
output. Everything is enqueued on the caller's stream (the engine's), so the engine runs
after the crops are written without any host synchronisation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from cuda.bindings import driver, nvrtc

from pmtiqa_deploy import device as cuda
from pmtiqa_deploy.errors import BackendUnavailable, DeviceError, InputError, SpecError
from pmtiqa_deploy.preprocess import crop_boxes, resized_size
from pmtiqa_deploy.spec import ModelSpec

KERNEL_NAME = "pmtiqa_crops"
BLOCK = (16, 16, 1)
SRC_FORMATS = {"RGB": 0, "BGR": 1, "RGBA": 2, "BGRA": 3, "GRAY": 4}
OUT_KINDS = {"float32": 0, "float16": 1, "uint8": 2}
# The kernel's parameters in order (KERNEL.md), as the NumPy types they are packed in.
PARAM_TYPES = (
    np.uint64,                                   # src
    np.int32, np.int32, np.int32, np.int32,      # src_w, src_h, src_pitch, src_format
    np.int32, np.int32,                          # dst_w, dst_h
    np.uint64,                                   # boxes
    np.int32, np.int32,                          # n_crops, crop
    np.float32, np.float32, np.float32,          # m0..m2
    np.float32, np.float32, np.float32,          # s0..s2
    np.uint64,                                   # out
    np.int32,                                    # out_kind
)
_ALIGN = 256


def kernel_source() -> str:
    """The CUDA source shipped with the package."""
    return resources.files("pmtiqa_deploy").joinpath("kernels/preprocess.cu").read_text(encoding="utf-8")


def _include_dirs() -> list[str]:
    """Where NVRTC finds cuda_fp16.h (and the CCCL headers it may pull in): the CUDA
    headers that cuda-pathfinder locates (wheels or a toolkit), if any."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError:
        return []
    found = []
    for library in ("cudart", "cccl"):
        try:
            path = find_nvidia_header_directory(library)
        except Exception:  # pathfinder raises its own not-found types; a miss is fine here
            path = None
        if path:
            found.append(path)
    return found


def _nvrtc(result: Any, what: str, program: Any = None) -> Any:
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if program is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            buffer = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = buffer.decode(errors="replace").strip()
        raise DeviceError(f"NVRTC {what} failed ({err.name}){': ' + log if log else ''}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def supported_architectures() -> list[int]:
    """The SM versions this NVRTC can compile for, such as [75, 80, ..., 120]."""
    return list(_nvrtc(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def compile_kernel(source: str, sm: int, binary: bool) -> bytes:
    """Compile `source` for SM version `sm` (e.g. 90): a cubin if `binary`, else PTX."""
    arch = f"{'sm' if binary else 'compute'}_{sm}"
    program = _nvrtc(nvrtc.nvrtcCreateProgram(source.encode(), b"preprocess.cu", 0, [], []),
                     "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        options += [f"--include-path={path}".encode() for path in _include_dirs()]
        _nvrtc(nvrtc.nvrtcCompileProgram(program, len(options), options), f"compiling for {arch}", program)
        get_size, get = ((nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if binary
                         else (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX))
        size = _nvrtc(get_size(program), "reading the output size")
        code = b" " * size
        _nvrtc(get(program, code), "reading the output")
        return code
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def ptx_parameter_sizes(ptx: str, name: str = KERNEL_NAME) -> list[int]:
    """Byte sizes of an entry point's parameters as PTX declares them (to check that the
    arguments packed from PARAM_TYPES fit the compiled kernel)."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if match is None:
        raise DeviceError(f"the compiled kernel has no entry point {name!r}")
    sizes = {"8": 1, "16": 2, "32": 4, "64": 8}
    return [sizes[bits] for bits in re.findall(r"\.param\s+\.[busf](\d+)", match.group(1))]


def _check(result: Any, what: str) -> Any:
    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        raise DeviceError(f"{what} failed ({err.name})")
    return values[0] if len(values) == 1 else None


def _source_format(image: np.ndarray, order: str) -> int:
    if image.dtype != np.uint8:
        raise InputError(f"GPU preprocessing takes decoded uint8 images, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return SRC_FORMATS["GRAY"]
    if image.ndim == 3 and image.shape[2] == 3:
        return SRC_FORMATS[order]
    if image.ndim == 3 and image.shape[2] == 4:
        return SRC_FORMATS[order + "A"]
    raise InputError(f"GPU preprocessing takes HxW, HxWx3 or HxWx4 images, got shape {image.shape}")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class GpuPreprocessor:
    """The reference preprocessing on the GPU for one spec. `fill(images, out, stream)`
    writes image i's crops at `out + i * slot_bytes`, in the spec's input dtype/layout.
    Free with `close` (or use as a context manager); not thread-safe."""

    def __init__(self, spec: ModelSpec, device: int = 0, colour_order: str = "RGB",
                 timing: bool = False):
        if colour_order not in ("RGB", "BGR"):
            raise ValueError(f"colour_order must be 'RGB' or 'BGR', got {colour_order!r}")
        self.spec, self.colour_order = spec, colour_order
        self.gpu = cuda.cuda_device(device)
        pre = spec.preprocess
        itemsize = np.dtype(spec.input.dtype).itemsize
        self.slot_bytes = pre.crop_count * 3 * pre.crop_size * pre.crop_size * itemsize
        self._out_kind = OUT_KINDS[spec.input.dtype]
        mean = np.asarray(pre.mean, dtype=np.float32) * np.float32(255.0)
        scale = np.float32(1.0) / (np.asarray(pre.std, dtype=np.float32) * np.float32(255.0))
        self._norm = [float(v) for v in (*mean, *scale)]
        self._staging: cuda.PinnedBuffer | None = None
        self._device: cuda.DeviceBuffer | None = None
        self._done: cuda.Event | None = None
        self._module: Any = None
        self._function = self._load()
        self._marks = [cuda.Event() for _ in range(3)] if timing else []

    def _load(self) -> Any:
        major, minor = self.gpu.compute_capability
        sm = major * 10 + minor
        archs = supported_architectures()
        if sm in archs:
            image = compile_kernel(kernel_source(), sm, binary=True)
        else:  # a GPU newer than this NVRTC: PTX for the newest known arch, JIT by the driver
            older = [a for a in archs if a <= sm]
            if not older:
                raise BackendUnavailable(f"this NVRTC cannot compile for {self.gpu.name} (sm_{sm}); "
                                         "install a cuda-python/NVRTC that supports it")
            image = compile_kernel(kernel_source(), max(older), binary=False)
        _check(driver.cuInit(0), "cuInit")
        code = np.frombuffer(image, dtype=np.uint8)  # PTX comes NUL-terminated from NVRTC
        self._module = _check(driver.cuModuleLoadData(code.ctypes.data), "cuModuleLoadData")
        return _check(driver.cuModuleGetFunction(self._module, KERNEL_NAME.encode()), "cuModuleGetFunction")

    def _reserve(self, nbytes: int) -> tuple[cuda.PinnedBuffer, cuda.DeviceBuffer]:
        """Staging and device buffers of at least `nbytes`, once the last batch is done."""
        if self._done is not None:
            self._done.synchronize()  # the last batch's upload and kernels have finished
        if self._staging is None or self._staging.nbytes < nbytes:
            for old in (self._staging, self._device):
                if old is not None:
                    old.free()
            size = _aligned(max(nbytes, 1 << 20) * 5 // 4)
            self._staging, self._device = cuda.PinnedBuffer(size), cuda.DeviceBuffer(size)
        assert self._device is not None
        return self._staging, self._device

    def fill(self, images: Sequence[np.ndarray], out: int, stream: Any) -> None:
        """Enqueue on `stream` the crops of each decoded image (HxWx3 in `colour_order`,
        HxWx4 with alpha, or HxW gray; uint8) into `out + i * slot_bytes`."""
        pre = self.spec.preprocess
        plans, offset = [], 0
        for image in images:
            fmt = _source_format(image, self.colour_order)
            height, width = image.shape[:2]
            dst_h, dst_w = resized_size(height, width, pre)
            boxes = np.asarray(crop_boxes(dst_h, dst_w, pre.crop_size, pre.crop_count), dtype=np.int32)
            image_at = offset
            offset = _aligned(offset + image.nbytes)
            boxes_at = offset
            offset = _aligned(offset + boxes.nbytes)
            plans.append((image, fmt, dst_w, dst_h, boxes, image_at, boxes_at))
        if not plans:
            return
        staging, device = self._reserve(offset)
        for image, _, _, _, boxes, image_at, boxes_at in plans:
            staging.view(np.uint8, (offset,))[image_at:image_at + image.nbytes] = \
                np.ascontiguousarray(image).reshape(-1)
            staging.view(np.uint8, (offset,))[boxes_at:boxes_at + boxes.nbytes] = boxes.view(np.uint8)
        if self._marks:
            self._marks[0].record(stream)
        cuda.copy_to_device(device.ptr, staging.ptr, offset, stream)
        if self._marks:
            self._marks[1].record(stream)
        crop = pre.crop_size
        grid = ((crop + BLOCK[0] - 1) // BLOCK[0], (crop + BLOCK[1] - 1) // BLOCK[1], pre.crop_count)
        for slot, (image, fmt, dst_w, dst_h, boxes, image_at, boxes_at) in enumerate(plans):
            height, width = image.shape[:2]
            channels = 1 if image.ndim == 2 else image.shape[2]
            values = (device.ptr + image_at, width, height, width * channels, fmt, dst_w, dst_h,
                      device.ptr + boxes_at, pre.crop_count, crop, *self._norm,
                      out + slot * self.slot_bytes, self._out_kind)
            self._launch(values, grid, stream)
        if self._marks:
            self._marks[2].record(stream)
        if self._done is None:
            self._done = cuda.Event()
        self._done.record(stream)

    @property
    def timings(self) -> dict[str, float]:
        """The last batch's upload and kernel times in ms (waits for it); needs timing=True."""
        if not self._marks:
            raise ValueError("construct the GpuPreprocessor with timing=True to record timings")
        self._marks[2].synchronize()
        return {"upload_ms": self._marks[1].ms_since(self._marks[0]),
                "preprocess_ms": self._marks[2].ms_since(self._marks[1])}

    def infer(self, images: Sequence[np.ndarray], backend: Any) -> dict[str, np.ndarray]:
        """Preprocess `images` into a TensorRT backend's input buffer on its stream and run
        it: decoded images in, scores out, with no host copy of the crops."""
        if backend.input_slot_bytes != self.slot_bytes:
            raise SpecError(f"the backend's input holds {backend.input_slot_bytes} bytes per image, "
                            f"this preprocessor writes {self.slot_bytes}: build both from one spec")
        pointer = backend.input_device_buffer(len(images))
        self.fill(images, pointer, backend.stream)
        return backend.infer_device(len(images))

    def _launch(self, values: tuple, grid: tuple[int, int, int], stream: Any) -> None:
        # cuLaunchKernel takes an array of pointers, one to each argument's bytes.
        args = [np.array([v], dtype=t) for v, t in zip(values, PARAM_TYPES, strict=True)]
        pointers = np.array([a.ctypes.data for a in args], dtype=np.uint64)
        _check(driver.cuLaunchKernel(self._function, *grid, *BLOCK, 0, stream, pointers.ctypes.data, 0),
               "cuLaunchKernel(pmtiqa_crops)")

    def close(self) -> None:
        if self._done is not None:
            self._done.synchronize()
            self._done.destroy()
            self._done = None
        for mark in self._marks:
            mark.destroy()
        self._marks = []
        for buffer in (self._staging, self._device):
            if buffer is not None:
                buffer.free()
        self._staging = self._device = None
        if self._module is not None:
            driver.cuModuleUnload(self._module)
            self._module = None

    def __enter__(self) -> GpuPreprocessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
