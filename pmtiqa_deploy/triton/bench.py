"""Load on a server: `pmtiqa-bench --server URL --concurrency 1,4,16`, the figures
perf_analyzer users expect, through the very client users run (`ServerScorer.infer`).

Per concurrency N and batch B, one `LoadRow`: N client threads, each on its own
connection, send requests of B encoded image files (cycled through the benchmark's
images) back to back: after `warmup` untimed requests, `iterations` timed ones each,
stopping early when `time_limit` seconds have passed (the row says so). Latency is a
request's wall time at the client (p50/p90/p95/p99, mean); images/s is the images the
timed requests answered over the wall time from the first timed request to the last
answer. Images the server answered with an error are counted, not hidden.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.errors import ServerError
from pmtiqa_deploy.spec import atomic_write_bytes
from pmtiqa_deploy.triton import contract
from pmtiqa_deploy.triton.client import ServerScorer

COLUMNS = ("concurrency", "batch", "status", "requests", "images/s", "p50 ms", "p90 ms", "p99 ms",
           "error rows")


@dataclass
class LoadRow:
    concurrency: int
    batch: int
    status: str = "ok"
    requests: int = 0
    images: int = 0
    error_rows: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    requests_per_s: float | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(scorer: ServerScorer, images: Sequence[bytes], *, concurrency: int, batch: int,
            iterations: int, warmup: int = 1, time_limit: float = 60.0) -> LoadRow:
    """One row (see the module docstring); `scorer` opens one connection per thread."""
    if not images:
        raise ValueError("no images to send")
    row = LoadRow(concurrency, batch)
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []
    go = threading.Event()
    deadline = [float("inf")]

    def client(index: int) -> None:
        go.wait()
        for step in range(iterations):
            if failures or time.monotonic() > deadline[0]:
                return
            chunk = _cycle(images, (index + step * concurrency) * batch, batch)
            began = time.perf_counter()
            try:
                outputs = scorer.infer(chunk)
            except ServerError as exc:
                failures.append(str(exc))
                return
            elapsed = time.perf_counter() - began
            errors = sum(1 for text in outputs[contract.ERROR].reshape(-1) if text)
            with lock:
                latencies.append(elapsed * 1000.0)
                row.images += len(chunk)
                row.error_rows += errors

    try:
        for step in range(warmup):  # the server's first requests load and allocate
            scorer.infer(_cycle(images, step * batch, batch))
    except ServerError as exc:
        row.status = f"failed: {exc}"
        return row
    with ThreadPoolExecutor(concurrency, thread_name_prefix="pmtiqa-load") as pool:
        running = [pool.submit(client, index) for index in range(concurrency)]
        began = time.perf_counter()
        deadline[0] = time.monotonic() + time_limit
        go.set()
        for future in running:
            future.result()
    row.seconds = time.perf_counter() - began
    row.requests = len(latencies)
    if failures:
        row.status = f"failed: {failures[0]}"
    elif row.requests < iterations * concurrency:
        row.status = f"time limit: {row.requests} of {iterations * concurrency} requests"
    if latencies:
        values = np.asarray(latencies)
        row.mean_ms = float(values.mean())
        row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms = (
            float(v) for v in np.percentile(values, [50, 90, 95, 99]))
        row.images_per_s = row.images / row.seconds
        row.requests_per_s = row.requests / row.seconds
    return row


def _cycle(images: Sequence[bytes], start: int, count: int) -> list[bytes]:
    return [images[(start + i) % len(images)] for i in range(count)]


def run_load(url: str, images: Sequence[bytes], *, concurrencies: Sequence[int], batches: Sequence[int],
             iterations: int, warmup: int = 1, time_limit: float = 60.0,
             log: Callable[[str], None] = lambda message: None) -> list[LoadRow]:
    """Every concurrency at every batch size against the server at `url`."""
    rows = []
    with ServerScorer.open(url, concurrency=max(concurrencies)) as scorer:
        for batch in batches:
            for concurrency in concurrencies:
                log(f"server: {concurrency} client(s), {batch} image(s) per request")
                rows.append(measure(scorer, images, concurrency=concurrency, batch=batch,
                                    iterations=iterations, warmup=warmup, time_limit=time_limit))
    return rows


def table(rows: Sequence[LoadRow]) -> str:
    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [COLUMNS] + [(str(r.concurrency), str(r.batch), r.status, str(r.requests),
                          number(r.images_per_s), number(r.p50_ms), number(r.p90_ms),
                          number(r.p99_ms), str(r.error_rows)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def budget_failures(rows: Sequence[LoadRow], *, max_p99_ms: float | None = None,
                    min_images_per_s: float | None = None) -> list[str]:
    """One line per missed budget; a row that failed or was cut short misses every budget."""
    failures: list[str] = []
    if max_p99_ms is None and min_images_per_s is None:
        return failures
    for r in rows:
        name = f"concurrency {r.concurrency} batch {r.batch}"
        if r.status != "ok":
            failures.append(f"{name}: {r.status}")
            continue
        if max_p99_ms is not None and r.p99_ms is not None and r.p99_ms > max_p99_ms:
            failures.append(f"--max-p99-ms {max_p99_ms:g}: {name} p99 is {r.p99_ms:.2f} ms")
        if min_images_per_s is not None and r.images_per_s is not None and r.images_per_s < min_images_per_s:
            failures.append(f"--min-images-per-s {min_images_per_s:g}: {name} runs "
                            f"{r.images_per_s:.1f} images/s")
    return failures


def write_json(rows: Sequence[LoadRow], path: str | os.PathLike, **meta: Any) -> None:
    """{"meta": {...}, "rows": [...]}; meta adds the client machine, its load and the date."""
    meta = {**meta, "client_machine": platform.machine(), "client_processor": platform.processor(),
            "client_cpu_count": os.cpu_count(), "client_load_average": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = {"meta": meta, "rows": [row.to_dict() for row in rows]}
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2, default=str) + "\n").encode())


def bench_server(url: str, paths: Sequence[Path], *, concurrency: Sequence[int], batches: Sequence[int],
                 iterations: int, warmup: int, time_limit: float, json_path: Path | None = None,
                 max_p99_ms: float | None = None, min_images_per_s: float | None = None) -> int:
    """`pmtiqa-bench --server`: measure, print the table (stdout) and the missed budgets
    (stderr), write the JSON; returns the exit code (0 budgets met, 1 missed, 2 no run)."""
    import click

    from pmtiqa_deploy.errors import PmtIqaError
    from pmtiqa_deploy.preprocess import read_image_file

    try:
        images = [read_image_file(path) for path in paths]
        rows = run_load(url, images, concurrencies=concurrency, batches=batches, iterations=iterations,
                        warmup=warmup, time_limit=time_limit, log=lambda m: click.echo(m, err=True))
    except PmtIqaError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    click.echo(table(rows))
    if json_path is not None:
        write_json(rows, json_path, server=url, images=len(images), iterations=iterations,
                   warmup=warmup, time_limit=time_limit)
    failures = budget_failures(rows, max_p99_ms=max_p99_ms, min_images_per_s=min_images_per_s)
    for failure in failures:
        click.echo(f"budget failed: {failure}", err=True)
    return 1 if failures else 0
