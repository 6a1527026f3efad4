"""Where a Scorer decodes and preprocesses (pmtiqa_deploy.stages): option checks, auto's
choice and its reason, and the errors when the GPU path is asked for on a machine or with
a backend that cannot run it. The GPU stage itself runs in benchmarks/gpu_check.py and
the GPU-marked tests; here the CUDA-absent paths are exercised for real."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scoring_inputs import AWKWARD, null_model_dir, write_awkward_folder

from pmtiqa_deploy.backends.null import NullBackend
from pmtiqa_deploy.cli import score_command
from pmtiqa_deploy.errors import BackendUnavailable
from pmtiqa_deploy.score import Scorer
from pmtiqa_deploy.spec import ModelSpec
from pmtiqa_deploy.stages import CpuStage, GpuStage, choose_stage


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory) -> Path:
    return null_model_dir(tmp_path_factory.mktemp("null-model-stages"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("stage-images")
    write_awkward_folder(folder)
    return [folder / name for name in sorted(AWKWARD)]


def _has_gpu() -> bool:
    from pmtiqa_deploy.export.tensorrt import gpu_compute_capability

    return gpu_compute_capability() is not None


def _choose(backend, preprocess, decode="cpu"):
    return choose_stage(backend, preprocess, decode, backend.infer, lambda n: n)


def test_auto_on_a_host_backend_is_the_cpu_and_says_why(null_dir, images):
    with Scorer(NullBackend(null_dir), batch_size=3) as auto, \
            Scorer(NullBackend(null_dir), batch_size=3, preprocess="cpu") as cpu:
        assert isinstance(auto.stage, CpuStage) and auto.stage.name == "cpu"
        assert auto.stage.reason.startswith("auto: the null backend takes host arrays")
        assert cpu.stage.reason == "asked for"
        assert list(auto.score_files(images)) == list(cpu.score_files(images))


def test_gpu_asked_of_a_host_backend_is_an_error_not_a_cpu_run(null_dir):
    backend = NullBackend(null_dir)
    with pytest.raises(BackendUnavailable, match="GPU preprocessing cannot run: the null backend "
                                                 "takes host arrays"):
        _choose(backend, "gpu")
    with pytest.raises(BackendUnavailable, match="GPU decoding cannot run"):
        _choose(backend, "auto", "gpu")


def test_contradictory_or_unknown_choices_are_rejected(null_dir):
    backend = NullBackend(null_dir)
    with pytest.raises(ValueError, match="GPU decoding feeds GPU preprocessing"):
        _choose(backend, "cpu", "gpu")
    with pytest.raises(ValueError, match="preprocess must be one of"):
        _choose(backend, "fpga")
    with pytest.raises(ValueError, match="decode must be one of"):
        _choose(backend, "auto", "nvdec")


def test_without_cuda_the_gpu_stage_says_there_is_no_device(null_dir):
    if _has_gpu():
        pytest.skip("this machine has a CUDA GPU")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (the cuda extra)")
    spec = ModelSpec.load(null_dir)
    for decode in ("cpu", "gpu"):  # the device is checked before any decoder is made
        with pytest.raises(BackendUnavailable, match="no usable CUDA device"):
            GpuStage(NullBackend.from_spec(spec), lambda n: n, decode)


def test_gpu_decoder_names_what_is_missing():
    from pmtiqa_deploy.gpu_decoder import GpuDecoder

    if _has_gpu():
        pytest.skip("this machine has a CUDA GPU")
    try:
        from nvidia import nvimgcodec  # noqa: F401
        missing = "no usable CUDA device"
    except ImportError:
        missing = r"nvImageCodec, which is not installed.*pmtiqa-deploy\[gpu-decode\]"
    with pytest.raises(BackendUnavailable, match=missing):
        GpuDecoder(0)


def _score(*args):
    return CliRunner().invoke(score_command, [*map(str, args), "--no-progress"])


def test_score_command_options(null_dir, images):
    good = [p for p in images if AWKWARD[p.name]][:2]
    done = _score(*good, "--model", null_dir, "--backend", "null", "--preprocess", "auto")
    assert done.exit_code == 0, done.output
    refused = _score(*good, "--model", null_dir, "--backend", "null", "--preprocess", "gpu")
    assert refused.exit_code == 2 and "takes host arrays" in refused.stderr
    contradiction = _score(*good, "--model", null_dir, "--backend", "null", "--preprocess", "cpu",
                           "--decode", "gpu")
    assert contradiction.exit_code == 2 and "GPU decoding feeds GPU preprocessing" in contradiction.stderr
    graphs = _score(*good, "--model", null_dir, "--backend", "null", "--cuda-graph")
    assert graphs.exit_code == 2 and "no CUDA graphs" in graphs.stderr
    bad = _score(*good, "--model", null_dir, "--backend", "null", "--preprocess", "tpu")
    assert bad.exit_code == 2 and "tpu" in bad.output


@pytest.mark.gpu
def test_gpu_crops_of_scored_files_equal_the_cpu_stage(null_dir, images):
    """The kernel's crops of the files the CPU stage scores equal the CPU stage's crops
    (end-to-end scores through torch on CUDA are in benchmarks/gpu_check.py)."""
    if not _has_gpu():
        pytest.skip("needs a CUDA GPU (cudaGetDeviceCount found none)")
    from pmtiqa_deploy import device as cuda
    from pmtiqa_deploy.cuda_preprocess import GpuPreprocessor
    from pmtiqa_deploy.preprocess import decode_image, preprocess

    spec = ModelSpec.load(null_dir)
    decoded = [decode_image(p) for p in images if AWKWARD[p.name]]
    with GpuPreprocessor(spec) as gpu:
        stream = cuda.create_stream()
        out = cuda.DeviceBuffer(gpu.slot_bytes * len(decoded))
        host = cuda.PinnedBuffer(gpu.slot_bytes * len(decoded))
        gpu.fill(decoded, out.ptr, stream)
        cuda.copy_to_host(host.ptr, out.ptr, gpu.slot_bytes * len(decoded), stream)
        cuda.synchronize(stream)
        got = host.view(np.dtype(spec.input.dtype), (len(decoded),) + spec.input_shape(1)[1:]).copy()
        out.free()
        host.free()
        cuda.destroy_stream(stream)
    want = np.stack([preprocess(image, spec.preprocess, spec.input) for image in decoded])
    np.testing.assert_array_equal(got, want)
