"""GPU preprocessing: the shared kernel compiles with NVRTC (no GPU needed) and its
parameters match what Python packs; on a GPU, its crops match the CPU reference and the
device helpers (buffers, events, graphs) work. GPU tests skip here with the reason."""

import numpy as np
import pytest

cuda_preprocess = pytest.importorskip("pmtiqa_deploy.cuda_preprocess",
                                      reason="cuda-python is not installed")

from pmtiqa_deploy.errors import BackendUnavailable, DecodeError, InputError, SpecError  # noqa: E402
from pmtiqa_deploy.preprocess import preprocess  # noqa: E402
from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec, ScoreSpec  # noqa: E402


def _source():
    return cuda_preprocess.kernel_source()


def _nvrtc_archs():
    """NVRTC's architectures; a skip only when the NVRTC library itself is missing (what
    cuda-bindings' loader, cuda.pathfinder, raises then). Any other error fails the test."""
    from cuda.pathfinder import DynamicLibNotFoundError

    try:
        return cuda_preprocess.supported_architectures()
    except DynamicLibNotFoundError as exc:
        pytest.skip(f"the NVRTC library (libnvrtc) is not installed: {exc}")


def _gpu():
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip(f"needs a CUDA GPU (cudaGetDeviceCount: {err.name})")


def test_kernel_compiles_to_ptx_without_a_gpu():
    source = _source()
    archs = _nvrtc_archs()
    for sm in (min(archs), 90 if 90 in archs else max(archs)):
        ptx = cuda_preprocess.compile_kernel(source, sm, binary=False).decode(errors="replace")
        assert f".target sm_{sm}" in ptx
        sizes = cuda_preprocess.ptx_parameter_sizes(ptx)
        packed = [np.dtype(t).itemsize for t in cuda_preprocess.PARAM_TYPES]
        assert sizes == packed, "the kernel's parameters differ from KERNEL.md's signature"


def test_kernel_compiles_to_a_cubin_without_a_gpu():
    source = _source()
    archs = _nvrtc_archs()
    cubin = cuda_preprocess.compile_kernel(source, 90 if 90 in archs else max(archs), binary=True)
    assert cubin[:4] == b"\x7fELF"


def test_compile_errors_carry_the_nvrtc_log():
    _nvrtc_archs()
    with pytest.raises(Exception, match="undefined|identifier"):
        cuda_preprocess.compile_kernel('extern "C" __global__ void k() { nope(); }', 75, binary=False)


def test_source_formats_and_bad_images():
    fmt = cuda_preprocess._source_format
    assert fmt((4, 4, 3), np.uint8, "RGB") == 0
    assert fmt((4, 4, 3), np.uint8, "BGR") == 1
    assert fmt((4, 4, 4), np.uint8, "RGB") == 2
    assert fmt((4, 4, 4), np.uint8, "BGR") == 3
    assert fmt((4, 4), np.uint8, "RGB") == 4
    assert fmt((4, 4, 1), np.uint8, "BGR") == 4
    with pytest.raises(InputError, match="uint8"):
        fmt((4, 4, 3), np.uint16, "RGB")
    with pytest.raises(InputError, match="HxWx4"):
        fmt((4, 4, 2), np.uint8, "RGB")


class _DeviceImage:
    """The CUDA array interface as nvImageCodec and CuPy images publish it."""

    def __init__(self, shape, strides=None, typestr="|u1"):
        self.__cuda_array_interface__ = {"data": (0xDEAD0000, False), "shape": shape,
                                         "strides": strides, "typestr": typestr, "version": 3}


def test_device_images_are_read_in_place_with_their_pitch():
    assert cuda_preprocess.device_image(np.zeros((4, 4, 3), np.uint8)) is None
    assert cuda_preprocess.device_image(_DeviceImage((30, 40, 3))) == (0xDEAD0000, (30, 40, 3), 120)
    assert cuda_preprocess.device_image(_DeviceImage((30, 40, 3), (128, 3, 1)))[2] == 128
    assert cuda_preprocess.device_image(_DeviceImage((30, 40)))[2] == 40
    with pytest.raises(InputError, match="uint8"):
        cuda_preprocess.device_image(_DeviceImage((30, 40, 3), typestr="<f4"))
    with pytest.raises(InputError, match="interleaved"):
        cuda_preprocess.device_image(_DeviceImage((30, 40, 3), (40, 1, 1200)))


