"""The benchmark's report: the printed table, the JSON file, the PNG plot, and the budget
checks users' CI runs (`pmtiqa-bench --max-p99-ms/--min-images-per-s/--min-srcc`).

The JSON file holds `meta` (machine, date, images, counts: what RESULTS.md records beside
each figure) and `rows`, one object per backend and batch size with every `BenchRow` field
(backend, precision, batch, status, p50_ms, p99_ms, images_per_s, srcc_vs_torch,
max_abs_diff, end_to_end_images_per_s, ...); NaN and unmeasured values are null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pmtiqa_deploy.bench import BenchResult, BenchRow
from pmtiqa_deploy.spec import atomic_write_bytes


TABLE_COLUMNS = ("backend", "precision", "batch", "status", "preprocess", "file size", "SRCC vs PyTorch",
                 "SRCC vs MOS", "p50 ms", "p99 ms", "images/s", "end-to-end images/s")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: Sequence[BenchRow]) -> str:
    """One aligned text table of the rows. A long status (an unavailable backend's reason)
    is shortened to a note number in the table and given in full below it."""
    lines, notes = [TABLE_COLUMNS], []
    for r in rows:
        status = r.status
        if len(status) > 24:
            if status not in notes:
                notes.append(status)
            status = f"{status.split(':')[0]} [{notes.index(status) + 1}]"
        size = "-" if r.file_bytes is None else f"{r.file_bytes / 2**20:.1f} MiB"
        lines.append((r.backend, r.precision, str(r.batch), status, r.preprocess or "-", size, _fmt(r.srcc_vs_torch, 4),
                      _fmt(r.srcc_vs_mos, 4), _fmt(r.p50_ms), _fmt(r.p99_ms), _fmt(r.images_per_s, 1),
                      _fmt(r.end_to_end_images_per_s, 1)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text + [f"[{i}] {note}" for i, note in enumerate(notes, start=1)])


def budget_failures(rows: Sequence[BenchRow], *, max_p99_ms: float | None = None,
                    min_images_per_s: float | None = None, min_srcc: float | None = None,
                    min_srcc_mos: float | None = None) -> list[str]:
    """One line per missed budget, naming the flag, the row and the value. Budgets apply
    to measured rows (a row whose run failed misses them; an unavailable backend is only
    reported); --min-srcc (vs PyTorch) does not apply to the torch rows themselves."""
    failures = []
    measured = [r for r in rows if r.status == "ok"]
    budgets = any(b is not None for b in (max_p99_ms, min_images_per_s, min_srcc, min_srcc_mos))
    if not measured and budgets:
        return ["no backend could be measured, so no budget can be met"]
    if budgets:  # a backend that opened but then failed (out of memory, say) misses them all
        failures += [f"{r.backend} {r.precision} batch {r.batch} {r.status}"
                     for r in rows if r.status.startswith("failed")]
    for r in measured:
        name = f"{r.backend} {r.precision} batch {r.batch}"
        if max_p99_ms is not None and r.p99_ms is not None and r.p99_ms > max_p99_ms:
            failures.append(f"--max-p99-ms {max_p99_ms:g}: {name} p99 is {r.p99_ms:.2f} ms")
        if min_images_per_s is not None and r.images_per_s is not None and r.images_per_s < min_images_per_s:
            failures.append(f"--min-images-per-s {min_images_per_s:g}: {name} runs "
                            f"{r.images_per_s:.1f} images/s")
        if min_srcc is not None and r.backend != "torch":
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


def to_json(result: BenchResult, **extra_meta: Any) -> dict[str, Any]:
    """{"meta": {...}, "rows": [...]}: `extra_meta` (the command line, its options) joins
    the run's own metadata."""
    meta = {**result.meta, **{k: _jsonable(v) for k, v in extra_meta.items()}}
    return {"meta": meta, "rows": [row.to_dict() for row in result.rows]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(result: BenchResult, path: str | os.PathLike, **extra_meta: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_json(result, **extra_meta), indent=2) + "\n").encode())


def write_plot(result: BenchResult, path: str | os.PathLike) -> None:
    """A PNG: model-only latency distributions per backend and batch (box plots), and each
    backend's scores against the PyTorch reference (scatter; skipped without it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = [k for k in result.latencies_ms if result.latencies_ms[k]]
    reference = next((v for k, v in result.scores.items() if k[0] == "torch" and k[1] == "fp32"), None)
    largest: dict[tuple[str, str], tuple[str, str, int]] = {}  # scores agree across batch sizes
    for key in result.scores:
        if key[0] != "torch" and key[2] >= largest.get(key[:2], key)[2]:
            largest[key[:2]] = key
    others = list(largest.values()) if reference is not None else []
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    if keys:
        left.boxplot([result.latencies_ms[k] for k in keys], showfliers=True)
        left.set_xticks(range(1, len(keys) + 1), [f"{b}\n{p} b{n}" for b, p, n in keys], fontsize=7)
    left.set_ylabel("latency per batch (ms)")
    left.set_title("model-only latency")
    if reference is not None and others:
        for key in others:
            right.scatter(reference, result.scores[key], s=12, label=f"{key[0]} {key[1]} b{key[2]}")
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
