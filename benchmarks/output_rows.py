"""What writing rows through `pmtiqa_deploy.output` costs at volume, with no model: N
synthetic rows written the old way (one stream, `RowWriter`) and the atomic way
(`ResultFile`: SQLite partial committed each batch, then the ordered export and rename),
then a resume over the finished file with nothing left to score (every input claims its
row). Rows/s for each phase and the peak resident memory, so the overhead of atomic,
resumable output can be put beside a scorer's images/s (it must be far above it).

    python benchmarks/output_rows.py [--rows 1000000] [--batch 32] [--format csv]
        [--workdir /tmp/output-bench] [--json benchmarks/output_rows.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import time
from pathlib import Path

from pmtiqa_deploy.output import RowWriter, open_output


def _paths(count: int) -> list[str]:
    return [f"/data/photos/{i // 1000:04d}/IMG_{i:08d}.jpg" for i in range(count)]


def _row(path: str, i: int) -> dict:
    if i % 97 == 0:
        return {"path": path, "score": None, "level": None, "error": "not a readable image"}
    return {"path": path, "score": 10.0 + (i % 8000) / 100, "level": (i % 8000) // 1000, "error": None}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=32, help="rows per commit (the scorer's batch)")
    parser.add_argument("--format", default="csv", choices=["csv", "jsonl", "json", "parquet"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/output-bench"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/output_rows.json"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    paths = _paths(args.rows)
    load_before = os.getloadavg()
    timings: dict[str, float] = {}

    started = time.perf_counter()
    with open(args.workdir / f"stream.{args.format}", "wb") as stream:
        writer = RowWriter(stream, args.format)
        for i, path in enumerate(paths):
            writer.write(_row(path, i))
            if i % args.batch == 0:
                writer.flush()
        writer.close()
    timings["stream write (RowWriter)"] = time.perf_counter() - started

    target = args.workdir / f"scores.{args.format}"
    started = time.perf_counter()
    with open_output(target, flush_rows=args.batch) as out:
        for i, path in enumerate(out.inputs(paths)):
            out.write(_row(path, i))
        middle = time.perf_counter()
        out.finish()
    timings["atomic: rows into the partial file"] = middle - started
    timings["atomic: ordered export and rename"] = time.perf_counter() - middle

    started = time.perf_counter()
    with open_output(target, mode="resume", flush_rows=args.batch) as out:
        left = list(out.inputs(paths))
        middle_import = time.perf_counter()
        summary = out.finish()
    assert not left and summary.resumed == args.rows
    timings["resume: import finished file + claim every input"] = middle_import - started
    timings["resume: export and rename"] = time.perf_counter() - middle_import

    print(f"{args.rows} rows, {args.format}, commit every {args.batch} rows")
    print(f"{'phase':<52} {'seconds':>8} {'rows/s':>12}")
    for phase, seconds in timings.items():
        print(f"{phase:<52} {seconds:8.2f} {args.rows / seconds:12.0f}")
    print(f"peak resident memory: {_peak_mib():.0f} MiB")
    result = {
        "rows": args.rows, "format": args.format, "batch": args.batch,
        "seconds": timings, "rows_per_s": {k: args.rows / v for k, v in timings.items()},
        "peak_rss_mib": _peak_mib(), "load_before": load_before, "load_after": os.getloadavg(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join(["python", *sys.argv]),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