def test_an_interpolation_the_kernel_lacks_is_refused_not_substituted():
    spec = _spec()
    assert cuda_preprocess.kernel_resize_mode(spec) == cuda_preprocess.RESIZE_MODES["bilinear"]
    # A mode the spec may name that the kernel does not implement (the antialiased resize
    # planned for the model side): set past validation, as a newer spec would carry it.
    object.__setattr__(spec.preprocess, "interpolation", "bilinear_antialias")
    with pytest.raises(SpecError, match="implements interpolation.*--preprocess cpu"):
        cuda_preprocess.kernel_resize_mode(spec)
    with pytest.raises(SpecError, match="bilinear_antialias"):
        cuda_preprocess.GpuPreprocessor(spec)


def _spec(input_spec=InputSpec(), **pre):
    return ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10),
                     preprocess=PreprocessSpec(**{"crop_count": 4, **pre}), input=input_spec)


def test_preprocessor_without_a_gpu_is_unavailable():
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    if err == runtime.cudaError_t.cudaSuccess and count > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable, match="no usable CUDA device"):
        cuda_preprocess.GpuPreprocessor(_spec())


# --- GPU only -------------------------------------------------------------------------

@pytest.mark.gpu
def test_device_buffers_events_and_graphs():
    _gpu()
    from pmtiqa_deploy import device as cuda

    cuda.cuda_device(0)
    stream = cuda.create_stream()
    host_in, host_out = cuda.PinnedBuffer(1 << 20), cuda.PinnedBuffer(1 << 20)
    dev = cuda.DeviceBuffer(1 << 20)
    data = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8)
    host_in.view(np.uint8, (1 << 20,))[:] = data
    start, end = cuda.Event(), cuda.Event()
    start.record(stream)
    cuda.copy_to_device(dev.ptr, host_in.ptr, 1 << 20, stream)
    cuda.copy_to_host(host_out.ptr, dev.ptr, 1 << 20, stream)
    end.record(stream)
    cuda.synchronize(stream)
    np.testing.assert_array_equal(host_out.view(np.uint8, (1 << 20,)), data)
    assert end.ms_since(start) >= 0.0
    graph = cuda.CudaGraph.capture(stream, lambda: cuda.copy_to_device(dev.ptr, host_in.ptr, 1024, stream))
    host_in.view(np.uint8, (1 << 20,))[:1024] = 7
    graph.launch(stream)
    cuda.copy_to_host(host_out.ptr, dev.ptr, 1024, stream)
    cuda.synchronize(stream)
    assert (host_out.view(np.uint8, (1024,)) == 7).all()
    graph.destroy()
    for thing in (start, end):
        thing.destroy()
    for buffer in (host_in, host_out, dev):
        buffer.free()
    cuda.destroy_stream(stream)


def _images():
    rng = np.random.default_rng(4)
    smooth = rng.integers(0, 256, (40, 60, 3)).astype(np.float32)
    import cv2
    photo = cv2.resize(smooth, (333, 250), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return {
        "rgb": photo,
        "exact": rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),   # no resize under "none"
        "small": rng.integers(0, 256, (100, 150, 3), dtype=np.uint8),   # scaled up to the crop
        "portrait": rng.integers(0, 256, (400, 230, 3), dtype=np.uint8),
        "gray": rng.integers(0, 256, (260, 300), dtype=np.uint8),
        "rgba": rng.integers(0, 256, (230, 240, 4), dtype=np.uint8),
        "double": rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8),  # exactly 2x to 512x384
    }


