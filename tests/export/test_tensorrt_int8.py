"""The TensorRT explicit-INT8 build, checked where it cannot run (no builder, no GPU here):
the 11.x bindings confirm that INT8 comes only from Q/DQ nodes in a strongly typed
network (no precision flag is left to set), the QDQ check refuses what TensorRT's parser
would, and without TensorRT the build says what is missing. mypy checks the module against
the 10.x stubs in test_tensorrt.py; the QDQ check runs on real quantized graphs in
test_int8.py."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pmtiqa_deploy.errors import BackendUnavailable, ExportError  # noqa: E402
from pmtiqa_deploy.export.tensorrt import tensorrt_missing  # noqa: E402
from pmtiqa_deploy.export.tensorrt_int8 import check_tensorrt_qdq, int8_engine_from_qdq  # noqa: E402
from pmtiqa_deploy.spec import ModelSpec, ScoreSpec  # noqa: E402


def _qdq(zero_point: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zero_point, "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_check_takes_symmetric_int8_only():
    assert check_tensorrt_qdq(_qdq(np.array(0, np.int8)), "ok.onnx") == 1
    with pytest.raises(ExportError, match="non-zero zero point"):
        check_tensorrt_qdq(_qdq(np.array(3, np.int8)), "shifted.onnx")
    with pytest.raises(ExportError, match="quantizes to UINT8"):
        check_tensorrt_qdq(_qdq(np.array(128, np.uint8)), "cpu.onnx")
    plain = helper.make_model(helper.make_graph([], "g", [], []))
    with pytest.raises(ExportError, match="not a QDQ graph"):
        check_tensorrt_qdq(plain, "plain.onnx")


def test_tensorrt_11_has_no_int8_flag_left_to_set():
    lean = pytest.importorskip("tensorrt_lean", reason="tensorrt-lean (the 11.x runtime) is not installed")
    flags = lean.BuilderFlag
    assert hasattr(flags, "VERSION_COMPATIBLE")  # the enum is there and read correctly
    assert not hasattr(flags, "INT8") and not hasattr(flags, "FP16")
    assert hasattr(lean.DataType, "INT8")  # INT8 tensors exist: Q/DQ decide where


def test_build_without_tensorrt_says_what_is_missing(tmp_path):
    missing = tensorrt_missing()
    if missing is None:
        pytest.skip("TensorRT's builder and a GPU are present here: the engine would be built")
    path = tmp_path / "qdq.onnx"
    onnx.save(_qdq(np.array(0, np.int8)), str(path))
    spec = ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10))
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        int8_engine_from_qdq(path, tmp_path / "model.int8.engine", spec)
    assert not (tmp_path / "model.int8.engine").exists()
