"""Backends: the name table, the null backend, ONNX Runtime on a small graph this test
builds (and on a real exported model where export is available), the PyTorch reference,
and the TensorRT backend's checks and API names (its GPU paths skip here)."""

import ast
import inspect
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from pmtiqa_deploy.backends import BACKENDS, backend_class
from pmtiqa_deploy.backends.contract import TensorInfo, check_io
from pmtiqa_deploy.backends.null import NullBackend
from pmtiqa_deploy.errors import BackendUnavailable, InputError, SpecError
from pmtiqa_deploy.preprocess import normalize, preprocess
from pmtiqa_deploy.spec import Artifact, InputSpec, ModelSpec, PreprocessSpec, ScoreSpec, sha256_file

SMALL = PreprocessSpec(crop_size=32, crop_count=2, min_side=32)
UINT8_INPUT = InputSpec(dtype="uint8", layout="BNHWC", normalize_in_graph=True,
                        batch_min=1, batch_opt=2, batch_max=4)


def _spec(input_spec=InputSpec(batch_min=1, batch_opt=2, batch_max=4), artifacts=(), **score):
    return ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10, **score), preprocess=SMALL,
                     input=input_spec, artifacts=tuple(artifacts), backbone="resnet18")


def _crops(batch, spec, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (batch, spec.preprocess.crop_count, 32, 32, 3), dtype=np.uint8)
    if spec.input.dtype == "uint8":
        return raw
    return np.stack([normalize(r, spec.preprocess, spec.input.dtype) for r in raw])


# --- the table ------------------------------------------------------------------------

def test_table_names_module_class_and_extra():
    assert set(BACKENDS) == {"onnxruntime", "tensorrt", "torch", "null"}
    assert backend_class("null") is NullBackend
    assert backend_class("onnxruntime").__name__ == "OnnxRuntimeBackend"
    with pytest.raises(BackendUnavailable, match="choose one of"):
        backend_class("openvino")


def test_tensorrt_module_imports_here_with_the_lean_runtime():
    module = pytest.importorskip("pmtiqa_deploy.backends.tensorrt",
                                 reason="neither tensorrt nor tensorrt_lean is installed")
    assert backend_class("tensorrt") is module.TensorRTBackend
    assert module.trt.__name__ in ("tensorrt", "tensorrt_lean")


# --- null -----------------------------------------------------------------------------

@pytest.mark.parametrize("input_spec", [InputSpec(batch_opt=2, batch_max=4),
                                        InputSpec(dtype="float16", batch_opt=2, batch_max=4),
                                        UINT8_INPUT])
def test_null_backend_maps_brightness_to_the_score_range(input_spec):
    spec = _spec(input_spec)
    backend = NullBackend.from_spec(spec)
    black = np.zeros((1, 2, 32, 32, 3), np.uint8)
    white = np.full((1, 2, 32, 32, 3), 255, np.uint8)
    grey = np.full((1, 2, 32, 32, 3), 64, np.uint8)  # 25.1 % brightness

    def as_input(raw):
        if input_spec.dtype == "uint8":
            return raw
        return np.stack([normalize(r, SMALL, input_spec.dtype) for r in raw])

    out = backend.infer(as_input(np.concatenate([black, grey, white])))
    np.testing.assert_allclose(out["score"], [0.0, 6400 / 255, 100.0], atol=0.1)
    assert out["score"].dtype == np.float32 and out["level_probs"].shape == (3, 10)
    np.testing.assert_allclose(out["level_probs"].sum(axis=1), 1.0, atol=1e-5)
    assert out["level_probs"].argmax(axis=1).tolist() == [0, 2, 9]


def test_null_backend_is_deterministic_and_follows_direction():
    spec = _spec()
    crops = _crops(3, spec)
    first = NullBackend.from_spec(spec).infer(crops)
    again = NullBackend.from_spec(spec).infer(crops.copy())
    np.testing.assert_array_equal(first["score"], again["score"])
    lower = NullBackend.from_spec(_spec(higher_is_better=False)).infer(crops)
    np.testing.assert_allclose(lower["score"], 100.0 - first["score"], atol=1e-3)


