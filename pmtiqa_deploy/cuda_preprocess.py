"""GPU preprocessing from Python: decoded images in, the engine's input crops out, written
straight into a device buffer (the TensorRT backend's input) with no host round trip.

The kernel is pmtiqa_deploy/kernels/preprocess.cu (`pmtiqa_crops`, specified in
kernels/KERNEL.md and shared with the C++ build). NVRTC compiles it at run time for the
GPU at hand (a cubin where NVRTC knows the architecture, PTX for the driver to JIT
otherwise), or a module built elsewhere (nvcc's cubin) is loaded as given; the driver API
launches it. The host computes each image's resized size and crop corners with the
reference functions (`resized_size`, `crop_boxes`), so geometry is decided in one place;
the kernel only samples, resizes (bit for bit the reference's resize) and normalises.
A spec whose interpolation the kernel does not implement is refused (`kernel_resize_mode`),
never resized another way.

Per batch: every host image and the crop corners are packed into one pinned staging
buffer, uploaded with one copy, and one kernel launch per image writes that image's slot
of the output. Images already on the GPU (decoded there, `__cuda_array_interface__`) are
read in place. Everything is enqueued on the caller's stream (the engine's), so the
engine runs after the crops are written without any host synchronisation.
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
# The spec's interpolation -> the kernel's resize mode (PMTIQA_RESIZE_* in preprocess.cu).
RESIZE_MODES = {"bilinear": 0}
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
    np.int32,                                    # resize_mode
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


def kernel_resize_mode(spec: ModelSpec) -> int:
    """The kernel's resize mode for the spec's interpolation; SpecError for one the kernel
    does not implement (the CPU reference may: preprocess on the CPU then)."""
    interpolation = spec.preprocess.interpolation
    if interpolation not in RESIZE_MODES:
        raise SpecError(f"the GPU preprocessing kernel implements interpolation "
                        f"{sorted(RESIZE_MODES)}, not {interpolation!r} (this model's spec): "
                        "preprocess on the CPU (--preprocess cpu)")
    return RESIZE_MODES[interpolation]


def _check(result: Any, what: str) -> Any:
    err, *values = result
    if err != driver.CUresult.CUDA_SUCCESS:
        raise DeviceError(f"{what} failed ({err.name})")
    return values[0] if len(values) == 1 else None


def device_image(image: Any) -> tuple[int, tuple[int, ...], int] | None:
    """(address, shape, row pitch) of a uint8 image in GPU memory (an object with
    `__cuda_array_interface__`, such as an nvImageCodec image), or None for a host array."""
    interface = getattr(image, "__cuda_array_interface__", None)
    if interface is None or isinstance(image, np.ndarray):
        return None
    shape = tuple(int(n) for n in interface["shape"])
    if interface["typestr"] not in ("|u1", "<u1") or len(shape) not in (2, 3):
        raise InputError(f"GPU preprocessing takes HxW or HxWxC uint8 device images, got "
                         f"{interface['typestr']} with shape {shape}")
    channels = shape[2] if len(shape) == 3 else 1
    strides = interface.get("strides")
    pitch = shape[1] * channels if strides is None else int(strides[0])
    if strides is not None and (len(shape) == 3 and (strides[2] != 1 or strides[1] != channels)):
        raise InputError(f"GPU preprocessing takes interleaved device images (HWC); strides {strides}")
    return int(interface["data"][0]), shape, pitch


def _source_format(shape: tuple[int, ...], dtype: Any, order: str) -> int:
    """The kernel's source format for an image of this shape and dtype in `order`."""
    if np.dtype(dtype) != np.uint8:
        raise InputError(f"GPU preprocessing takes decoded uint8 images, got {np.dtype(dtype)}")
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return SRC_FORMATS["GRAY"]
    if len(shape) == 3 and shape[2] == 3:
        return SRC_FORMATS[order]
    if len(shape) == 3 and shape[2] == 4:
        return SRC_FORMATS[order + "A"]
    raise InputError(f"GPU preprocessing takes HxW, HxWx3 or HxWx4 images, got shape {shape}")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class GpuPreprocessor:
    """The reference preprocessing on the GPU for one spec. `fill(images, out, stream)`
    writes image i's crops at `out + i * slot_bytes`, in the spec's input dtype/layout.
    Free with `close` (or use as a context manager); not thread-safe."""

    def __init__(self, spec: ModelSpec, device: int = 0, colour_order: str = "RGB",
                 timing: bool = False, kernel_image: bytes | None = None):
        """kernel_image: a cubin or PTX of preprocess.cu built elsewhere (nvcc); default:
        NVRTC compiles the shipped source for this GPU."""
        if colour_order not in ("RGB", "BGR"):
            raise ValueError(f"colour_order must be 'RGB' or 'BGR', got {colour_order!r}")
        self.spec, self.colour_order = spec, colour_order
        self._resize_mode = kernel_resize_mode(spec)
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
        self._function = self._load(kernel_image)
        self._marks = [cuda.Event() for _ in range(3)] if timing else []

    def _load(self, image: bytes | None) -> Any:
        major, minor = self.gpu.compute_capability
        sm = major * 10 + minor
        archs = [] if image is not None else supported_architectures()
        if image is not None:
            if not image.startswith(b"\x7fELF"):
                image = image.rstrip(b"\0") + b"\0"  # PTX text must be NUL-terminated
        elif sm in archs:
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

    def fill(self, images: Sequence[Any], out: int, stream: Any) -> None:
        """Enqueue on `stream` the crops of each decoded image into `out + i * slot_bytes`.
        An image is a host uint8 array (HxWx3 in `colour_order`, HxWx4 with alpha, or HxW
        gray) or a uint8 image in GPU memory (`__cuda_array_interface__`, HWC), which is
        read in place and must stay alive until the stream has run."""
        pre = self.spec.preprocess
        plans, offset = [], 0
        for image in images:
            on_device = device_image(image)
            shape = on_device[1] if on_device else image.shape
            fmt = _source_format(shape, np.uint8 if on_device else image.dtype, self.colour_order)
            height, width = shape[:2]
            channels = shape[2] if len(shape) == 3 else 1
            dst_h, dst_w = resized_size(height, width, pre)
            boxes = np.asarray(crop_boxes(dst_h, dst_w, pre.crop_size, pre.crop_count), dtype=np.int32)
            image_at = None
            if on_device is None:
                image_at = offset
                offset = _aligned(offset + image.nbytes)
            boxes_at = offset
            offset = _aligned(offset + boxes.nbytes)
            source = on_device or (None, shape, width * channels)
            plans.append((image, source, fmt, dst_w, dst_h, boxes, image_at, boxes_at))
        if not plans:
            return
        staging, device = self._reserve(offset)
        packed = staging.view(np.uint8, (offset,))
        for image, _, _, _, _, boxes, image_at, boxes_at in plans:
            if image_at is not None:
                packed[image_at:image_at + image.nbytes] = np.ascontiguousarray(image).reshape(-1)
            packed[boxes_at:boxes_at + boxes.nbytes] = boxes.view(np.uint8)
        if self._marks:
            self._marks[0].record(stream)
        cuda.copy_to_device(device.ptr, staging.ptr, offset, stream)
        if self._marks:
            self._marks[1].record(stream)
        crop = pre.crop_size
        grid = ((crop + BLOCK[0] - 1) // BLOCK[0], (crop + BLOCK[1] - 1) // BLOCK[1], pre.crop_count)
        for slot, (_, source, fmt, dst_w, dst_h, boxes, image_at, boxes_at) in enumerate(plans):
            address, shape, pitch = source
            if image_at is not None:
                address = device.ptr + image_at
            values = (address, shape[1], shape[0], pitch, fmt, dst_w, dst_h,
                      device.ptr + boxes_at, pre.crop_count, crop, *self._norm,
                      out + slot * self.slot_bytes, self._out_kind, self._resize_mode)
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
