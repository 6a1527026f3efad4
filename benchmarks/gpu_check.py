"""The GPU half in one prepared run: correctness and speed on a machine with an NVIDIA GPU.

Written for the H200 this project is lent at times (Python 3.12, torch 2.11 with CUDA 13,
CuPy, cuda-bindings, ONNX Runtime CPU, nvcc 13.0, no TensorRT, no package registry; the
missing wheels travel in .whl/, see benchmarks/README.md for the one `run` call), and for
any CUDA machine with this project installed. Sections, each in its own process with its
own time budget, so a crash, a hang or a failure is recorded and the rest go on:

- environment: GPU, driver, nvcc, packages, CPU, load;
- pytest_gpu: `pytest -m gpu` over tests/runtime and tests/native;
- native_kernel: the kernel built by this machine's nvcc for sm_90 (cubin, register use),
  its crops against the CPU reference bit for bit, and the C++ kernel check through CMake
  where OpenCV's C++ files exist;
- torch_model: the FP16 and FP32 GEMM rate, then PyTorch CUDA FP32/FP16, eager and CUDA
  graphs, batch 1/8/64, through the runtime's torch backend fed on the device, each row as
  images/s and as a fraction of the GEMM rate of its precision (ResNet-50: 8.2 GFLOP a
  224-pixel crop);
- preprocess_kernel: the kernel's crops/s on 640x480 images, resized and not;
- end_to_end: JPEG decoding on CPU threads and on the GPU (nvImageCodec; its pixels against
  OpenCV's), and scoring from JPEG files through the Scorer with CPU preprocessing, GPU
  preprocessing, and GPU decoding too, against model-only on the same backend.

Each section is a list of steps; a step that needs a GPU is skipped, with the reason, where
there is none (and always under --cpu-only, which CI runs so the script cannot arrive
broken). The JSON (gpu_check.json under --out, default $OUT) holds every step's status,
reason, seconds and results, the machine, and the targets of issue 14 computed from the
figures (recorded, not asserted). A short table is printed last.

    python3 benchmarks/gpu_check.py --out DIR [--cpu-only] [--sections a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_sections  # noqa: E402  (the sections' bodies, beside this script)

# Seconds each section may take: under seven minutes in all, inside the 8 minutes a run on
# the GPU machine is given, machine start and wheel install aside. --cpu-only triples them:
# its GPU steps do not run, and a shared 2-core CPU machine is slow to import torch.
BUDGETS = {"environment": 40, "pytest_gpu": 90, "native_kernel": 80, "torch_model": 90,
           "preprocess_kernel": 30, "end_to_end": 80}
CPU_ONLY_SCALE = 3


class Steps:
    """Runs a section's steps, each recorded as ok / skipped (with the reason) / failed
    (with the error), so one broken step never hides the others."""

    def __init__(self, gpu_reason: str | None):
        self.gpu_reason = gpu_reason  # None: a CUDA device is usable
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, body: Callable[[], Any], needs_gpu: bool = False) -> Any:
        record: dict[str, Any] = {"step": name}
        self.records.append(record)
        if needs_gpu and self.gpu_reason is not None:
            record.update(status="skipped", reason=self.gpu_reason)
            return None
        start = time.perf_counter()
        try:
            result = body()
        except gpu_sections.Skip as skip:
            record.update(status="skipped", reason=str(skip))
            return None
        except Exception as exc:  # recorded: the point is to keep going and report
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc()[-3000:])
            return None
        finally:
            record["seconds"] = round(time.perf_counter() - start, 3)
        record.update(status="ok", results=result)
        return result


def gpu_unavailable(cpu_only: bool) -> str | None:
    """Why GPU steps cannot run here, or None."""
    if cpu_only:
        return "CPU-only mode (--cpu-only): needs a CUDA GPU"
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        return f"cuda-python is not installed ({exc}); needs a CUDA GPU"
    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        return f"no CUDA GPU here (cudaGetDeviceCount: {err.name})"
    return None


def run_section(name: str, out: Path, cpu_only: bool) -> None:
    """Child process: run one section, write its steps as JSON to `out`."""
    steps = Steps(gpu_unavailable(cpu_only))
    work = Path(tempfile.mkdtemp(prefix=f"gpu_check_{name}_"))
    getattr(gpu_sections, name)(steps, work, cpu_only)
    out.write_text(json.dumps({"steps": steps.records}, indent=1, default=str))


def section_status(steps: list[dict[str, Any]]) -> str:
    statuses = {s["status"] for s in steps}
    if "failed" in statuses:
        return "failed"
    if statuses == {"ok"}:
        return "ok"
    return "skipped" if statuses == {"skipped"} else "partial"


def run_all(sections: list[str], out_dir: Path, cpu_only: bool, log) -> dict[str, Any]:
    budgets = {s: BUDGETS[s] * (CPU_ONLY_SCALE if cpu_only else 1) for s in sections}
    deadline = time.monotonic() + sum(budgets.values()) + 30
    report: dict[str, Any] = {"mode": "cpu-only" if cpu_only else "gpu",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                              "sections": {}}
    for name in sections:
        budget = min(budgets[name], max(0, int(deadline - time.monotonic()) - 5))
        entry: dict[str, Any] = {"budget_s": budgets[name]}
        report["sections"][name] = entry
        if budget < 5:
            entry.update(status="skipped", reason="the run's overall deadline was reached", steps=[])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "steps.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--section", name,
                       "--section-out", str(result_file)] + (["--cpu-only"] if cpu_only else [])
            start = time.perf_counter()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=budget,
                                      cwd=REPO, start_new_session=True)
                output, code = done.stdout + done.stderr, done.returncode
            except subprocess.TimeoutExpired as exc:
                output = _text(exc.stdout) + _text(exc.stderr)
                code = None
            entry["seconds"] = round(time.perf_counter() - start, 1)
            log(f"===== {name} ({entry['seconds']} s, exit {code})\n{output}\n")
            steps = json.loads(result_file.read_text())["steps"] if result_file.is_file() else []
        entry["steps"] = steps
        if code is None:
            entry.update(status="failed", reason=f"exceeded its budget of {budget} s")
        elif code != 0 and not steps:
            entry.update(status="failed", reason=f"the section's process exited {code}: {output[-800:]}")
        else:
            entry["status"] = section_status(steps)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["targets"] = gpu_sections.targets(report["sections"])
    return report


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def table(report: dict[str, Any]) -> str:
    lines = [f"gpu_check ({report['mode']}): {report['started']} .. {report['finished']}",
             f"{'section':<18} {'status':<8} {'s':>6}  steps"]
    for name, entry in report["sections"].items():
        steps = ", ".join(f"{s['step']}:{s['status']}" for s in entry.get("steps", []))
        lines.append(f"{name:<18} {entry['status']:<8} {entry.get('seconds', 0):>6}  {steps}")
    lines.append("targets:")
    for key, value in report["targets"].items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")),
                        help="Folder for gpu_check.json and gpu_check.log [$OUT, else ./gpu_check_out].")
    parser.add_argument("--cpu-only", action="store_true",
                        help="Run only what needs no GPU; report the GPU steps as skipped (CI).")
    parser.add_argument("--sections", default=",".join(BUDGETS),
                        help=f"Comma-separated subset of {', '.join(BUDGETS)}.")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        run_section(args.section, args.section_out, args.cpu_only)
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(BUDGETS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(BUDGETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_check.log", "w", encoding="utf-8") as log_file:
        def log(text: str) -> None:
            log_file.write(text)
            log_file.flush()
        report = run_all(sections, args.out, args.cpu_only, log)
    report["machine"] = {"python": platform.python_version(), "platform": platform.platform(),
                         "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(table(report))
    return 1 if any(e["status"] == "failed" for e in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