def test_null_backend_loads_its_spec_from_a_model_directory(tmp_path):
    _spec().save(tmp_path)
    with NullBackend(tmp_path) as backend:
        assert backend.spec == _spec()
        backend.infer(_crops(1, backend.spec))
        assert backend.batches == 1
    with pytest.raises(SpecError, match="no spec"):
        NullBackend(tmp_path / "elsewhere")
    with pytest.raises(SpecError, match="model directory"):
        NullBackend()


def test_inputs_are_checked_against_the_spec():
    backend = NullBackend.from_spec(_spec())
    good = _crops(2, backend.spec)
    with pytest.raises(InputError, match="shape"):
        backend.infer(good[:, :1])
    with pytest.raises(InputError, match="shape"):
        backend.infer(good.transpose(0, 1, 3, 4, 2))
    with pytest.raises(InputError, match="dtype"):
        backend.infer(good.astype(np.float64))
    with pytest.raises(InputError, match="outside the model's range"):
        backend.infer(np.concatenate([good, good, good]))
    with pytest.raises(InputError, match="NumPy"):
        backend.infer(good.tolist())


# --- the I/O contract -----------------------------------------------------------------

def test_contract_names_what_differs():
    spec = _spec()
    good_in = [TensorInfo("images", "float32", ("B", 2, 3, 32, 32))]
    good_out = [TensorInfo("score", "float32", ("B",)), TensorInfo("level_probs", "float32", ("B", 10))]
    check_io(spec, good_in, good_out, "m.onnx")
    cases = [
        ([TensorInfo("input", "float32", ("B", 2, 3, 32, 32))], good_out, "takes input 'input'"),
        ([TensorInfo("images", "float16", ("B", 2, 3, 32, 32))], good_out, "float16 but the spec"),
        ([TensorInfo("images", "float32", (-1, 9, 3, 32, 32))], good_out, "size 9 on axis 1"),
        ([TensorInfo("images", "float32", (-1, 2, 32, 32, 3))], good_out, "size 32 on axis 2"),
        ([TensorInfo("images", "float32", (1, 2, 3, 32, 32))], good_out, "fixed batch of 1"),
        (good_in, good_out[:1], "missing \\['level_probs'\\]"),
        (good_in, [good_out[0], TensorInfo("level_probs", "float32", ("B", 5))], "size 5 on axis 1"),
        (good_in, [good_out[0], TensorInfo("level_probs", "float16", ("B", 10))], "float16"),
        (good_in, good_out + [TensorInfo("ms1", "float32", ("BN", 28))], "not in the spec \\['ms1'\\]"),
    ]
    for inputs, outputs, message in cases:
        with pytest.raises(SpecError, match=message):
            check_io(spec, inputs, outputs, "m.onnx")


# --- ONNX Runtime on a graph built here -----------------------------------------------

