"""`pmtiqa-export` through click's CliRunner: the files, the exit codes (3 here, where
TensorRT's builder is absent; 0 with --no-engine; 1 on parity failure; 2 on bad
usage), and a --help that imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

from pmtiqa_deploy import progress  # noqa: E402
from pmtiqa_deploy.export import parity  # noqa: E402
from pmtiqa_deploy.export.cli import export_command  # noqa: E402
from pmtiqa_deploy.export.pipeline import verify_export  # noqa: E402
from pmtiqa_deploy.export.tensorrt import tensorrt_missing  # noqa: E402


def _run(*args):
    result = CliRunner().invoke(export_command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_help_documents_options_and_exit_codes_without_importing_torch():
    code = ("import sys\nfrom click.testing import CliRunner\n"
            "from pmtiqa_deploy.export.cli import export_command\n"
            "r = CliRunner().invoke(export_command, ['--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint(r.output)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for option in ("--crops", "--batch-min", "--batch-opt", "--batch-max", "--input-dtype", "--fp16",
                   "--engine", "--opset", "--timing-cache", "--version-compatible", "--parity-images",
                   "--allow-drift", "--debug-outputs"):
        assert option in out, option
    assert "Exit codes" in out and "3  ONNX files" in out


def test_export_without_tensorrt_exits_3_and_says_how_to_get_it(checkpoint, photos, tmp_path):
    if tensorrt_missing() is None:
        pytest.skip("TensorRT's builder and a GPU are present here")
    out = tmp_path / "model"
    code, output = _run(checkpoint, "-o", out, "--parity-images", photos, "--crops", 1,
                        "--batch-opt", 2, "--batch-max", 4, "--threads", 2)
    assert code == 3, output
    assert "pip install 'pmtiqa-deploy[tensorrt]'" in output
    assert "onnxruntime-fp32" in output and "onnxruntime-fp16" in output  # the parity table
    assert sorted(p.name for p in out.iterdir()) == [
        "model.fp16.onnx", "model.json", "model.onnx", "parity.json"]
    spec = verify_export(out)
    assert spec.preprocess.crop_count == 1 and spec.input.batch_max == 4


def test_no_engine_uint8_export_exits_0(checkpoint, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a progress line per step
    out = tmp_path / "model"
    code, output = _run(checkpoint, "-o", out, "--no-engine", "--no-fp16", "--input-dtype", "uint8",
                        "--parity-images", photos, "--parity-limit", 6, "--opset", 13, "--threads", 2)
    assert code == 0, output
    assert "\r" not in output and "preprocess: " in output
    spec = verify_export(out)
    assert spec.input.dtype == "uint8" and spec.artifacts[0].opset == 13
    assert json.loads((out / "parity.json").read_text())["count"] == 6


def test_parity_failure_exits_1_and_writes_nothing(checkpoint, photos, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCES, "onnxruntime-fp32", parity.Tolerance(0.0, 1.5))
    code, output = _run(checkpoint, "-o", tmp_path / "model", "--no-engine", "--no-fp16",
                        "--parity-images", photos, "--parity-limit", 4, "--crops", 1, "--threads", 2)
    assert code == 1, output
    assert "FAIL" in output and "--allow-drift" in output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--batch-min", 8, "--batch-opt", 4], "batch range"),
    (["--exclude-lean-runtime"], "--version-compatible"),
    (["--opset", 21], "--opset"),
    (["--input-dtype", "int8"], "--input-dtype"),
])
def test_usage_errors_exit_2(checkpoint, photos, tmp_path, args, message):
    code, output = _run(checkpoint, "-o", tmp_path / "model", "--parity-images", photos, *args)
    assert code == 2, output
    assert message in output
    assert not (tmp_path / "model").exists()


def test_missing_checkpoint_files_exit_2(tmp_path, photos):
    (tmp_path / "ckpt").mkdir()
    code, output = _run(tmp_path / "ckpt", "-o", tmp_path / "model", "--parity-images", photos)
    assert code == 2 and "checkpoint.json" in output


def test_cli_defaults_match_the_library():
    from pmtiqa_deploy.export.onnx import DEFAULT_OPSET
    from pmtiqa_deploy.export.pipeline import ExportOptions
    from pmtiqa_deploy.export.tensorrt import DEFAULT_WORKSPACE_MIB

    defaults = {p.name: p.default for p in export_command.params}
    library = ExportOptions()
    assert defaults["opset"] == DEFAULT_OPSET == library.opset
    assert defaults["workspace_mib"] == DEFAULT_WORKSPACE_MIB
    assert (defaults["batch_min"], defaults["batch_opt"], defaults["batch_max"]) == (
        library.batch_min, library.batch_opt, library.batch_max)
