"""The benchmark: JSON rows with the documented keys and sane values, unavailable
backends as rows (not crashes), budgets that fail the command naming the flag, the plot,
MOS labels from a manifest, the built-in dataset, interleaved rounds with their spread,
the thread sweep, the GEMM ceiling and FLOP count, the reference row, the image-count
sweep; on the null backend everywhere and on a real exported model (ONNX Runtime
FP32/FP16 against the torch reference) where the export extra is installed."""

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
                    "--batch", "1,3", "--warmup", "1", "--iterations", "4", "--rounds", "2",
                    "--threads", "1", "--no-ceiling", "--json", out_json, "--plot", out_png)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "benchmark: 100% 2/2" in result.stderr  # thread x batch groups
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
        assert row["status"] == "ok" and row["precision"] == "fp32" and row["threads"] == 1
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["mean_ms"] > 0 and row["rounds"] == 2
        assert row["images_per_s_min"] <= row["images_per_s"] <= row["images_per_s_max"]
        assert row["ceiling_fraction"] is None and row["reference"] is False
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
    ("--min-srcc", "0.5", "--min-srcc 0.5: null fp32 threads 2 batch 2 has no SRCC vs PyTorch"),
    ("--min-srcc-mos", "1.5", "--min-srcc-mos 1.5: null fp32 threads 2 batch 2 SRCC vs MOS is"),
])
def test_budgets_fail_the_command_naming_the_budget(null_dir, labelled, flag, value, named):
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "2",
                    "--threads", "2", "--warmup", "0", "--iterations", "2", "--no-ceiling", flag, value)
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
                    "--iterations", "2", "--no-ceiling", "--max-p99-ms", "60000", "--min-images-per-s", "0.01",
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


def test_reference_rows_are_exempt_from_min_srcc_and_say_reference():
    rows = [BenchRow("torch", "fp32", 1, reference=True, p99_ms=1.0, images_per_s=5.0),
            BenchRow("onnxruntime", "fp16", 1, p99_ms=1.0, images_per_s=5.0, srcc_vs_torch=0.8,
                     max_abs_diff=2.0)]
    assert report.budget_failures(rows, min_srcc=0.9) == [
        "--min-srcc 0.9: onnxruntime fp16 batch 1 SRCC vs PyTorch is 0.8000"]
    assert BenchRow("x", "fp32", 1, srcc_vs_mos=math.nan).to_dict()["srcc_vs_mos"] is None
    printed = report.table(rows).splitlines()
    assert "reference" in printed[1] and "0.8000" in printed[2]
    markdown = report.table(rows, markdown=True).splitlines()
    assert markdown[1].startswith("|---|") and markdown[2].count("|") == len(report.TABLE_COLUMNS) + 1


def test_thread_sweep_ceiling_and_flops(null_dir, labelled, tmp_path):
    """Each thread count is its own set of rows with its own GEMM ceiling from the same
    rounds; the null model has no ONNX graph, so its FLOPs (and fractions) are absent."""
    out_json = tmp_path / "bench.json"
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "2",
                    "--threads", "2,1", "--warmup", "0", "--iterations", "2", "--rounds", "2",
                    "--json", out_json)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert [r["threads"] for r in data["rows"]] == [2, 1]
    ceilings = data["meta"]["ceilings"]
    assert [(c["threads"], c["batch"]) for c in ceilings] == [(2, 2), (1, 2)]
    for entry in ceilings:
        assert entry["gflops"] == max(entry.get("numpy_gflops", 0), entry.get("onnxruntime_gflops", 0)) > 0.5
    assert data["meta"]["gflop_per_crop"] is None and data["rows"][0]["ceiling_fraction"] is None
    assert data["meta"]["cpu_model"] and data["meta"]["load_average_after"]


def test_flops_are_counted_from_the_graph(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
    from onnx import TensorProto, helper, numpy_helper

    from pmtiqa_deploy.ceiling import flops_per_crop

    weights = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    dense = numpy_helper.from_array(np.ones((8 * 4 * 4, 5), np.float32), "d")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["crops"]),
         helper.make_node("Conv", ["crops", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["y"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2, 3, 4, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 5])],
        [weights, dense, numpy_helper.from_array(np.array([-1, 3, 4, 4], np.int64), "s")])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    conv = 2 * (8 * 4 * 4) * (3 * 3 * 3)
    assert flops_per_crop(path, crops=2) == conv + 2 * (8 * 4 * 4) * 5


def test_count_sweep_keeps_memory_flat(null_dir, labelled, tmp_path):
    out_json = tmp_path / "bench.json"
    result = _bench("--model", null_dir, "--images", labelled, "--backend", "null", "--batch", "4",
                    "--threads", "1", "--iterations", "1", "--no-ceiling", "--counts", "40,400",
                    "--json", out_json)
    assert result.exit_code == 0, result.output
    points = json.loads(out_json.read_text())["counts"]
    assert [p["images"] for p in points] == [40, 400] and all(p["failed"] == 0 for p in points)
    assert all(p["ms_per_image"] > 0 for p in points)
    # 400 images hold no more memory than 40 (allowing allocator noise), not ten times as much
    assert points[1]["peak_rss_mb"] < points[0]["peak_rss_mb"] + 50
    assert "ms/image" in result.stdout


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
            "--warmup", "0", "--iterations", "2", "--rounds", "2", "--threads", "2", "--json", out_json,
            "--plot", out_png, "--min-srcc", "0.9"]
    result = _bench(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {(b, p, n) for b, p in [("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                                ("torch", "fp32")] for n in (1, 4)}
    for key, row in rows.items():
        assert row["status"] == "ok" and row["scored"] == 8
        assert row["srcc_vs_mos"] is not None and row["reference"] == (key[0] == "torch")
        assert row["srcc_vs_torch"] is None if key[0] == "torch" else row["srcc_vs_torch"] >= 0.95
        assert 0 < row["ceiling_fraction"] < 5 and row["gflop_per_crop"] == data["meta"]["gflop_per_crop"]
        assert row["end_to_end_images_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert rows[("onnxruntime", "fp32", 4)]["max_abs_diff"] < 0.01
    assert rows[("onnxruntime", "fp32", 1)]["file"] == "model.onnx"
    assert rows[("onnxruntime", "fp16", 1)]["file_bytes"] < rows[("onnxruntime", "fp32", 1)]["file_bytes"]
    assert out_png.stat().st_size > 10_000
    strict = _bench(*args[:-2], "--min-srcc", "1.01")
    assert strict.exit_code == 1 and "budget failed: --min-srcc 1.01: onnxruntime" in strict.stderr
