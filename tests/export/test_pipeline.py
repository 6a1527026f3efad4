"""The whole export: atomic writes (a failure leaves nothing half-written, a previous
export intact), re-running over an existing output, and the no-TensorRT path."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

from pmtiqa_deploy.errors import CheckpointError, ExportError, ParityError  # noqa: E402
from pmtiqa_deploy.export import parity, pipeline  # noqa: E402
from pmtiqa_deploy.export.pipeline import export_model, verify_export  # noqa: E402
from pmtiqa_deploy.export.tensorrt import tensorrt_missing  # noqa: E402
from pmtiqa_deploy.spec import ModelSpec  # noqa: E402


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_failure_mid_export_leaves_nothing_behind(
        checkpoint, photos, tmp_path, monkeypatch, make_options):
    def broken(source, path, **kwargs):
        path.write_bytes(b"half a graph")  # a step that dies after starting its file
        raise ExportError("injected failure during the FP16 conversion")

    monkeypatch.setattr("pmtiqa_deploy.export.fp16.fp16_from_onnx", broken)
    out = tmp_path / "model"
    with pytest.raises(ExportError, match="injected"):
        export_model(checkpoint, out, make_options(photos))
    assert not out.exists()
    assert _listing(tmp_path) == []  # no staging folder either


def test_failure_keeps_the_previous_export_intact(
        exported, checkpoint, photos, tmp_path, monkeypatch, make_options):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(exported.directory, out)
    before = _snapshot(out)
    monkeypatch.setitem(parity.TOLERANCES, "onnxruntime-fp16", parity.Tolerance(1.0, 1.5))
    with pytest.raises(ParityError, match="onnxruntime-fp16.*--allow-drift"):
        export_model(checkpoint, out, make_options(photos, crop_count=1))
    assert _snapshot(out) == before
    assert _listing(tmp_path) == ["model"]
    verify_export(out)


def test_allow_drift_writes_the_artifacts_and_records_the_failure(
        checkpoint, photos, tmp_path, monkeypatch, make_options):
    monkeypatch.setitem(parity.TOLERANCES, "onnxruntime-fp16", parity.Tolerance(1.0, 1.5))
    result = export_model(checkpoint, tmp_path / "model", make_options(photos, allow_drift=True))
    report = json.loads((tmp_path / "model" / "parity.json").read_text())
    assert report["passed"] is False
    assert [b["passed"] for b in report["backends"]] == [True, False]
    assert not result.parity.passed
    verify_export(tmp_path / "model")


def test_rerun_over_an_existing_export_replaces_it_consistently(
        exported, checkpoint, photos, tmp_path, make_options):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(exported.directory, out)
    (out / "notes.txt").write_text("the user's own file")
    result = export_model(checkpoint, out, make_options(photos, fp16=False, crop_count=1))
    assert _listing(out) == ["model.json", "model.onnx", "notes.txt", "parity.json"]
    spec = verify_export(out)
    assert spec == result.spec
    assert [a.file for a in spec.artifacts] == ["model.onnx"]  # the old FP16 file is gone
    assert spec.preprocess.crop_count == 1
    again = export_model(checkpoint, out, make_options(photos, fp16=False, crop_count=1))
    assert again.spec == spec  # the same export twice gives the same files
    assert _listing(tmp_path) == ["model"]


def test_without_tensorrt_the_onnx_files_and_spec_are_written_with_exit_code_3(
        checkpoint, photos, tmp_path, make_options):
    if tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present here: the engine is built instead")
    result = export_model(checkpoint, tmp_path / "model",
                          make_options(photos, engine=True, parity_limit=4))
    assert result.exit_code == 3
    assert "pip install 'pmtiqa-deploy[tensorrt]'" in result.engine_missing
    assert _listing(tmp_path / "model") == [
        "model.fp16.onnx", "model.json", "model.onnx", "parity.json"]
    assert [a.format for a in ModelSpec.load(tmp_path / "model").artifacts] == ["onnx", "onnx"]


def test_a_broken_checkpoint_is_an_input_error(tmp_path, photos, make_options):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        export_model(tmp_path / "ckpt", tmp_path / "model", make_options(photos))
    assert _listing(tmp_path) == ["ckpt"]


def test_output_that_is_a_file_is_refused(checkpoint, photos, tmp_path, make_options):
    (tmp_path / "model").write_text("a file")
    with pytest.raises(ExportError, match="not a directory"):
        export_model(checkpoint, tmp_path / "model", make_options(photos))


def test_commit_removes_a_stale_engine(tmp_path):
    staging, out = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    out.mkdir()
    for name in ("model.onnx", "model.json", "parity.json"):
        (staging / name).write_text(f"new {name}")
    for name in ("model.onnx", "model.engine", "model.fp16.onnx", "model.json"):
        (out / name).write_text(f"old {name}")
    written = pipeline._commit(staging, out)
    assert [p.name for p in written] == ["model.onnx", "parity.json", "model.json"]
    assert _listing(out) == ["model.json", "model.onnx", "parity.json"]
    assert (out / "model.json").read_text() == "new model.json"


@pytest.mark.slow
def test_default_parity_images_are_the_builtin_test_split(checkpoint, photos, builtin_dir, tmp_path,
                                                          make_options):
    result = export_model(checkpoint, tmp_path / "model",
                          make_options(photos, parity_images=None, builtin_dir=builtin_dir,
                                       parity_limit=6, allow_drift=True))
    report = json.loads((tmp_path / "model" / "parity.json").read_text())
    assert report["count"] == 6 and all(str(builtin_dir) in image for image in report["images"])
    # The fixture model's spread is set on the photos, not on these images; FP32 must
    # still match to rounding (FP16 ranks on six clustered scores are not the point here).
    assert result.parity.results[0].backend == "onnxruntime-fp32" and result.parity.results[0].passed
