"""Memory and time per image as the image count grows: the scoring pipeline must stay flat
from a hundred images to tens of thousands (it pulls paths lazily and keeps at most
`prefetch` images in flight; see `pmtiqa_deploy.score`).

`count_sweep` scores one stream of images, the benchmark's files taken over and over
(`itertools.cycle`: decoding a file again costs what decoding a new one does, and the
pipeline keeps nothing per image), through the very `Scorer.score_files` users run, and
at each checkpoint count (100, 1000, 10000, ...) records the time per image over the
images since the previous checkpoint and the process's peak and current resident memory.
Rows are counted and dropped as they come, as a streaming writer would.

Also the memory readings the benchmark rows use (peak RSS, reset per row where Linux
allows it; device memory through CUDA).
"""

from __future__ import annotations

import itertools
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pmtiqa_deploy.score import Scorer


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset (or process start), in MiB."""
    peak = _status_mb("VmHWM:")
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024) if platform.system() == "Darwin" else usage / 1024


def rss_mb() -> float | None:
    """Resident set size now, in MiB (Linux), else None."""
    return _status_mb("VmRSS:")


def device_used_mb() -> float | None:
    """Device memory in use on the current GPU (all processes, cudaMemGetInfo), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    return (total - free) / (1024 * 1024)


@dataclass
class CountPoint:
    """The pipeline after `images` images: time per image since the previous point."""

    images: int
    seconds: float
    ms_per_image: float
    images_per_s: float
    peak_rss_mb: float
    rss_mb: float | None
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_sweep(scorer: Scorer, paths: Sequence[Path], counts: Sequence[int],
                log: Callable[[str], None] = lambda message: None) -> list[CountPoint]:
    """Score max(counts) images in one stream and read time and memory at each count."""
    marks = sorted(set(counts))
    if not marks or marks[0] < 1:
        raise ValueError(f"image counts must be positive, got {list(counts)}")
    if not paths:
        raise ValueError("count_sweep needs at least one image file")
    stream = itertools.islice(itertools.cycle(paths), marks[-1])
    points: list[CountPoint] = []
    reset_peak_rss()
    done = failed = 0
    start = last_time = time.perf_counter()
    last_count = 0
    for row in scorer.score_files(stream):
        done += 1
        failed += row.error is not None
        if done == marks[len(points)]:
            now = time.perf_counter()
            span = done - last_count
            points.append(CountPoint(done, round(now - start, 3), 1000.0 * (now - last_time) / span,
                                     span / (now - last_time), round(peak_rss_mb(), 1),
                                     None if (current := rss_mb()) is None else round(current, 1), failed))
            log(f"  {done} images: {points[-1].ms_per_image:.1f} ms/image, peak RSS "
                f"{points[-1].peak_rss_mb:.0f} MiB")
            last_time, last_count = now, done
    return points