def _tiny_onnx(path, spec, fp16=False, input_name="images", output_type=None):
    """A graph honouring the spec's contract: per-crop mean of the input drives a score
    (affine) and level logits (outer product); both averaged over crops like PMT-IQA's."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    levels = spec.score.num_levels
    weights = np.linspace(-3, 3, levels, dtype=np.float32).reshape(1, levels)
    compute = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    np_compute = np.float16 if fp16 else np.float32
    inits = [numpy_helper.from_array(np.array([2, 3, 4], np.int64), "spatial"),
             numpy_helper.from_array(np.array([1], np.int64), "crop_axis"),
             numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
             numpy_helper.from_array(np.array(12.5, np_compute), "gain"),
             numpy_helper.from_array(np.array(50.0, np_compute), "offset"),
             numpy_helper.from_array(weights.astype(np_compute), "weights")]
    nodes = [helper.make_node("Cast", [input_name], ["x"], to=compute),
             helper.make_node("ReduceMean", ["x", "spatial"], ["crop_mean"], keepdims=0),
             helper.make_node("Mul", ["crop_mean", "gain"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["crop_score"]),
             helper.make_node("ReduceMean", ["crop_score", "crop_axis"], ["score_c"], keepdims=0),
             helper.make_node("Unsqueeze", ["crop_mean", "last_axis"], ["column"]),
             helper.make_node("MatMul", ["column", "weights"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("ReduceMean", ["probs", "crop_axis"], ["probs_c"], keepdims=0),
             helper.make_node("Cast", ["score_c"], ["score"], to=output_type or TensorProto.FLOAT),
             helper.make_node("Cast", ["probs_c"], ["level_probs"], to=output_type or TensorProto.FLOAT)]
    in_shape = ["B", *spec.input_shape(1)[1:]]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("score", output_type or TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("level_probs", output_type or TensorProto.FLOAT, ["B", levels])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weights


def _tiny_expected(crops, weights):
    crop_mean = crops.astype(np.float64).mean(axis=(2, 3, 4))
    logits = crop_mean[..., None] * weights[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (crop_mean * 12.5 + 50.0).mean(axis=1), probs.mean(axis=1)


def _model_dir(tmp_path, **tiny):
    pytest.importorskip("onnxruntime")
    spec = _spec()
    weights = _tiny_onnx(tmp_path / "model.onnx", spec, **tiny)
    _tiny_onnx(tmp_path / "model.fp16.onnx", spec, fp16=True)
    artifacts = [Artifact("model.onnx", "onnx", "fp32", sha256_file(tmp_path / "model.onnx"), opset=18),
                 Artifact("model.fp16.onnx", "onnx", "fp16", sha256_file(tmp_path / "model.fp16.onnx"),
                          opset=18)]
    spec = _spec(artifacts=artifacts)
    spec.save(tmp_path)
    return spec, weights


def test_onnxruntime_runs_the_graph_in_fp32_and_fp16(tmp_path):
    spec, weights = _model_dir(tmp_path)
    crops = _crops(3, spec, seed=1)
    expected_score, expected_probs = _tiny_expected(crops, weights)
    with backend_class("onnxruntime")(tmp_path, threads=1) as backend:
        out = backend.infer(crops)
        assert out["score"].dtype == np.float32 and out["level_probs"].dtype == np.float32
        np.testing.assert_allclose(out["score"], expected_score, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(out["level_probs"], expected_probs, atol=1e-5)
        with pytest.raises(InputError, match="outside"):
            backend.infer(np.concatenate([crops, crops]))
    with backend_class("onnxruntime")(tmp_path, precision="fp16") as half:
        assert half.path.name == "model.fp16.onnx"
        out16 = half.infer(crops)
        np.testing.assert_allclose(out16["score"], expected_score, atol=0.1)
        np.testing.assert_allclose(out16["level_probs"], expected_probs, atol=2e-3)


def test_onnxruntime_refuses_a_replaced_file(tmp_path):
    spec, _ = _model_dir(tmp_path)
    _tiny_onnx(tmp_path / "model.onnx", spec, input_name="images")  # same content: still fine
    backend_class("onnxruntime")(tmp_path).close()
    with open(tmp_path / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(SpecError, match="does not match its spec"):
        backend_class("onnxruntime")(tmp_path)


def test_onnxruntime_checks_the_graph_against_the_spec(tmp_path):
    onnx = pytest.importorskip("onnx")
    spec, _ = _model_dir(tmp_path, input_name="pixels")
    with pytest.raises(SpecError, match="takes input 'pixels'"):
        backend_class("onnxruntime")(tmp_path)
    _model_dir(tmp_path, output_type=onnx.TensorProto.DOUBLE)
    with pytest.raises(SpecError, match="output 'score' is float64"):
        backend_class("onnxruntime")(tmp_path)


def test_onnxruntime_options_are_validated(tmp_path):
    _model_dir(tmp_path)
    with pytest.raises(ValueError, match="precision"):
        backend_class("onnxruntime")(tmp_path, precision="bf16")
    with pytest.raises(SpecError, match="no onnx int8 artifact.*pmtiqa-export"):
        backend_class("onnxruntime")(tmp_path, precision="int8")  # exported without --int8
    with pytest.raises(ValueError, match="threads"):
        backend_class("onnxruntime")(tmp_path, threads=0)
    import onnxruntime
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            backend_class("onnxruntime")(tmp_path, device="cuda")
    spec = ModelSpec.load(tmp_path)
    only_fp32 = ModelSpec.from_dict({**spec.to_dict(), "artifacts": [spec.to_dict()["artifacts"][0]]})
    with pytest.raises(SpecError, match="no onnx fp16 artifact"):
        backend_class("onnxruntime")(tmp_path, only_fp32, precision="fp16")


# --- TensorRT: what can be checked without a GPU --------------------------------------

def _tensorrt():
    return pytest.importorskip("pmtiqa_deploy.backends.tensorrt",
                               reason="neither tensorrt nor tensorrt_lean is installed")


def _has_gpu():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    err, count = runtime.cudaGetDeviceCount()
    return err == runtime.cudaError_t.cudaSuccess and count > 0


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _used_names(module, roots):
    """Every dotted name under the given roots (module aliases or object variables) that
    the module's source uses, e.g. ('trt', 'DataType', 'HALF') or ('engine', 'num_io_tensors')."""
    tree = ast.parse(inspect.getsource(module))
    found = set()
    for node in ast.walk(tree):
        chain = _dotted(node) if isinstance(node, ast.Attribute) else None
        if chain is None:
            continue
        if chain[0] == "self" and len(chain) > 2:
            chain = chain[1:]
        if chain[0] in roots and len(chain) > 1:
            found.add(tuple(chain))
    return found


