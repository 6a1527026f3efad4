"""The benchmark's report: the printed table, the JSON file, the PNG plot, and the budget
checks users' CI runs (`pmtiqa-bench --max-p99-ms/--min-images-per-s/--min-srcc`).

The JSON file holds `meta` (machine, CPU model and flags, BLAS environment, load average,
date, images, rounds, the GEMM ceilings per thread count and batch: what RESULTS.md records
beside each figure), `rows`, one object per backend, thread count and batch size with every
`BenchRow` field (backend, precision, threads, batch, status, images_per_s and its spread,
ceiling_fraction, srcc_vs_torch, reference, end_to_end_images_per_s, ...), and with
`pmtiqa-bench --counts`, `counts`: time and memory per image as the image count grows.
NaN and unmeasured values are null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pmtiqa_deploy.bench import BenchResult, BenchRow
from pmtiqa_deploy.footprint import CountPoint
from pmtiqa_deploy.spec import atomic_write_bytes


TABLE_COLUMNS = ("backend", "precision", "threads", "batch", "status", "preprocess", "images/s", "spread",
                 "crops/s", "GFLOP/s", "of ceiling", "e2e images/s", "e2e/model", "e2e of ceiling",
                 "SRCC vs PyTorch", "SRCC vs MOS", "p50 ms", "p99 ms", "file size")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cells(r: BenchRow, status: str) -> tuple[str, ...]:
    spread = ("-" if r.images_per_s_min is None else
              f"{_fmt(r.images_per_s_min, 1)}..{_fmt(r.images_per_s_max, 1)}")
    size = "-" if r.file_bytes is None else f"{r.file_bytes / 2**20:.1f} MiB"
    srcc = "reference" if r.reference and r.status == "ok" else _fmt(r.srcc_vs_torch, 4)
    return (r.backend, r.precision, _fmt(r.threads), str(r.batch), status, r.preprocess or "-",
            _fmt(r.images_per_s, 1), spread, _fmt(r.crops_per_s, 1), _fmt(r.gflops, 1),
            _fmt(r.ceiling_fraction), _fmt(r.end_to_end_images_per_s, 1),
            _fmt(r.end_to_end_ratio), _fmt(r.end_to_end_ceiling_fraction), srcc, _fmt(r.srcc_vs_mos, 4),
            _fmt(r.p50_ms), _fmt(r.p99_ms), size)


def table(rows: Sequence[BenchRow], markdown: bool = False) -> str:
    """One aligned text table of the rows (a Markdown table with `markdown`). A long status
    (an unavailable backend's reason) is shortened to a note number in the table and given
    in full below it. The torch fp32 rows say "reference" where the others give their SRCC
    against them; "of ceiling" is the achieved GFLOP/s over the run's best FP32 GEMM at the
    same thread count; "spread" is the slowest and fastest interleaved round."""
    lines, notes = [TABLE_COLUMNS], []
    for r in rows:
        status = r.status
        if len(status) > 24:
            if status not in notes:
                notes.append(status)
            status = f"{status.split(':')[0]} [{notes.index(status) + 1}]"
        lines.append(_cells(r, status))
    footer = [f"[{i}] {note}" for i, note in enumerate(notes, start=1)]
    if markdown:
        text = ["| " + " | ".join(line) + " |" for line in lines]
        text.insert(1, "|" + "---|" * len(TABLE_COLUMNS))
        return "\n".join(text + ([""] + footer if footer else []))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text + footer)


def budget_failures(rows: Sequence[BenchRow], *, max_p99_ms: float | None = None,
                    min_images_per_s: float | None = None, min_srcc: float | None = None,
                    min_srcc_mos: float | None = None) -> list[str]:
    """One line per missed budget, naming the flag, the row and the value. Budgets apply
    to measured rows (a row whose run failed misses them; an unavailable backend is only
    reported); --min-srcc (vs PyTorch) does not apply to the reference (torch fp32) rows."""
    failures = []
    measured = [r for r in rows if r.status == "ok"]
    budgets = any(b is not None for b in (max_p99_ms, min_images_per_s, min_srcc, min_srcc_mos))
    if not measured and budgets:
        return ["no backend could be measured, so no budget can be met"]
    if budgets:  # a backend that opened but then failed (out of memory, say) misses them all
        failures += [f"{r.backend} {r.precision} batch {r.batch} {r.status}"
                     for r in rows if r.status.startswith("failed")]
    for r in measured:
        name = f"{r.backend} {r.precision}{f' threads {r.threads}' if r.threads else ''} batch {r.batch}"
        if max_p99_ms is not None and r.p99_ms is not None and r.p99_ms > max_p99_ms:
            failures.append(f"--max-p99-ms {max_p99_ms:g}: {name} p99 is {r.p99_ms:.2f} ms")
        if min_images_per_s is not None and r.images_per_s is not None and r.images_per_s < min_images_per_s:
            failures.append(f"--min-images-per-s {min_images_per_s:g}: {name} runs "
                            f"{r.images_per_s:.1f} images/s")
        if min_srcc is not None and not r.reference:
            if r.srcc_vs_torch is None:
                failures.append(f"--min-srcc {min_srcc:g}: {name} has no SRCC vs PyTorch (the torch "
                                "reference did not run: pass --checkpoint)")
            elif not r.srcc_vs_torch >= min_srcc:
                failures.append(f"--min-srcc {min_srcc:g}: {name} SRCC vs PyTorch is {r.srcc_vs_torch:.4f}")
        if min_srcc_mos is not None:
            if r.srcc_vs_mos is None:
                failures.append(f"--min-srcc-mos {min_srcc_mos:g}: {name} has no SRCC vs MOS "
                                "(the images have no manifest.csv labels)")
            elif not r.srcc_vs_mos >= min_srcc_mos:
                failures.append(f"--min-srcc-mos {min_srcc_mos:g}: {name} SRCC vs MOS is "
                                f"{r.srcc_vs_mos:.4f}")
    return failures


def count_table(points: Sequence[CountPoint]) -> str:
    """The image-count sweep: time per image over each span and memory at its end."""
    lines = [("images", "seconds", "ms/image (span)", "images/s (span)", "peak RSS MiB", "RSS MiB", "failed")]
    lines += [(str(p.images), f"{p.seconds:.1f}", f"{p.ms_per_image:.2f}", f"{p.images_per_s:.1f}",
               f"{p.peak_rss_mb:.0f}", _fmt(p.rss_mb, 0), str(p.failed)) for p in points]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def to_json(result: BenchResult, counts: Sequence[CountPoint] = (), **extra_meta: Any) -> dict[str, Any]:
    """{"meta": {...}, "rows": [...], "counts": [...]}: `extra_meta` (the command line, its
    options) joins the run's own metadata."""
    meta = {**result.meta, **{k: _jsonable(v) for k, v in extra_meta.items()}}
    return {"meta": meta, "rows": [row.to_dict() for row in result.rows],
            "counts": [point.to_dict() for point in counts]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(result: BenchResult, path: str | os.PathLike, counts: Sequence[CountPoint] = (),
               **extra_meta: Any) -> None:
    text = json.dumps(to_json(result, counts, **extra_meta), indent=2) + "\n"
    atomic_write_bytes(path, text.encode())


def write_plot(result: BenchResult, path: str | os.PathLike) -> None:
    """A PNG: model-only latency distributions per backend and batch (box plots), and each
    backend's scores against the PyTorch reference (scatter; skipped without it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [k for k in result.latencies_ms if result.latencies_ms[k]]
    reference = next((v for k, v in result.scores.items() if k[0] == "torch" and k[1] == "fp32"), None)
    largest: dict[tuple[str, str], tuple[str, str, int, int]] = {}  # scores agree across batch sizes
    for key in result.scores:
        if key[0] != "torch" and key[2] >= largest.get(key[:2], key)[2]:
            largest[key[:2]] = key
    others = list(largest.values()) if reference is not None else []
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    if keys:
        left.boxplot([result.latencies_ms[k] for k in keys], showfliers=True)
        left.set_xticks(range(1, len(keys) + 1), [f"{b}\n{p} b{n} t{t}" for b, p, n, t in keys], fontsize=7)
    left.set_ylabel("latency per batch (ms)")
    left.set_title("model-only latency")
    if reference is not None and others:
        for key in others:
            right.scatter(reference, result.scores[key], s=12, label=f"{key[0]} {key[1]} b{key[2]} t{key[3]}")
        both: np.ndarray = np.concatenate([reference] + [result.scores[k] for k in others])
        both = both[np.isfinite(both)]
        if both.size:
            right.plot([both.min(), both.max()], [both.min(), both.max()], "k--", linewidth=0.8)
        right.legend(fontsize=7)
        right.set_xlabel("PyTorch score")
        right.set_ylabel("backend score")
        right.set_title("agreement with PyTorch")
    else:
        right.text(0.5, 0.5, "no PyTorch reference (pass --checkpoint)", ha="center", va="center")
        right.set_axis_off()
    figure.tight_layout()
    figure.savefig(os.fspath(path), format="png", dpi=110)
    plt.close(figure)
