"""The training demo, timed: `pmtiqa-train --dataset builtin` (the demo preset: ResNet-18
from scratch on the built-in dataset) once with the progressive schedule and once with the
fixed-weight ablation, same seed, and a table of wall time and validation/test agreement.

    python benchmarks/train_demo.py [--out DIR] [--seed 0] [--json PATH] [-- extra pmtiqa-train options]

Each run is the real command line in a subprocess, so the wall time is what a user waits
(interpreter start, dataset check, training, testing, writing). The built-in dataset is
built once first (in $PMTIQA_CACHE or ~/.cache/pmtiqa-deploy) and not timed. Shared
machines make wall times pessimistic: the JSON records the torch thread count, the CPU
count and the load average next to every figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEDULES = ("progressive", "fixed")


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "platform": platform.platform()}


def run_demo(schedule: str, out: Path, seed: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "pmtiqa_deploy.train.cli", "--dataset", "builtin", "--out", str(out),
               "--schedule", schedule, "--seed", str(seed), *extra]
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    first = summary["rounds"][0]
    return {"schedule": schedule, "epochs": summary["config"]["epochs"], "wall_seconds": wall,
            "train_seconds": sum(r["train_seconds"] for r in summary["rounds"]),
            "best_epoch": first["best_epoch"], "val_srcc": first["val"]["srcc"],
            "test": summary["median"], "test_images": first["test"]["count"],
            "config": summary["config"], "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "command": " ".join(command)}


def table(rows: list[dict]) -> str:
    head = f"{'schedule':<12} {'epochs':>6} {'wall s':>8} {'val SRCC':>9} {'test SRCC':>10} {'PLCC':>7} {'KRCC':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r["test"]
        lines.append(f"{r['schedule']:<12} {r['epochs']:>6} {r['wall_seconds']:>8.0f} {r['val_srcc']:>9.4f} "
                     f"{t['srcc']:>10.4f} {t['plcc']:>7.4f} {t['krcc']:>7.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    parser.add_argument("--json", type=Path, help="write the results here (default: OUT/train_demo.json)")
    parser.add_argument("extra", nargs="*", help="more pmtiqa-train options, after --")
    args = parser.parse_args()

    from pmtiqa_deploy.train.builtin import default_dir, make_builtin

    make_builtin(default_dir(), progress=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="pmtiqa-train-demo-"))
    rows = []
    for schedule in args.schedules:
        folder = out / schedule
        if folder.exists():
            shutil.rmtree(folder)
        rows.append(run_demo(schedule, folder, args.seed, args.extra))
        print(table(rows[-1:]), flush=True)
    report = {"benchmark": "train_demo", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": machine(), "seed": args.seed, "runs": rows,
              "note": "wall times on a shared machine are pessimistic; see load averages"}
    path = args.json or out / "train_demo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\ntorch threads {report['machine']['torch_threads']}, {report['machine']['cpu_count']} CPUs; "
          f"results: {path}")


if __name__ == "__main__":
    main()
