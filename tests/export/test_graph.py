"""The exported graph: standard operators, dynamic batch, stable names, the multi-scale
concat fed by four different backbone stages, and uint8 input equal to float input."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from pmtiqa_deploy.export.graph import CONCAT_NAME, SCALE_NAMES, ExportGraph  # noqa: E402
from pmtiqa_deploy.export.onnx import (  # noqa: E402
    onnx_from_model, onnx_io, op_domains, producer, read_onnx)
from pmtiqa_deploy.export.parity import image_files, load_crops, model_input  # noqa: E402
from pmtiqa_deploy.spec import InputSpec, PreprocessSpec  # noqa: E402
from pmtiqa_deploy.train.checkpoint import load_checkpoint  # noqa: E402
from pmtiqa_deploy.train.model import PMTIQA, ModelConfig  # noqa: E402

# What the native library (OpenCV 4.6 DNN) and TensorRT are promised.
PLAIN_OPS = {"Conv", "Relu", "MaxPool", "Add", "AveragePool", "Reshape", "Flatten", "Gemm", "MatMul",
             "Concat", "LeakyRelu", "Softmax", "ReduceMean", "Cast", "Sub", "Mul", "Div", "Transpose"}


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["exported", "exported_uint8"])
def test_graph_uses_only_plain_standard_operators(which, request):
    result = request.getfixturevalue(which)
    for name in ("model.onnx", "model.fp16.onnx"):
        proto = read_onnx(result.directory / name)
        onnx.checker.check_model(proto, full_check=True)
        assert op_domains(proto) == {""}, name
        ops = {n.op_type for n in proto.graph.node}
        assert ops <= PLAIN_OPS, f"{name} uses {sorted(ops - PLAIN_OPS)}"


def test_reshapes_use_constant_shapes_with_a_free_batch(exported):
    proto = read_onnx(exported.directory / "model.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape"]
    assert reshapes
    shapes = [inits[n.input[1]].tolist() for n in reshapes]  # KeyError: a computed shape
    assert [-1, 3, 224, 224] in shapes
    assert all(s[0] == -1 and all(d > 0 for d in s[1:]) for s in shapes)
    assert not [n for n in proto.graph.node if n.op_type in ("Cast", "Identity", "Squeeze", "Constant")]


def test_inputs_and_outputs_have_the_documented_names_dtypes_and_shapes(exported, exported_uint8):
    inputs, outputs = onnx_io(read_onnx(exported.directory / "model.onnx"))
    assert [(t.name, t.dtype, t.shape) for t in inputs] == [("images", "float32", ("B", 2, 3, 224, 224))]
    assert [(t.name, t.dtype, t.shape) for t in outputs] == [
        ("score", "float32", ("B",)), ("level_probs", "float32", ("B", 10))]
    inputs, outputs = onnx_io(read_onnx(exported_uint8.directory / "model.fp16.onnx"))
    assert [(t.name, t.dtype, t.shape) for t in inputs] == [("images", "uint8", ("B", 2, 224, 224, 3))]
    assert [t.name for t in outputs] == ["score", "level_probs", *SCALE_NAMES, CONCAT_NAME]
    assert {t.dtype for t in outputs} == {"float32"}


def test_dynamic_batch_gives_the_same_score_per_image(exported, photos):
    spec = exported.spec
    crops = load_crops(image_files(photos)[:5], spec)
    run = session(exported.directory / "model.onnx")
    together = run.run(None, {"images": model_input(crops, spec)})
    alone = [run.run(None, {"images": model_input([c], spec)}) for c in crops]
    np.testing.assert_allclose(together[0], [a[0][0] for a in alone], rtol=0, atol=1e-4)
    np.testing.assert_allclose(together[1], np.concatenate([a[1] for a in alone]), atol=1e-6)
    np.testing.assert_allclose(together[1].sum(axis=1), 1.0, atol=1e-5)


def test_uint8_graph_scores_equal_float_graph_scores(exported, exported_uint8, photos):
    crops = load_crops(image_files(photos), exported.spec)
    for name in ("model.onnx", "model.fp16.onnx"):
        floats = session(exported.directory / name).run(
            None, {"images": model_input(crops, exported.spec)})
        uint8 = session(exported_uint8.directory / name).run(
            ["score", "level_probs"], {"images": model_input(crops, exported_uint8.spec)})
        # MOS points. FP32: the same crops reach the first Conv bit for bit. FP16: ONNX
        # Runtime picks kernels per graph, so two FP16 graphs agree to FP16 accuracy only.
        tolerance = 1e-4 if name == "model.onnx" else 0.5
        np.testing.assert_allclose(uint8[0], floats[0], rtol=0, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(uint8[1], floats[1], rtol=0, atol=1e-3, err_msg=name)


def test_debug_outputs_are_the_models_scale_features(exported_uint8, checkpoint, photos):
    spec = exported_uint8.spec
    crops = load_crops(image_files(photos)[:3], spec)
    got = session(exported_uint8.directory / "model.onnx").run(
        list(SCALE_NAMES) + [CONCAT_NAME], {"images": model_input(crops, spec)})
    model, _ = load_checkpoint(checkpoint)
    from pmtiqa_deploy.preprocess import normalize

    with torch.no_grad():
        x = np.concatenate([normalize(c, spec.preprocess) for c in crops])
        want = model.features(torch.from_numpy(x))
    for name, have, expected in zip((*SCALE_NAMES, CONCAT_NAME), got, want):
        assert have.shape == tuple(expected.shape), name
        np.testing.assert_allclose(have, expected.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_names_survive_without_debug_outputs(exported):
    proto = read_onnx(exported.directory / "model.onnx")
    concat = [n for n in proto.graph.node if n.op_type == "Concat"]
    assert [(n.name, list(n.input), list(n.output)) for n in concat] == [
        (CONCAT_NAME, list(SCALE_NAMES), [CONCAT_NAME])]
    fp16 = read_onnx(exported.directory / "model.fp16.onnx")
    assert any(n.name == CONCAT_NAME and list(n.input) == list(SCALE_NAMES) for n in fp16.graph.node)


def _stage_of(graph: onnx.GraphProto, value: str) -> str:
    """Walk back from a value to the first node that belongs to a backbone stage."""
    seen, todo = set(), [value]
    while todo:
        node = producer(graph, todo.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            if f"/{stage}/" in node.name:
                return stage
        todo.extend(node.input)
    raise AssertionError(f"{value} is not fed by any backbone stage")


@pytest.fixture(scope="module")
def resnet50_graph(tmp_path_factory):
    """The paper's configuration (resnet50), exported with the debug outputs."""
    torch.manual_seed(0)
    model = PMTIQA(ModelConfig(backbone="resnet50")).eval()
    path = tmp_path_factory.mktemp("r50") / "model.onnx"
    onnx_from_model(model, PreprocessSpec(crop_count=1), InputSpec(), path, debug_outputs=True)
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