def _reference(image, spec):
    rgb = image
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        rgb = image[..., :3]
    return preprocess(np.ascontiguousarray(rgb), spec.preprocess, spec.input)


@pytest.mark.gpu
@pytest.mark.parametrize("input_spec", [
    InputSpec(), InputSpec(dtype="float16"),
    InputSpec(dtype="uint8", layout="BNHWC", normalize_in_graph=True)])
@pytest.mark.parametrize("resize", [{}, {"resize": "fixed", "width": 512, "height": 384},
                                    {"resize": "shorter_side", "shorter_side": 256}])
def test_gpu_crops_match_the_cpu_reference(input_spec, resize):
    _gpu()
    from pmtiqa_deploy import device as cuda

    spec = _spec(input_spec, **resize)
    images = _images()
    names = list(images)
    with cuda_preprocess.GpuPreprocessor(spec) as gpu:
        stream = cuda.create_stream()
        out = cuda.DeviceBuffer(gpu.slot_bytes * len(names))
        host = cuda.PinnedBuffer(gpu.slot_bytes * len(names))
        gpu.fill([images[n] for n in names], out.ptr, stream)
        cuda.copy_to_host(host.ptr, out.ptr, gpu.slot_bytes * len(names), stream)
        cuda.synchronize(stream)
        shape = (len(names),) + spec.input_shape(1)[1:]
        got = host.view(np.dtype(input_spec.dtype), shape).copy()
        out.free()
        host.free()
        cuda.destroy_stream(stream)
    for i, name in enumerate(names):  # KERNEL.md: bit for bit, resized or not
        want = _reference(images[name], spec)
        np.testing.assert_array_equal(got[i], want, err_msg=name)


class _Uploaded:
    """A host image copied into a DeviceBuffer, published as a CUDA array (what an
    nvImageCodec image looks like to the kernel)."""

    def __init__(self, image, cuda):
        self.buffer = cuda.DeviceBuffer(image.nbytes)
        from cuda.bindings import runtime

        cuda.call(runtime.cudaMemcpy(self.buffer.ptr, image.ctypes.data, image.nbytes,
                                     runtime.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")
        self.__cuda_array_interface__ = {"data": (self.buffer.ptr, False), "shape": image.shape,
                                         "strides": None, "typestr": "|u1", "version": 3}


@pytest.mark.gpu
def test_gpu_crops_of_device_images_match_the_cpu_reference():
    _gpu()
    from pmtiqa_deploy import device as cuda

    spec = _spec(**{"resize": "shorter_side", "shorter_side": 256})
    images = _images()
    with cuda_preprocess.GpuPreprocessor(spec) as gpu:
        uploaded = [_Uploaded(images["rgb"], cuda), _Uploaded(images["gray"], cuda)]
        stream = cuda.create_stream()
        out = cuda.DeviceBuffer(gpu.slot_bytes * 3)
        host = cuda.PinnedBuffer(gpu.slot_bytes * 3)
        gpu.fill([uploaded[0], images["portrait"], uploaded[1]], out.ptr, stream)
        cuda.copy_to_host(host.ptr, out.ptr, gpu.slot_bytes * 3, stream)
        cuda.synchronize(stream)
        got = host.view(np.float32, (3,) + spec.input_shape(1)[1:]).copy()
        for thing in [out, host] + [u.buffer for u in uploaded]:
            thing.free()
        cuda.destroy_stream(stream)
    for i, name in enumerate(["rgb", "portrait", "gray"]):
        np.testing.assert_array_equal(got[i], _reference(images[name], spec), err_msg=name)


@pytest.mark.gpu
def test_gpu_preprocessing_rejects_what_the_reference_rejects():
    _gpu()
    from pmtiqa_deploy import device as cuda

    with cuda_preprocess.GpuPreprocessor(_spec()) as gpu:
        stream = cuda.create_stream()
        with pytest.raises(DecodeError, match="at least 32 pixels"):
            gpu.fill([np.zeros((20, 300, 3), np.uint8)], 0, stream)
        cuda.destroy_stream(stream)