def test_tensorrt_names_exist_in_the_installed_bindings():
    module = _tensorrt()
    trt = module.trt
    classes = {"trt": trt, "engine": trt.ICudaEngine, "context": trt.IExecutionContext,
               "runtime": trt.Runtime}
    used = _used_names(module, set(classes))
    assert ("engine", "get_tensor_profile_shape") in used and ("context", "execute_async_v3") in used
    missing = []
    for chain in sorted(used):
        target = classes[chain[0]]
        for part in chain[1:]:
            if not hasattr(target, part):
                missing.append(".".join(chain))
                break
            target = getattr(target, part)
    assert not missing, f"not in {trt.__name__} {trt.__version__}: {missing}"


def test_tensorrt_names_exist_in_the_tensorrt_10_stubs():
    stub = Path(pytest.importorskip("tensorrt_bindings", reason="tensorrt-stubs not installed").__path__[0])
    text = (stub / "tensorrt.pyi").read_text()
    module = _tensorrt()
    used = _used_names(module, {"trt", "engine", "context", "runtime"})
    class_of = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime"}
    missing = []
    for chain in sorted(c for c in used if not c[1].startswith("__")):
        owner = class_of.get(chain[0]) or chain[1]
        member = chain[1] if chain[0] != "trt" else (chain[2] if len(chain) > 2 else None)
        body = re.search(rf"^class {re.escape(owner)}\b.*?(?=^class |\Z)", text, re.S | re.M)
        if body is None or (member and not re.search(rf"\b{re.escape(member)}\b", body.group(0))):
            missing.append(".".join(chain))
    assert not missing, f"not in the TensorRT 10 stubs: {missing}"


def test_cuda_python_names_exist():
    from cuda.bindings import driver, nvrtc, runtime

    import pmtiqa_deploy.cuda_preprocess as cuda_preprocess
    import pmtiqa_deploy.device as device
    modules = {"cudart": runtime, "driver": driver, "nvrtc": nvrtc}
    missing = []
    for source in (device, cuda_preprocess, _tensorrt()):
        for chain in _used_names(source, set(modules)):
            target = modules[chain[0]]
            for part in chain[1:]:
                if not hasattr(target, part):
                    missing.append(".".join(chain))
                    break
                target = getattr(target, part)
    assert not missing, f"not in cuda-python: {missing}"


def test_tensorrt_backend_without_a_gpu_is_unavailable(tmp_path):
    module = _tensorrt()
    (tmp_path / "model.engine").write_bytes(b"not a plan")
    engine = Artifact("model.engine", "tensorrt", "fp16", sha256_file(tmp_path / "model.engine"),
                      tensorrt_version=module.trt.__version__, compute_capability="9.0",
                      version_compatible=True)
    _spec(artifacts=[engine]).save(tmp_path)
    if _has_gpu():
        pytest.skip("this machine has a GPU: the backend would load the (fake) plan")
    with pytest.raises(BackendUnavailable, match="no usable CUDA device"):
        backend_class("tensorrt")(tmp_path)


