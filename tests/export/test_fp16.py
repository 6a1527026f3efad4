"""The FP16 graph: float16 weights and compute in the backbone, float32 heads and I/O, run
by ONNX Runtime's CPU provider, ranking images as PyTorch FP32 does."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402

from pmtiqa_deploy.agreement import agreement  # noqa: E402
from pmtiqa_deploy.export.fp16 import fp32_nodes, precision_summary  # noqa: E402
from pmtiqa_deploy.export.graph import CONCAT_NAME  # noqa: E402
from pmtiqa_deploy.export.onnx import read_onnx  # noqa: E402
from pmtiqa_deploy.export.parity import (  # noqa: E402
    batched_scores, image_files, load_crops, onnxruntime_runner, torch_scores)
from pmtiqa_deploy.train.checkpoint import load_checkpoint  # noqa: E402


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(proto).graph
    values = [*graph.value_info, *graph.output, *graph.input]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def test_backbone_runs_in_float16_and_heads_in_float32(exported):
    proto = read_onnx(exported.directory / "model.fp16.onnx")
    types = _types(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:  # input, weights and bias of every convolution are float16
        assert {types[name] for name in conv.input} == {TensorProto.FLOAT16}, conv.name
    for node in proto.graph.node:
        if node.op_type in ("Softmax", "ReduceMean"):
            assert types[node.output[0]] == TensorProto.FLOAT, node.name
    assert types[CONCAT_NAME] == TensorProto.FLOAT16
    counts = precision_summary(proto)
    assert counts["float16"] > 100 * counts["float32"]  # the heads are a tiny fraction
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [TensorProto.FLOAT]
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {TensorProto.FLOAT}


def test_uint8_graph_normalises_in_float32_before_the_first_convolution(exported_uint8):
    proto = read_onnx(exported_uint8.directory / "model.fp16.onnx")
    types = _types(proto)
    for node in proto.graph.node:
        if node.op_type in ("Sub", "Mul"):
            assert types[node.output[0]] == TensorProto.FLOAT, node.name
    first_conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert types[first_conv.input[0]] == TensorProto.FLOAT16
    # The float32 region found from the FP32 graph is the normalisation and the heads.
    fp32 = read_onnx(exported_uint8.directory / "model.onnx")
    kept = {fp32.graph.node[i].op_type for i in fp32_nodes(fp32.graph, CONCAT_NAME)}
    assert {"Cast", "Sub", "Mul", "Transpose", "Gemm", "Softmax", "ReduceMean"} <= kept
    assert "Conv" not in kept


def test_fp16_graph_ranks_images_as_pytorch_does(exported, checkpoint, photos):
    """FP16 graph on ONNX Runtime CPU vs PyTorch FP32: SRCC >= 0.999 (max abs reported)."""
    model, _ = load_checkpoint(checkpoint)
    spec = exported.spec
    crops = load_crops(image_files(photos), spec)
    reference = torch_scores(model, crops, spec)
    assert np.ptp(reference) > 50  # the fixture's spread: SRCC is meaningful
    scores = batched_scores(onnxruntime_runner(exported.directory / "model.fp16.onnx", 2), crops, spec)
    result = agreement(scores, reference)
    print(f"FP16 ONNX vs PyTorch FP32: {result}")
    assert result.srcc >= 0.999
    assert result.max_abs_diff <= 1.0  # MOS points on 0..100
    assert result.max_abs_diff > 0  # it really is a different precision


@pytest.mark.parametrize("value", [1e6, -1e6])
def test_out_of_range_weights_are_clipped_not_infinite(tmp_path, value):
    from onnx import helper, numpy_helper

    from pmtiqa_deploy.export.fp16 import fp16_from_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    h = helper.make_tensor_value_info(CONCAT_NAME, TensorProto.FLOAT, [1, 2])
    w = numpy_helper.from_array(np.array([value, 1.0], dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], [CONCAT_NAME], name="scale"),
         helper.make_node("Relu", [CONCAT_NAME], ["y"], name="head")],
        "g", [x], [y], [w], value_info=[h])
    source = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    converted = read_onnx(fp16_from_onnx(source, tmp_path / "small.fp16.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    assert weights["w"].dtype == np.float16 and np.isfinite(weights["w"]).all()
    assert abs(float(weights["w"][0])) == float(np.finfo(np.float16).max)