def test_concat_joins_four_different_backbone_stages(resnet50_graph):
    graph = resnet50_graph.graph
    concats = [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 4]
    assert len(concats) == 1 and concats[0].name == CONCAT_NAME
    stages = [_stage_of(graph, value) for value in concats[0].input]
    assert stages == ["layer1", "layer2", "layer3", "layer4"]


def test_resnet50_scale_shapes_match_the_paper(resnet50_graph):
    graph = resnet50_graph.graph
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.output]}
    for name in SCALE_NAMES:
        assert shapes[name][1] == 28, name
    assert shapes[CONCAT_NAME][1] == 112
    pools = [n for n in graph.node if n.op_type == "AveragePool" and "/branches" in n.name]
    grids = sorted((shapes[p.output[0]][1], shapes[p.output[0]][2]) for p in pools)
    assert grids == [(16, 8), (32, 4), (64, 2), (2048, 1)]  # channels, grid side
    assert shapes["level_probs"] == ["B", 10]


def test_export_graph_rejects_a_crop_size_the_model_does_not_take():
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    with pytest.raises(ValueError, match="crops"):
        ExportGraph(model, PreprocessSpec(crop_size=192), InputSpec())


def test_opencv_dnn_reads_the_graph(exported, exported_uint8, photos):
    """The native library runs model.onnx through OpenCV's DNN module: the graph must load
    there and agree with ONNX Runtime (this is the pip OpenCV; the native tests use Debian's)."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn"):
        pytest.skip("this OpenCV build has no dnn module")
    for result in (exported, exported_uint8):
        spec = result.spec
        images = model_input(load_crops(image_files(photos)[:3], spec), spec)
        net = cv2.dnn.readNetFromONNX(str(result.directory / "model.onnx"))
        net.setInput(images, "images")
        score, probs, *_ = net.forward([o.name for o in spec.outputs])
        want = session(result.directory / "model.onnx").run(["score", "level_probs"], {"images": images})
        np.testing.assert_allclose(score.ravel(), want[0], rtol=0, atol=1e-3)
        np.testing.assert_allclose(probs, want[1], rtol=0, atol=1e-5)