def test_plan_compatibility_rules():
    module = _tensorrt()
    from pmtiqa_deploy.device import DeviceInfo

    hopper = DeviceInfo(0, "H100", (9, 0))
    turing = DeviceInfo(0, "T4", (7, 5))

    def plan(**kw):
        return Artifact("model.engine", "tensorrt", "fp16", "0" * 64, **kw)

    check = module.check_plan_compatibility
    check(plan(tensorrt_version="10.13.0.35", compute_capability="9.0"), "10.13.0.35", False, hopper)
    check(plan(tensorrt_version="10.13.0.35", version_compatible=True), "11.4.0.106", True, hopper)
    check(plan(compute_capability="8.0+"), "11.4.0.106", False, hopper)
    with pytest.raises(SpecError, match="runs only on the version that built it"):
        check(plan(tensorrt_version="10.13.0.35"), "10.14.1.48", False, hopper)
    with pytest.raises(SpecError, match="newer than this runtime"):
        check(plan(tensorrt_version="11.4.0", version_compatible=True), "10.13.0", False, hopper)
    with pytest.raises(SpecError, match="newer than this runtime"):
        check(plan(tensorrt_version="11.4.0", version_compatible=True), "11.2.1", True, hopper)
    with pytest.raises(SpecError, match="tensorrt_lean runs only version-compatible"):
        check(plan(version_compatible=False), "11.4.0", True, hopper)
    with pytest.raises(SpecError, match="compute capability 8.6; this GPU \\(H100\\) is 9.0"):
        check(plan(compute_capability="8.6"), "10.13.0", False, hopper)
    with pytest.raises(SpecError, match="8.0\\+"):
        check(plan(compute_capability="8.0+"), "10.13.0", False, turing)
    assert module.parse_compute_capability("sm_89") == ((8, 9), False)


@pytest.mark.parametrize("built, here, runs", [
    # TensorRT 11.4's support matrix: "Two combinations are supported across major versions:
    # TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and
    # TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime. No other
    # combination across major versions is supported. For example, a TensorRT 8 engine
    # cannot run with a TensorRT 11 runtime." Within a major: newer runtimes, from 8.6.
    ("10.13.0.35", "11.4.0.106", True), ("10.16.1", "11.0.0", True), ("8.6.1", "10.13.0", True),
    ("11.1.0", "11.4.0", True), ("11.4.0", "11.4.0", True), ("8.6.1", "8.6.1", True),
    ("8.6.1", "11.4.0", False), ("8.6.1", "9.3.0", False), ("9.3.0", "11.4.0", False),
    ("11.4.0", "11.1.0", False), ("11.0.0", "10.16.1", False), ("8.5.3", "8.6.1", False),
    ("10.0.0", "12.0.0", False),
])
def test_version_compatible_plans_follow_the_support_matrix(built, here, runs):
    module = _tensorrt()
    from pmtiqa_deploy.device import DeviceInfo

    artifact = Artifact("model.engine", "tensorrt", "fp16", "0" * 64, tensorrt_version=built,
                        version_compatible=True)
    if runs:
        module.check_plan_compatibility(artifact, here, True, DeviceInfo(0, "H200", (9, 0)))
    else:
        with pytest.raises(SpecError, match=f"built by TensorRT {built} and this runtime is {here}"):
            module.check_plan_compatibility(artifact, here, True, DeviceInfo(0, "H200", (9, 0)))
    with pytest.raises(SpecError, match="not of the form"):
        module.parse_compute_capability("hopper")


# --- the PyTorch reference ------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random resnet18 PMT-IQA checkpoint cut into 2 crops per image (small and fast)."""
    torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    pytest.importorskip("safetensors")
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(4, 3, 224, 224))
    model.eval()
    info = CheckpointInfo(config=model.config, score=ScoreSpec.from_levels(0.0, 100.0, 10),
                          preprocess=PreprocessSpec(crop_count=2, resize="fixed", width=320, height=240))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "checkpoint", info), model


def _photos(count, seed=0):
    """Smooth random images (noise blurred), like photographs more than white noise is."""
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 256, (180, 260, 3), dtype=np.uint8), (9, 9), 3)
            for _ in range(count)]


