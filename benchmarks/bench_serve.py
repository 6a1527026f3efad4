"""Serving benchmark: images/s and latency of the two servers, at 1, 4 and 16 concurrent
clients, against the in-process `Scorer` on the same model, files and machine, in one run.

    python benchmarks/bench_serve.py [--images DIR | --builtin] [--timing-model resnet18]
        [--triton-python .venv-triton/bin/python] [--json benchmarks/bench_serve.json]

- in-process: `Scorer.score_files` (ONNX Runtime FP32, decode overlapped with inference),
  measured before and after the servers (the machine is shared; both are reported and
  the ratios use their mean);
- tritonserver (nvidia-pytriton's, Python backend only) over the repository
  `pmtiqa-export --triton-repo --triton-network python` writes: the shipped preprocessing,
  aggregation and ensemble, the network the CPU/test variant (the runtime's Scorer on ONNX
  Runtime FP32 inside Triton's Python backend);
- pmtiqa-serve (PyTriton) on the same model directory.
Each server row is `pmtiqa-bench --server`'s measurement (pmtiqa_deploy.triton.bench):
N clients send requests of one image file back to back, `--requests` timed requests in
all; the files are read once, so what is timed is the request, the server's decode and
preprocessing, inference and the answer. Client and server share the machine's cores.

Target (CPU): served images/s at concurrency 4 at least 0.7x in-process images/s.
The model is bench_cpu.py's timing model (an untrained PMT-IQA of that backbone with
BatchNorm statistics from the images: a trained model's speed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_cpu import timing_model

from pmtiqa_deploy import bench
from pmtiqa_deploy.export.triton import RepositoryOptions, write_repository
from pmtiqa_deploy.score import Scorer
from pmtiqa_deploy.spec import atomic_write_bytes
from pmtiqa_deploy.triton import server as servers
from pmtiqa_deploy.triton.bench import LoadRow, measure
from pmtiqa_deploy.triton.client import ServerScorer

TARGET, CONCURRENCY = 0.7, (1, 4, 16)
REPO = Path(__file__).resolve().parents[1]


def in_process(model_dir: Path, paths: list[Path], rounds: int) -> float:
    """Images/s of Scorer.score_files over `paths` repeated `rounds` times, after one warm-up pass."""
    with Scorer.open(model_dir, "onnxruntime") as scorer:
        list(scorer.score_files(paths[:scorer.batch_size]))
        began = time.perf_counter()
        rows = list(scorer.score_files(paths * rounds))
        elapsed = time.perf_counter() - began
    assert all(row.error is None for row in rows), [row for row in rows if row.error][:3]
    return len(rows) / elapsed


def served(process: servers.ServerProcess, images: list[bytes], requests: int) -> list[LoadRow]:
    rows = []
    with process:
        process.start(timeout=300)
        with ServerScorer.open(process.url, concurrency=max(CONCURRENCY)) as client:
            for concurrency in CONCURRENCY:
                print(f"{process.what}: {concurrency} client(s)", file=sys.stderr)
                rows.append(measure(client, images, concurrency=concurrency, batch=1, warmup=2,
                                    iterations=math.ceil(requests / concurrency), time_limit=600))
    return rows


def cpu_flags() -> list[str]:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return sorted(flags & {"avx2", "avx512f", "avx512_vnni"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images")
    source.add_argument("--builtin", action="store_true", help="the built-in dataset")
    parser.add_argument("--limit", type=int, default=16, help="distinct image files")
    parser.add_argument("--timing-model", default="resnet18", metavar="BACKBONE")
    parser.add_argument("--crops", type=int, default=9, help="crops per image of the timing model")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pmtiqa-bench-serve"))
    parser.add_argument("--requests", type=int, default=32, help="timed requests per row")
    parser.add_argument("--rounds", type=int, default=2, help="in-process passes over the images")
    parser.add_argument("--triton-python", type=Path, default=REPO / ".venv-triton" / "bin" / "python",
                        help="Python of the server-side environment (scripts/triton_env.sh)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_serve.json"))
    args = parser.parse_args(argv)

    found = bench.builtin_images(limit=args.limit) if args.builtin else bench.images_from_folder(args.images, args.limit)
    paths = list(found.paths)
    install = servers.TritonInstall.find(args.triton_python)
    model_dir, _ = timing_model(args.timing_model, paths, args.workdir, args.crops)
    repository = write_repository(model_dir, args.workdir / "repository", RepositoryOptions(network="python"))
    images = [path.read_bytes() for path in paths]
    load_before = os.getloadavg()

    before = in_process(model_dir, paths, args.rounds)
    rows = {"tritonserver": served(servers.tritonserver(install, repository, args.workdir / "triton"),
                                   images, args.requests),
            "pmtiqa-serve": served(servers.pmtiqa_serve(install, model_dir, args.workdir / "serve"),
                                   images, args.requests)}
    after = in_process(model_dir, paths, args.rounds)
    local = (before + after) / 2

    lines = [f"in-process Scorer: {before:.2f} images/s before, {after:.2f} after (mean {local:.2f})",
             "server        clients  images/s  vs in-process  p50 ms  p99 ms  status"]
    for name, measured in rows.items():
        for r in measured:
            lines.append(f"{name:<13} {r.concurrency:>7}  {r.images_per_s or 0:8.2f}  "
                         f"{(r.images_per_s or 0) / local:12.2f}x  {r.p50_ms or 0:6.0f}  {r.p99_ms or 0:6.0f}  {r.status}")
    print("\n".join(lines))
    verdicts = {name: (next(r for r in measured if r.concurrency == 4).images_per_s or 0) / local
                for name, measured in rows.items()}
    for name, value in verdicts.items():
        print(f"{name} at concurrency 4: {value:.2f}x in-process ({'meets' if value >= TARGET else 'misses'} "
              f"the {TARGET}x target)")
    data = {"meta": {"command": shlex.join([sys.executable, *sys.argv]), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                     "cpu_flags": cpu_flags(), "load_average_before": load_before,
                     "load_average_after": os.getloadavg(), "images": found.source, "image_count": len(paths),
                     "model": f"{args.timing_model}, {args.crops} crops, ONNX Runtime FP32",
                     "nvidia_pytriton": subprocess.run(
                         [str(install.python), "-c", "from importlib.metadata import version; "
                          "print(version('nvidia-pytriton'))"], capture_output=True, text=True).stdout.strip()},
            "in_process_images_per_s": {"before": before, "after": after, "mean": local},
            "rows": {name: [r.to_dict() for r in measured] for name, measured in rows.items()},
            "concurrency_4_vs_in_process": verdicts}
    atomic_write_bytes(args.json, (json.dumps(data, indent=2) + "\n").encode())
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
