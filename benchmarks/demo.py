"""The main job, README's first command: the whole flow on the built-in dataset.

    python benchmarks/demo.py [--cache DIR] [--retrain] [--reexport] [--batch 1,8] [--limit 32]

1. build the built-in dataset (pmtiqa-data make-builtin; cached),
2. train the default model on it (pmtiqa-train --dataset builtin, the `demo` preset;
   cached: a finished run is reused, an interrupted one resumed),
3. export it (pmtiqa-export: ONNX FP32, ONNX FP16, a TensorRT engine where TensorRT's
   builder and a GPU exist, model.json, and the parity check against PyTorch; cached
   while the checkpoint's hash matches the one model.json records),
4. benchmark every backend this machine has against the PyTorch reference
   (pmtiqa-bench; always run) and print its table.

Each step is the real console command in a subprocess, printed before it runs, so the
output doubles as a tutorial. Everything lives under the cache folder ($PMTIQA_CACHE,
else ~/.cache/pmtiqa-deploy): the dataset in builtin-v<version>-seed0/ and the rest in
demo/builtin-v<version>-seed0/{run,model,bench.json}, so a new version of the built-in
dataset trains a new model instead of reusing one trained on the old data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Exit codes of pmtiqa-export that leave a usable ONNX export (3: no TensorRT here).
EXPORT_OK = (0, 3)


def tool(name: str) -> str:
    """The console script installed beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} is not installed; run: pip install -e '.[export,bench]'")
    return found


def run(step: str, command: list[str], ok: tuple[int, ...] = (0,)) -> int:
    print(f"\n== {step}\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    code = subprocess.call(command)
    print(f"-- {step}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
    if code not in ok:
        sys.exit(f"demo stopped: {step} failed (exit {code}); the command above shows why")
    return code


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_is_current(model: Path, checkpoint: Path) -> bool:
    """model.json and parity.json exist and record the checkpoint's current weights."""
    spec, parity = model / "model.json", model / "parity.json"
    if not (spec.is_file() and parity.is_file()):
        return False
    try:
        recorded = json.loads(spec.read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return False
    return recorded == sha256(checkpoint / "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Cache folder [$PMTIQA_CACHE or ~/.cache/pmtiqa-deploy]")
    parser.add_argument("--retrain", action="store_true", help="Train again even if a finished run is cached.")
    parser.add_argument("--reexport", action="store_true", help="Export again even if the export is current.")
    parser.add_argument("--batch", default="1,8", help="Batch sizes for the benchmark [1,8].")
    parser.add_argument("--limit", type=int, default=32, help="Benchmark images from the built-in test photos [32].")
    parser.add_argument("--iterations", type=int, default=10, help="Timed batches per backend and batch size [10].")
    args = parser.parse_args()

    from pmtiqa_deploy.train.builtin import default_dir  # numpy and OpenCV only, no torch

    root = args.cache or default_dir(seed=0).parent
    os.environ["PMTIQA_CACHE"] = str(root)  # the tools' default folders follow it
    data = default_dir(seed=0)
    demo = root / "demo" / data.name
    run_dir, model, bench_json = demo / "run", demo / "model", demo / "bench.json"
    started = time.perf_counter()

    run("1/4 built-in dataset", [tool("pmtiqa-data"), "make-builtin", "--out", str(data)])

    checkpoint = run_dir / "checkpoint"
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "summary.json").is_file() and (checkpoint / "model.safetensors").is_file():
        print(f"\n== 2/4 training: cached ({run_dir}; --retrain to train again)")
    else:
        command = [tool("pmtiqa-train"), "--dataset", "builtin", "--root", str(data), "--out", str(run_dir)]
        if (run_dir / "run.json").is_file():
            command.append("--resume")
        run("2/4 training (preset demo)", command)
    summary = json.loads((run_dir / "summary.json").read_text())

    if args.reexport or not export_is_current(model, checkpoint):
        run("3/4 export + parity", [tool("pmtiqa-export"), str(checkpoint), "--output", str(model),
                                    "--builtin-dir", str(data)], ok=EXPORT_OK)
    else:
        print(f"\n== 3/4 export: cached ({model}; --reexport to export again)")

    code = run("4/4 benchmark", [tool("pmtiqa-bench"), "--model", str(model), "--checkpoint", str(checkpoint),
                                 "--builtin", "--builtin-dir", str(data), "--limit", str(args.limit),
                                 "--batch", args.batch, "--iterations", str(args.iterations),
                                 "--json", str(bench_json)], ok=(0, 1))

    median = summary["median"]
    print(f"\nmodel: test SRCC {median['srcc']:.4f}, PLCC {median['plcc']:.4f} on held-out built-in "
          f"photos; exported to {model}; benchmark rows in {bench_json}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