def test_torch_backend_averages_crops_like_the_graph(checkpoint):
    import torch

    from pmtiqa_deploy.backends.torch import TorchBackend

    directory, model = checkpoint
    backend = TorchBackend.from_checkpoint(directory)
    spec = backend.spec
    assert spec.preprocess.crop_count == 2 and spec.checkpoint_sha256
    crops = np.stack([preprocess(p, spec.preprocess, spec.input) for p in _photos(3)])
    out = backend.infer(crops)
    with torch.no_grad():
        score, logits = model(torch.from_numpy(crops.reshape(6, 3, 224, 224)))
    np.testing.assert_allclose(out["score"], score.view(3, 2).mean(1).numpy(), rtol=1e-5, atol=1e-5)
    probs = torch.softmax(logits, -1).view(3, 2, -1).mean(1).numpy()
    np.testing.assert_allclose(out["level_probs"], probs, atol=1e-6)
    np.testing.assert_array_equal(backend.infer(crops)["score"], out["score"])  # deterministic
    # uint8 input: normalisation inside the module gives the reference's floats
    raw_input = InputSpec(dtype="uint8", layout="BNHWC", normalize_in_graph=True)
    with TorchBackend.from_checkpoint(directory, input=raw_input) as raw:
        raw_crops = np.stack([preprocess(p, spec.preprocess, raw_input) for p in _photos(3)])
        np.testing.assert_allclose(raw.infer(raw_crops)["score"], out["score"], rtol=1e-5, atol=1e-5)
        raw.close()
        with pytest.raises(RuntimeError, match="closed"):
            raw.infer(raw_crops)


def test_torch_backend_checks_its_checkpoint_and_options(checkpoint, tmp_path):
    from pmtiqa_deploy.backends.torch import TorchBackend

    directory, _ = checkpoint
    spec = TorchBackend.from_checkpoint(directory).spec
    with pytest.raises(SpecError, match="checkpoint=PATH"):
        TorchBackend(None, ModelSpec.from_dict({**spec.to_dict(), "producer": {}}))
    wrong = ModelSpec.from_dict({**spec.to_dict(), "checkpoint_sha256": "0" * 64})
    with pytest.raises(SpecError, match="not the checkpoint model.json was exported from"):
        TorchBackend(None, wrong, checkpoint=directory)
    with pytest.raises(ValueError, match="device='cuda'"):
        TorchBackend(None, spec, checkpoint=directory, precision="fp16")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            TorchBackend(None, spec, checkpoint=directory, device="cuda")
    # the checkpoint recorded in model.json, relative to the model directory
    recorded = ModelSpec.from_dict({**spec.to_dict(), "producer": {"checkpoint": str(directory)}})
    recorded.save(tmp_path)
    assert TorchBackend(tmp_path).checkpoint == directory


@pytest.mark.slow
def test_exported_onnx_matches_the_torch_reference(checkpoint, tmp_path):
    """End to end: checkpoint -> ONNX (the export package) -> onnxruntime backend, against
    the torch backend on the same reference preprocessing; scores within 1e-3."""
    pytest.importorskip("onnxruntime")
    export = pytest.importorskip("pmtiqa_deploy.export.onnx", reason="the export extra is not installed")
    from pmtiqa_deploy.backends.torch import TorchBackend

    directory, _ = checkpoint
    reference = TorchBackend.from_checkpoint(directory)
    export.onnx_from_checkpoint(directory, tmp_path / "model.onnx", input_spec=reference.spec.input)
    artifacts = [Artifact("model.onnx", "onnx", "fp32", sha256_file(tmp_path / "model.onnx"), opset=17)]
    fp16 = pytest.importorskip("pmtiqa_deploy.export.fp16")
    fp16.fp16_from_onnx(tmp_path / "model.onnx", tmp_path / "model.fp16.onnx")
    artifacts.append(Artifact("model.fp16.onnx", "onnx", "fp16", sha256_file(tmp_path / "model.fp16.onnx"),
                              opset=17))
    ModelSpec.from_dict({**reference.spec.to_dict(),
                         "artifacts": [a.__dict__ for a in artifacts]}).save(tmp_path)
    spec = ModelSpec.load(tmp_path)
    crops = np.stack([preprocess(p, spec.preprocess, spec.input) for p in _photos(4, seed=3)])
    want = reference.infer(crops)
    with backend_class("onnxruntime")(tmp_path, threads=1) as onnx_backend:
        got = onnx_backend.infer(crops)
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-3)
    np.testing.assert_allclose(got["level_probs"], want["level_probs"], atol=1e-4)
    with backend_class("onnxruntime")(tmp_path, precision="fp16", threads=1) as half:
        got16 = half.infer(crops)
    # FP16 backbone (heads stay FP32): measured 4e-4 on the score, 1e-4 on the probabilities
    np.testing.assert_allclose(got16["score"], want["score"], atol=5e-3)
    np.testing.assert_allclose(got16["level_probs"], want["level_probs"], atol=2e-3)
