"""The benchmark: JSON rows with the documented keys and sane values, unavailable
backends as rows (not crashes), budgets that fail the command naming the flag, the plot,
MOS labels from a manifest, the built-in dataset; on the null backend everywhere and on
a real exported model (ONNX Runtime FP32/FP16 against the torch reference) where the
export extra is installed."""

import csv
import json
import math
import mmap
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from scoring_inputs import exported_model, null_model_dir, photo

from pmtiqa_deploy import bench, report
from pmtiqa_deploy.bench import BenchRow
from pmtiqa_deploy.cli import bench_command

REQUIRED = {"backend", "precision", "batch", "status", "p50_ms", "p99_ms", "images_per_s",
            "srcc_vs_torch", "max_abs_diff", "end_to_end_images_per_s"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Eight photos of different brightness with a manifest.csv whose MOS is their mean
    brightness (0..100): the null backend (brightness of the crops) ranks them alike."""
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "imgs").mkdir()
    rows = [("path", "score")]
    for i in range(8):
        image = np.clip(photo(240, 260, i).astype(np.int16) + 12 * i - 40, 0, 255).astype(np.uint8)
        name = f"imgs/photo{i}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append((name, f"{image.mean() / 2.55:.3f}"))
    with open(folder / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return folder


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory) -> Path:
    return null_model_dir(tmp_path_factory.mktemp("null-model-bench"))


def _bench(*args):
    result = CliRunner().invoke(bench_command, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_null_bench_json_rows_are_complete_and_sane(null_dir, labelled, tmp_path, monkeypatch):
    from pmtiqa_deploy import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # a progress line per measurement
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--backend", "tensorrt",
                    "--batch", "1,3", "--warmup", "1", "--iterations", "4", "--json", out_json,
                    "--plot", out_png)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "benchmark: 100% 4/4" in result.stderr
    data = json.loads(out_json.read_text())
    assert data["meta"]["image_count"] == 8 and data["meta"]["mos_labels"] is True
    assert data["meta"]["options"]["batch_text"] == "1,3" and data["meta"]["command"]
    assert data["meta"]["options"]["backends"] == ["null", "tensorrt"]
    rows = data["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [("null", 1), ("null", 3), ("tensorrt", 1),
                                                          ("tensorrt", 3)]
    for row in rows:
        assert REQUIRED <= set(row)
    for row in rows[:2]:
        assert row["status"] == "ok" and row["precision"] == "fp32"
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_ms"] > 0
        assert row["images_per_s"] > 0 and row["crops_per_s"] == pytest.approx(2 * row["images_per_s"])
        assert row["end_to_end_images_per_s"] > 0 and row["scored"] == 8 and row["failed"] == 0
        assert row["srcc_vs_torch"] is None  # no torch reference without --checkpoint
        assert row["srcc_vs_mos"] > 0.95 and row["peak_rss_mb"] > 0
    for row in rows[2:]:
        assert row["status"].startswith("unavailable: ") and row["p50_ms"] is None
    assert "unavailable [1]" in result.stdout and "[1] unavailable: " in result.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag,value,named", [
    ("--max-p99-ms", "0.000001", "--max-p99-ms"),
    ("--min-images-per-s", "1e12", "--min-images-per-s"),
    ("--min-srcc", "0.5", "--min-srcc 0.5: null fp32 batch 2 has no SRCC vs PyTorch"),
    ("--min-srcc-mos", "1.5", "--min-srcc-mos 1.5: null fp32 batch 2 SRCC vs MOS is"),
])
def test_budgets_fail_the_command_naming_the_budget(null_dir, labelled, flag, value, named):
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "2",
                    "--warmup", "0", "--iterations", "2", flag, value)
    assert result.exit_code == 1
    assert f"budget failed: {named}" in result.stderr


def test_each_row_says_where_its_crops_were_made(null_dir, labelled):
    images = bench.images_from_folder(labelled, 4)
    auto = bench.run_benchmark(null_dir, images, backends=["null"], batches=[2], warmup=0, iterations=1)
    assert [r.preprocess for r in auto.rows] == ["cpu"]  # auto: the null backend takes host arrays
    assert "preprocess" in report.table(auto.rows).splitlines()[0]
    gpu = bench.run_benchmark(null_dir, images, backends=["null"], batches=[2], warmup=0, iterations=1,
                              preprocess="gpu")
    assert gpu.rows[0].status.startswith("failed: GPU preprocessing cannot run: the null backend")
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "2",
                    "--iterations", "1", "--warmup", "0", "--preprocess", "cpu")
    assert result.exit_code == 0 and " cpu " in result.stdout.splitlines()[1], result.output


def test_budgets_met_exit_0(null_dir, labelled):
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "2",
                    "--iterations", "2", "--max-p99-ms", "60000", "--min-images-per-s", "0.01",
                    "--min-srcc-mos", "0.9")
    assert result.exit_code == 0, result.output


def test_bench_exit_2_when_nothing_can_run(null_dir, labelled, tmp_path):
    missing = _bench("--model", tmp_path / "nowhere", "--images", labelled)
    assert missing.exit_code == 2 and "pmtiqa-export" in missing.stderr
    batch = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "1,64")
    assert batch.exit_code == 2 and "outside the model's range" in batch.stderr
    (tmp_path / "empty").mkdir()
    empty = _bench("--model", null_dir, "--images", tmp_path / "empty", "--backend", "null")
    assert empty.exit_code == 2 and "no image files" in empty.stderr


def test_no_backend_measured_fails_any_budget():
    rows = [BenchRow("tensorrt", "-", 1, status="unavailable: no GPU")]
    assert report.budget_failures(rows) == []
    assert report.budget_failures(rows, max_p99_ms=10) == [
        "no backend could be measured, so no budget can be met"]


def test_torch_rows_are_exempt_from_min_srcc():
    rows = [BenchRow("torch", "fp32", 1, p99_ms=1.0, images_per_s=5.0, srcc_vs_torch=1.0),
            BenchRow("onnxruntime", "fp16", 1, p99_ms=1.0, images_per_s=5.0, srcc_vs_torch=0.8,
                     max_abs_diff=2.0)]
    assert report.budget_failures(rows, min_srcc=0.9) == [
        "--min-srcc 0.9: onnxruntime fp16 batch 1 SRCC vs PyTorch is 0.8000"]
    assert BenchRow("x", "fp32", 1, srcc_vs_mos=math.nan).to_dict()["srcc_vs_mos"] is None


def test_peak_rss_is_measured():
    assert bench.peak_rss_mb() > 0
    if bench.reset_peak_rss():
        before = bench.peak_rss_mb()
        # Fresh anonymous pages, touched: a heap allocation could reuse memory an earlier
        # test freed but the allocator kept resident, and then RSS would not grow.
        block = mmap.mmap(-1, 64 * 2**20)
        np.frombuffer(block, np.uint8)[::4096] = 1
        assert bench.peak_rss_mb() >= before + 50
        block.close()


def test_builtin_images_come_with_pseudo_mos(tmp_path):
    pytest.importorskip("skimage", reason="the built-in dataset needs scikit-image (train extra)")
    images = bench.builtin_images(tmp_path / "builtin", limit=10, sources=["astronaut"])
    assert len(images.paths) == 10 and len(set(images.paths)) == 10
    assert all(p.is_file() and p.suffix == ".png" for p in images.paths)
    assert all(0.0 <= m <= 100.0 for m in images.mos) and len(set(images.mos)) > 5
    assert len({p.stem.split("_")[0] for p in images.paths}) >= 5  # spread over distortions


@pytest.mark.slow
def test_onnxruntime_against_torch_reference(tmp_path_factory, labelled, tmp_path):
    model_dir, checkpoint = exported_model(tmp_path_factory)
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["--model", model_dir, "--images", labelled, "--checkpoint", checkpoint, "--backend",
            "onnxruntime:fp32", "--backend", "onnxruntime:fp16", "--backend", "torch", "--batch", "1,4",
            "--warmup", "0", "--iterations", "2", "--threads", "2", "--json", out_json,
            "--plot", out_png, "--min-srcc", "0.9"]
    result = _bench(*args)
    assert result.exit_code == 0, result.output
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in json.loads(out_json.read_text())["rows"]}
    assert set(rows) == {(b, p, n) for b, p in [("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                                ("torch", "fp32")] for n in (1, 4)}
    for key, row in rows.items():
        assert row["status"] == "ok" and row["scored"] == 8
        assert row["srcc_vs_torch"] >= 0.95 and row["srcc_vs_mos"] is not None
        assert row["end_to_end_images_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert rows[("onnxruntime", "fp32", 4)]["max_abs_diff"] < 0.01
    assert rows[("onnxruntime", "fp32", 1)]["file"] == "model.onnx"
    assert rows[("onnxruntime", "fp16", 1)]["file_bytes"] < rows[("onnxruntime", "fp32", 1)]["file_bytes"]
    assert out_png.stat().st_size > 10_000
    strict = _bench(*args[:-2], "--min-srcc", "1.01")
    assert strict.exit_code == 1 and "budget failed: --min-srcc 1.01: onnxruntime" in strict.stderr
