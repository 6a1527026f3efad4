"""`pmtiqa-train`: --help without torch, a tiny run over a CSV manifest that writes a
loadable checkpoint, and the errors for a missing --root and a run folder misuse."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pmtiqa_deploy.train.cli import train_command

TINY = ["--backbone", "resnet18", "--backbone-weights", "random", "--epochs", "1", "--batch-size", "4",
        "--train-crops", "1", "--test-crops", "1", "--lr", "1e-3", "--quiet"]


def test_help_is_torch_free():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from pmtiqa_deploy.train.cli import train_command\n"
            "result = CliRunner().invoke(train_command, ['--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "assert '--schedule' in result.output and '--resume' in result.output\n"
            "assert 'torch' not in sys.modules, 'pmtiqa-train --help imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A CSV-manifest dataset: 5 references x 3 blur levels of 232x232 noise textures."""
    cv2 = pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(1)
    rows = [["path", "score", "reference"]]
    for r in range(5):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (232, 232, 3)), (0, 0), 2 + r)
        for level in range(3):
            name = f"img/r{r}_{level}.png"
            (root / "img").mkdir(exist_ok=True)
            cv2.imwrite(str(root / name), np.clip(cv2.GaussianBlur(base, (0, 0), 0.5 + 2 * level), 0, 255).astype(np.uint8))
            rows.append([name, f"{90 - 30 * level + r}", f"r{r}"])
    with open(root / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "manifest.json").write_text(json.dumps(
        {"name": "tiny", "score_min": 0.0, "score_max": 100.0, "higher_is_better": True, "units": "MOS",
         "resize": "none", "width": None, "height": None}))
    return root


def test_tiny_run_writes_checkpoint_and_summary(manifest, tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    from pmtiqa_deploy import progress
    from pmtiqa_deploy.train.checkpoint import load_checkpoint

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a progress line per step
    out = tmp_path / "run"
    loud = [arg for arg in TINY if arg != "--quiet"]
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--root", str(manifest), "--out", str(out),
                                                *loud, "--schedule", "fixed"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "epoch 1/1: " in result.stderr and "decode images: " in result.stderr
    assert "test SRCC" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["schedule"] == "fixed" and summary["config"]["backbone"] == "resnet18"
    assert summary["config"]["epochs"] == 1 and summary["dataset"]["name"] == "tiny"
    _, info = load_checkpoint(out / "checkpoint")
    assert info.preprocess.crop_count == 1 and info.metrics["test"]["count"] == 3
    record = json.loads((out / "round-0" / "metrics.jsonl").read_text())
    assert (record["l1_weight"], record["l2_weight"]) == (0.5, 0.5)

    again = CliRunner().invoke(train_command, ["--dataset", "csv", "--root", str(manifest), "--out", str(out),
                                               *TINY])
    assert again.exit_code != 0 and "already holds a run" in again.output
    changed = CliRunner().invoke(train_command, ["--dataset", "csv", "--root", str(manifest), "--out", str(out),
                                                 *TINY, "--resume"])
    assert changed.exit_code != 0 and "different config" in changed.output  # schedule differs
    resumed = CliRunner().invoke(train_command, ["--dataset", "csv", "--root", str(manifest), "--out", str(out),
                                                 *TINY, "--schedule", "fixed", "--resume"])
    assert resumed.exit_code == 0, resumed.output  # every round finished: nothing left to train


def test_resume_needs_a_run(manifest, tmp_path):
    pytest.importorskip("torch", reason="the train extra (torch) is not installed")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--root", str(manifest),
                                                "--out", str(tmp_path / "empty"), *TINY, "--resume"])
    assert result.exit_code != 0 and "holds no run" in result.output


def test_root_is_required_except_for_builtin(tmp_path):
    result = CliRunner().invoke(train_command, ["--dataset", "live", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "--root is required" in result.output


def test_unknown_dataset_names_the_readers(tmp_path):
    result = CliRunner().invoke(train_command, ["--dataset", "nope", "--root", str(tmp_path),
                                                "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "unknown dataset" in result.output and "builtin" in result.output
