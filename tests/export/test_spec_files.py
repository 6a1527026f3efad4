"""model.json as export writes it: every field filled, a strict round trip, and clear
errors for unknown keys, newer schemas, truncated ONNX files and ONNX/spec mismatches."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

from pmtiqa_deploy.errors import SpecError  # noqa: E402
from pmtiqa_deploy.export.onnx import check_onnx_against_spec, read_onnx  # noqa: E402
from pmtiqa_deploy.export.pipeline import verify_export  # noqa: E402
from pmtiqa_deploy.spec import ModelSpec, sha256_file  # noqa: E402
from pmtiqa_deploy.train.checkpoint import read_checkpoint_info  # noqa: E402


def test_spec_is_filled_from_the_checkpoint_and_the_options(exported, exported_uint8, checkpoint):
    spec = ModelSpec.load(exported.directory)
    info, _ = read_checkpoint_info(checkpoint)
    assert spec == exported.spec
    assert spec.score == info.score
    assert spec.preprocess == info.preprocess  # crop count not overridden here
    assert spec.backbone == "resnet18"
    assert spec.checkpoint_sha256 == sha256_file(checkpoint / "model.safetensors")
    def layout(s):
        return s.input.dtype, s.input.layout, s.input.normalize_in_graph

    assert layout(spec) == ("float32", "BNCHW", False)
    assert (spec.input.batch_min, spec.input.batch_opt, spec.input.batch_max) == (1, 4, 8)
    assert [o.name for o in spec.outputs] == ["score", "level_probs"]
    assert [(a.file, a.format, a.precision, a.opset) for a in spec.artifacts] == [
        ("model.onnx", "onnx", "fp32", 17), ("model.fp16.onnx", "onnx", "fp16", 17)]
    for artifact in spec.artifacts:
        assert artifact.sha256 == sha256_file(exported.directory / artifact.file)
    assert {"pmtiqa_deploy", "torch", "onnx", "onnxruntime", "exporter"} <= set(spec.producer)
    uint8 = exported_uint8.spec
    assert layout(uint8) == ("uint8", "BNHWC", True)
    assert [o.name for o in uint8.outputs][2:] == ["ms1", "ms2", "ms3", "ms4", "ms_concat"]


def test_spec_round_trips_exactly(exported, tmp_path):
    spec = ModelSpec.load(exported.directory)
    again = ModelSpec.load(spec.save(tmp_path / "model.json"))
    assert again == spec
    assert json.loads((tmp_path / "model.json").read_text()) == spec.to_dict()


def test_unknown_keys_and_newer_schemas_are_rejected(exported, tmp_path):
    data = json.loads((exported.directory / "model.json").read_text())
    data["input"]["colour"] = "BGR"
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match="unknown key"):
        ModelSpec.load(tmp_path)
    data = json.loads((exported.directory / "model.json").read_text())
    data["schema_version"] = "2.0"
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match="newer"):
        ModelSpec.load(tmp_path)


def test_verify_export_accepts_a_fresh_export(exported):
    assert verify_export(exported.directory) == exported.spec


def test_truncated_onnx_file_is_a_clear_error(exported, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported.directory, copy)
    path = copy / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SpecError, match="truncated"):
        verify_export(copy)
    with pytest.raises(SpecError, match="truncated or corrupted"):
        read_onnx(path)


def test_onnx_that_disagrees_with_its_spec_is_a_clear_error(exported, exported_uint8, tmp_path):
    float_spec, uint8_spec = exported.spec, exported_uint8.spec
    with pytest.raises(SpecError, match="uint8"):  # float graph, uint8 spec
        check_onnx_against_spec(exported.directory / "model.onnx", uint8_spec)
    with pytest.raises(SpecError, match="ms1"):  # debug outputs the spec does not list
        check_onnx_against_spec(exported_uint8.directory / "model.onnx",
                                dataclasses.replace(float_spec, input=uint8_spec.input))
    fewer_crops = dataclasses.replace(float_spec, preprocess=dataclasses.replace(
        float_spec.preprocess, crop_count=5))
    with pytest.raises(SpecError, match="axis 1"):
        check_onnx_against_spec(exported.directory / "model.onnx", fewer_crops)
    wrong_opset = dataclasses.replace(float_spec, artifacts=tuple(
        dataclasses.replace(a, opset=13) for a in float_spec.artifacts))
    with pytest.raises(SpecError, match="opset"):
        check_onnx_against_spec(exported.directory / "model.onnx", wrong_opset)



@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_runtimes_onnx_backend_runs_the_export(exported_uint8, photos, precision):
    """The contract end to end: the runtime loads model.json and the ONNX file (hash and
    signature checks) and scores as the export's parity check measured."""
    from pmtiqa_deploy.backends import backend_class
    from pmtiqa_deploy.export.parity import image_files, load_crops, model_input

    spec = exported_uint8.spec
    crops = load_crops(image_files(photos)[:4], spec)
    backend = backend_class("onnxruntime")(exported_uint8.directory, precision=precision, threads=2)
    with backend:
        out = backend.infer(model_input(crops, spec))
    backend_name = f"onnxruntime-{precision}"
    expected = next(r for r in exported_uint8.parity.results if r.backend == backend_name).scores[:4]
    assert out["score"].shape == (4,) and out["level_probs"].shape == (4, 10)
    assert abs(out["score"] - list(expected)).max() < 1e-3
