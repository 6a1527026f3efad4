"""Parity: FP32 ONNX reproduces PyTorch to 1e-3 MOS points with SRCC >= 0.9999, the report
and its table, and the judging rules."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("skimage", reason="scikit-image (train extra) is not installed")

from pmtiqa_deploy.agreement import agreement  # noqa: E402
from pmtiqa_deploy.errors import DatasetError  # noqa: E402
from pmtiqa_deploy.export.parity import (  # noqa: E402
    TOLERANCES, batched_scores, builtin_test_images, image_files, judge, load_crops, onnxruntime_runner,
    torch_scores)
from pmtiqa_deploy.train.checkpoint import load_checkpoint  # noqa: E402


def test_fp32_graph_reproduces_pytorch_on_real_images(exported, checkpoint, photos):
    """Independent of the export's own report: ONNX Runtime on model.onnx vs the model."""
    model, _ = load_checkpoint(checkpoint)
    spec = exported.spec
    crops = load_crops(image_files(photos), spec)
    reference = torch_scores(model, crops, spec)
    scores = batched_scores(onnxruntime_runner(exported.directory / "model.onnx", 2), crops, spec)
    result = agreement(scores, reference)
    print(f"FP32 ONNX vs PyTorch FP32: {result}")
    assert result.max_abs_diff <= 1e-3 * (spec.score.max - spec.score.min) / 100
    assert result.srcc >= 0.9999
    assert len(scores) == len(image_files(photos)) == 18


def test_export_reports_parity_per_backend(exported):
    report = json.loads((exported.directory / "parity.json").read_text())
    assert report["passed"] is True and report["count"] == 18
    assert report["reference"] == "pytorch-fp32"
    by_name = {b["backend"]: b for b in report["backends"]}
    assert set(by_name) == {"onnxruntime-fp32", "onnxruntime-fp16"}
    fp32, fp16 = by_name["onnxruntime-fp32"], by_name["onnxruntime-fp16"]
    assert fp32["max_abs_diff"] <= 1e-3 and fp32["srcc"] >= 0.9999 and fp32["artifact"] == "model.onnx"
    assert fp16["srcc"] >= 0.999 and fp16["min_srcc"] == 0.999
    for entry in by_name.values():
        assert {"plcc", "krcc", "count", "max_abs_allowed", "scores"} <= set(entry)
        assert len(entry["scores"]) == 18
    table = exported.parity.table()
    assert "onnxruntime-fp32" in table and "onnxruntime-fp16" in table and "FAIL" not in table


def test_batches_respect_the_batch_range(exported, photos):
    spec = exported.spec
    crops = load_crops(image_files(photos)[:11], spec)
    seen = []

    def run(images):
        seen.append(images.shape[0])
        return np.arange(images.shape[0], dtype=np.float32)

    scores = batched_scores(run, crops, spec)
    assert len(scores) == 11
    assert seen == [8, 3] and all(spec.input.batch_min <= b <= spec.input.batch_max for b in seen)


def test_judge_applies_each_backends_tolerance():
    reference = np.linspace(10, 90, 20)
    ok = judge("onnxruntime-fp32", "model.onnx", reference + 5e-4, reference, (0.0, 100.0))
    assert ok.passed
    drift = judge("onnxruntime-fp32", "model.onnx", reference + 5e-3, reference, (0.0, 100.0))
    assert not drift.passed and drift.agreement.srcc == 1.0  # ranks alone would miss it
    # The max-abs bound scales with the score range: 5e-3 on a 0..1000 scale is fine.
    assert judge("onnxruntime-fp32", "model.onnx", reference + 5e-3, reference, (0.0, 1000.0)).passed
    swapped = reference.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert not judge("onnxruntime-fp16", "model.fp16.onnx", swapped, reference, (0.0, 100.0)).passed
    offset = judge("onnxruntime-fp16", "model.fp16.onnx", reference + 2.0, reference, (0.0, 100.0))
    assert not offset.passed  # a normalisation bug shifts scores without touching ranks


def test_constant_scores_fail_parity_rather_than_pass_vacuously():
    reference = np.linspace(10, 90, 5)
    result = judge("onnxruntime-fp16", "model.fp16.onnx", np.full(5, 50.0), reference, (0.0, 100.0))
    assert math.isnan(result.agreement.srcc) and not result.passed


def test_every_artifact_kind_has_the_tolerance_its_docstring_documents():
    """The table in export/parity.py's docstring is what users read; TOLERANCES is what
    runs. Every kind of artifact an export can write must be in both, with the same values."""
    from pmtiqa_deploy.export import parity
    from pmtiqa_deploy.spec import PRECISIONS

    documented = {}
    for line in parity.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        pattern = r"(ONNX|TensorRT engine) \(?(FP32|FP16|INT8)\)?.*"
        found = re.fullmatch(pattern, cells[0]) if len(cells) == 3 else None
        if found:
            backend = "onnxruntime" if found.group(1) == "ONNX" else "tensorrt"
            documented[f"{backend}-{found.group(2).lower()}"] = (
                float(cells[1]), float(re.findall(r"[0-9.]+", cells[2])[-1]))
    wanted = {f"{backend}-{precision}" for backend in ("onnxruntime", "tensorrt") for precision in PRECISIONS}
    assert set(TOLERANCES) == wanted and set(documented) == wanted
    for name, tolerance in TOLERANCES.items():
        assert documented[name] == (tolerance.max_abs_per_100, tolerance.min_srcc), name


def test_parity_image_folder_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        image_files(tmp_path / "nowhere")
    (tmp_path / "one.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="at least 2"):
        image_files(tmp_path)


def test_parity_limit_takes_the_first_images_by_name(photos):
    files = image_files(photos, limit=4)
    assert [f.name for f in files] == sorted(f.name for f in image_files(photos))[:4]


@pytest.mark.slow
def test_builtin_test_split_is_the_default_parity_set(builtin_dir):
    files = builtin_test_images(builtin_dir, limit=None, progress=False)
    assert len(files) >= 2 and all(f.is_file() for f in files)
    assert builtin_test_images(builtin_dir, limit=3, progress=False) == files[:3]
    from pmtiqa_deploy.train import datasets

    dataset = datasets.load_dataset("builtin", builtin_dir)
    train, test = datasets.content_split(list(dataset.items), test_fraction=0.2, seed=0)
    assert files == sorted(item.path for item in test)
    reference = str(dataset.items[0].reference)  # a checkpoint's own test references win
    chosen = builtin_test_images(builtin_dir, progress=False, references=[reference])
    assert chosen == sorted(i.path for i in dataset.items if str(i.reference) == reference)
