"""`pmtiqa-data`: inspect over dataset replicas (conftest.py), its exit codes and messages,
make-builtin, and a --help that imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pmtiqa_deploy.train.data_cli import DATASET_NAMES, data_command
from pmtiqa_deploy.train.datasets import DATASETS


def _run(*args):
    return CliRunner().invoke(data_command, [str(a) for a in args])


def test_the_cli_offers_every_reader():
    assert sorted(DATASET_NAMES) == sorted(DATASETS)


def test_inspect_json(livec):
    result = _run("inspect", "--dataset", "livec", "--root", livec.root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["count"] == 6 and summary["references"] is None and summary["missing"] == []
    assert (summary["score_min"], summary["score_max"], summary["higher_is_better"]) == (0.0, 100.0, True)
    assert summary["name"] == "livec" and summary["root"] == str(livec.root) and summary["resize"] == "none"


def test_inspect_json_synthetic_with_reference_count(live):
    summary = json.loads(_run("inspect", "--dataset", "live", "--root", live.root, "--json").stdout)
    assert summary["references"] == 29 and summary["count"] == live.count
    assert summary["higher_is_better"] is False and summary["units"] == "DMOS"


def test_inspect_table(koniq):
    result = _run("inspect", "--dataset", "koniq", "--root", koniq.root)
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines()
                 if not line.startswith(("data range", "per level", "official split")))
    assert lines["images"] == "6" and lines["resize"] == "fixed 512x384"
    assert lines["scores"] == "1..5 MOS, higher is better"
    assert "official split" in result.stdout and "test 2, training 3, validation 1" in result.stdout


def test_inspect_passes_reader_options(koniq):
    result = _run("inspect", "--dataset", "koniq", "--root", koniq.root,
                  "--option", "score_column=MOS_zscore", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["units"] == "MOS_zscore"
    bad = _run("inspect", "--dataset", "koniq", "--root", koniq.root, "--option", "score_column")
    assert bad.exit_code == 2 and "is not KEY=VALUE" in bad.output


def test_inspect_missing_files_exit_1(csiq):
    (csiq.root / "dst_imgs_all" / "1600.JPEG.4.png").unlink()
    result = _run("inspect", "--dataset", "csiq", "--root", csiq.root, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["missing"] == [str(csiq.root / "dst_imgs_all" / "1600.JPEG.4.png")]
    assert f"1 of {csiq.count} image(s) named in the index are not on disk" in result.stderr
    table = _run("inspect", "--dataset", "csiq", "--root", csiq.root)
    assert table.exit_code == 1 and "1600.JPEG.4.png" in table.stdout


def test_inspect_dataset_error_is_a_clear_message(bid):
    (bid.root / "DatabaseGrades.xlsx").unlink()
    result = _run("inspect", "--dataset", "bid", "--root", bid.root)
    assert result.exit_code == 1
    assert "Error: BID: DatabaseGrades.xlsx (or DatabaseGrades.xls) not found under" in result.stderr
    assert "Traceback" not in result.output


def test_inspect_rejects_unknown_dataset(tmp_path):
    result = _run("inspect", "--dataset", "tid2013", "--root", tmp_path)
    assert result.exit_code == 2 and "tid2013" in result.output


def test_make_builtin_refuses_a_foreign_folder(tmp_path):
    pytest.importorskip("skimage", reason="the train extra (scikit-image) is not installed")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    result = _run("make-builtin", "--out", tmp_path / "mine")
    assert result.exit_code == 1 and result.stderr.startswith("Error: ")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a dataset"


@pytest.mark.slow
def test_make_builtin_builds_and_reports(tmp_path, monkeypatch):
    pytest.importorskip("skimage", reason="the train extra (scikit-image) is not installed")
    from pmtiqa_deploy import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a progress line per image
    result = _run("make-builtin", "--out", tmp_path / "builtin", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "builtin dataset: 100% 1150/1150" in result.stderr
    assert f"built-in dataset in {tmp_path / 'builtin'}" in result.stdout
    inspected = _run("inspect", "--dataset", "builtin", "--root", tmp_path / "builtin", "--json")
    summary = json.loads(inspected.stdout)
    assert summary["count"] > 0 and summary["missing"] == [] and summary["references"] > 2
    assert f"{summary['count']} images of {summary['references']} sources" in result.stdout


def test_help_imports_no_torch():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from pmtiqa_deploy.train.data_cli import data_command\n"
            "for args in ([], ['inspect'], ['make-builtin']):\n"
            "    result = CliRunner().invoke(data_command, args + ['--help'])\n"
            "    assert result.exit_code == 0, result.output\n"
            "heavy = sorted(m for m in ('torch', 'scipy', 'openpyxl', 'cv2', 'numpy') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
