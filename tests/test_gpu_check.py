"""benchmarks/gpu_check.py cannot arrive broken on the GPU machine: CI runs it with
--cpu-only, which executes every step that needs no GPU (package and import checks, the
collection of the GPU tests, nvcc's sm_90 build of the kernel, NVRTC, the timing model,
JPEG files, CPU decoding, scoring through the Scorer) and reports each GPU step as
skipped with its reason. The GPU steps run only on a GPU (benchmarks/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["environment", "pytest_gpu", "native_kernel", "torch_model", "preprocess_kernel", "end_to_end"]
# Steps that must run (status ok) without a GPU, per section.
CPU_STEPS = {"environment": {"packages", "machine", "runtime_imports"}, "pytest_gpu": {"collect"},
             "native_kernel": {"nvcc_sm90_cubin"}, "torch_model": {"build_model"},
             "preprocess_kernel": {"nvrtc_compile"},
             "end_to_end": {"write_jpegs", "cpu_decode_rate", "scoring"}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    pytest.importorskip("torch", reason="the train extra (torch) builds the timing model")
    pytest.importorskip("cuda.bindings", reason="cuda-python (NVRTC) is not installed")
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-only", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr + (out / "gpu_check.log").read_text()[-6000:]
    return json.loads((out / "gpu_check.json").read_text()), done.stdout


def test_every_section_ran_and_none_failed(report):
    data, printed = report
    assert data["mode"] == "cpu-only"
    assert list(data["sections"]) == SECTIONS
    for name, section in data["sections"].items():
        assert section["status"] in ("ok", "partial", "skipped"), (name, section)
        assert all(step["status"] in ("ok", "skipped") for step in section["steps"]), (name, section)
    assert "gpu_check (cpu-only)" in printed and "targets:" in printed


def test_what_needs_no_gpu_ran(report):
    data, _ = report
    for name, wanted in CPU_STEPS.items():
        if name == "native_kernel" and shutil.which("nvcc") is None:
            wanted = set()  # no nvcc here (CI has one): that step skips with the reason
        ran = {s["step"] for s in data["sections"][name]["steps"] if s["status"] == "ok"}
        assert wanted <= ran, (name, data["sections"][name]["steps"])
    scoring = next(s for s in data["sections"]["end_to_end"]["steps"] if s["step"] == "scoring")["results"]
    assert scoring["preprocess_cpu_decode_cpu"]["failed"] == 0
    assert scoring["preprocess_auto_decode_cpu"]["reason"].startswith("auto: the torch backend takes host")
    assert scoring["max_abs_score_diff_auto_cpu_vs_cpu"] == 0.0
    assert data["sections"]["pytest_gpu"]["steps"][0]["results"]["gpu_tests"] > 0


def test_gpu_steps_are_skipped_with_the_reason(report):
    data, _ = report
    skipped = [s for section in data["sections"].values() for s in section["steps"] if s["status"] == "skipped"]
    names = {s["step"] for s in skipped}
    assert {"gpu", "run", "cubin_equals_reference", "cmake_kernel_check", "gemm_rate", "model_rows",
            "kernel_throughput", "gpu_decode_rate", "gpu_decoder_without_gpu"} <= names
    for step in skipped:
        assert "GPU" in step["reason"] or "nvcc" in step["reason"], step
    refused = next(s for s in skipped if s["step"] == "gpu_decoder_without_gpu")
    assert "no usable CUDA device" in refused["reason"] or "nvImageCodec" in refused["reason"]
