"""INT8 export: model.int8.onnx is a real QDQ graph (uint8 activations, int8 per-channel
weights, the heads FP32) that ONNX Runtime runs through the runtime's backend, the spec
records how it was made, the gate applies --int8-min-srcc, calibration covers every
built-in distortion type and level on training photographs only, and the TensorRT
flavour is the symmetric int8 graph TensorRT's parser accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

from click.testing import CliRunner  # noqa: E402

from pmtiqa_deploy.errors import DatasetError, ExportError  # noqa: E402
from pmtiqa_deploy.export.cli import export_command  # noqa: E402
from pmtiqa_deploy.export.int8 import TENSORRT, CalibrationSet, calibration_set, int8_from_onnx  # noqa: E402
from pmtiqa_deploy.export.pipeline import export_model, verify_export  # noqa: E402
from pmtiqa_deploy.export.tensorrt_int8 import check_tensorrt_qdq  # noqa: E402
from pmtiqa_deploy.score import Scorer  # noqa: E402
from pmtiqa_deploy.spec import ModelSpec  # noqa: E402


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, checkpoint, photos, make_options):
    """The fixture checkpoint exported with --int8 (gate lowered: an untrained network's
    INT8 ranks agree less than a trained one's), calibrated on the fixture photos."""
    out = tmp_path_factory.mktemp("int8") / "model"
    return export_model(checkpoint, out, make_options(photos, fp16=False, int8=True, int8_min_srcc=0.95,
                                                      calibration_images=photos, calibration_limit=12))


def test_int8_graph_is_qdq_with_fp32_heads_and_the_spec_says_so(int8_export):
    spec = ModelSpec.load(int8_export.directory)
    artifact = spec.artifact("onnx", "int8")
    q = artifact.quantization
    assert artifact.file == "model.int8.onnx" and q.calibration_images == 12
    assert q.quantized_convolutions == q.convolutions > 20
    assert q.activations.startswith("uint8") and q.weights == "int8 per-channel symmetric"
    assert "12 images of the folder" in q.calibration and q.fp32_op_types == ("Gemm",)
    proto = onnx.load(str(int8_export.directory / "model.int8.onnx"))
    nodes = {n.name: n for n in proto.graph.node}
    assert set(q.fp32_nodes) <= set(nodes)  # the heads, by name, untouched
    quantized = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    zero_types = {next(t for t in proto.graph.initializer if t.name == n.input[2]).data_type for n in quantized}
    assert zero_types == {onnx.TensorProto.UINT8}
    int8_constants = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8_constants]
    per_channel = [n for n in weights if any(a.name == "axis" for a in n.attribute)
                   or len(next(t for t in proto.graph.initializer if t.name == n.input[1]).dims) == 1]
    assert weights and len(per_channel) == len(weights)
    verify_export(int8_export.directory)


def test_gate_and_parity_record_the_int8_row(int8_export):
    report = json.loads((int8_export.directory / "parity.json").read_text())
    row = next(b for b in report["backends"] if b["backend"] == "onnxruntime-int8")
    assert row["min_srcc"] == 0.95 and row["passed"] and row["srcc"] >= 0.95
    fp32 = next(b for b in report["backends"] if b["backend"] == "onnxruntime-fp32")
    assert row["max_abs_diff"] > fp32["max_abs_diff"]  # it really is quantized


def test_runtime_scores_the_int8_model(int8_export, photos):
    files = sorted(photos.glob("*.png"))
    with Scorer.open(int8_export.directory, "onnxruntime", precision="int8", threads=2) as int8, \
            Scorer.open(int8_export.directory, "onnxruntime", precision="fp32", threads=2) as fp32:
        a = np.array([r.score for r in int8.score_files(files)])
        b = np.array([r.score for r in fp32.score_files(files)])
    assert np.all(np.isfinite(a)) and 0 < np.abs(a - b).max() < 5.0
    assert np.corrcoef(a, b)[0, 1] > 0.95


def test_tensorrt_flavour_is_symmetric_int8_and_the_cpu_one_is_refused(int8_export, photos, tmp_path):
    spec = ModelSpec.load(int8_export.directory)
    calibration = CalibrationSet(tuple(sorted(photos.glob("*.png"))[:4]), "4 fixture photos")
    path = tmp_path / "trt.onnx"
    quantization = int8_from_onnx(int8_export.directory / "model.onnx", path, spec, calibration, TENSORRT)
    assert quantization.activations == "int8 per-tensor symmetric"
    assert check_tensorrt_qdq(onnx.load(str(path)), "trt.onnx") > 20
    with pytest.raises(ExportError, match="quantizes to (UINT8|INT32).*TensorRT"):
        check_tensorrt_qdq(onnx.load(str(int8_export.directory / "model.int8.onnx")), "model.int8.onnx")


def test_int8_options_need_int8(checkpoint, photos, tmp_path):
    result = CliRunner().invoke(export_command, [str(checkpoint), "-o", str(tmp_path / "m"),
                                                 "--calibration-images", str(photos)])
    assert result.exit_code == 2 and "go with --int8" in result.output


def test_calibration_covers_every_builtin_stratum_from_training_photos(tmp_path):
    from pmtiqa_deploy.train import builtin

    root = builtin.make_builtin(tmp_path / "builtin", progress=False, sources=["astronaut", "coffee"])
    training = {"dataset": "builtin", "root": str(root), "test_references": ["coffee"]}
    chosen = calibration_set(training, limit=60)
    names = [(p.parent.name, p.stem) for p in chosen.files]
    strata = {f"{d.name}_{level}" for d in builtin.DISTORTIONS for level in range(1, 6)}
    assert {stem for _, stem in names} == strata and len(names) == len(strata)  # one each
    assert all(window.startswith("astronaut") for window, _ in names)  # never the test photograph
    assert "one per distortion type and level (50 strata)" in chosen.description
    with pytest.raises(DatasetError, match="at least that many"):
        calibration_set(training, limit=10)
    with pytest.raises(DatasetError, match="--calibration-images"):
        calibration_set({"dataset": "fixture"})
