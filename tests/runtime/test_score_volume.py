"""pmtiqa-score at volume, over real processes: a run killed with SIGKILL at several
seeded points and resumed gives, byte for byte, the file of an uninterrupted run (every
input exactly once, in input order, same scores); a killed run leaves the previous output
byte-identical; a full or read-only file system ends the run with one line and exit 2,
and the rows kept resume. The full and read-only file systems are small tmpfs mounts
(skipped, with the reason, where mounting is refused)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scoring_inputs import null_model_dir

from pmtiqa_deploy.output import read_rows, stored_paths, unquote_path

IMAGES = 300
SCORE = "from pmtiqa_deploy.cli import score_command; score_command()"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A tiny-crop null model and a folder of IMAGES small PNGs in two sub-folders, with a
    few broken files, names that are not UTF-8 or hold a newline, and a list file that
    names some images again (each listing is an input of its own)."""
    root = tmp_path_factory.mktemp("volume")
    model = root / "model"
    null_model_dir(model, batch_max=8)
    spec = json.loads((model / "model.json").read_text())
    spec["preprocess"].update(crop_size=32, min_side=32)
    (model / "model.json").write_text(json.dumps(spec))
    photos = root / "photos"
    rng = np.random.default_rng(7)
    for i in range(IMAGES):
        folder = photos / ("day1" if i < IMAGES // 2 else "day2")
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (120 + i % 9, 160, 3), dtype=np.uint8)
        name = f"img{i:04d}.png".encode()
        if i % 50 == 7:
            name = f"caf\xe9-{i}.png".encode("latin-1")  # not UTF-8
        if i % 50 == 8:
            name = f"two\nlines-{i}.png".encode()
        ok, data = cv2.imencode(".png", image)
        assert ok
        data = data.tobytes() if i % 40 != 5 else data.tobytes()[:30]  # a few truncated
        (Path(os.fsdecode(os.fsencode(folder) + b"/" + name))).write_bytes(data)
    listing = root / "again.txt"
    day1 = sorted((photos / "day1").iterdir())
    listing.write_text("".join(f"{p}\n" for p in day1[3:9]))
    images = [p for p in photos.rglob("*") if p.is_file()]
    listed = sum((photos / "day1" / p.name).stat().st_size for p in day1[3:9])
    return {"root": root, "model": model, "args": [str(photos), f"@{listing}"],
            "bytes": sum(p.stat().st_size for p in images) + listed}


def _command(corpus, output, *extra):
    return [sys.executable, "-c", SCORE, *corpus["args"], "--model", str(corpus["model"]),
            "--backend", "null", "--batch", "4", "--workers", "2", "--no-progress",
            "-o", str(output), *map(str, extra)]


def _run(corpus, output, *extra):
    return subprocess.run(_command(corpus, output, *extra), capture_output=True, text=True, timeout=300)


def _holds(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _start(corpus, output, *extra) -> tuple[subprocess.Popen, float]:
    """Start a run; return it and the time it opened its partial file (it has loaded its
    modules and is about to score)."""
    partial = os.path.realpath(f"{output}.partial")
    process = subprocess.Popen(_command(corpus, output, *extra), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _holds(process.pid, partial) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return process, time.monotonic()


@pytest.fixture(scope="module")
def reference(corpus) -> dict:
    """The uninterrupted run's file, per format."""
    out: dict = {}
    for fmt in ("csv", "jsonl", "json"):
        target = corpus["root"] / f"reference.{fmt}"
        done = _run(corpus, target)
        assert done.returncode == 1, done.stderr  # the truncated files fail
        out[fmt] = target.read_bytes()
        assert len(list(read_rows(target, fmt))) == IMAGES + 6
    return out


def _bytes_read(pid: int) -> int:
    """What a process has read so far (/proc/PID/io rchar): here, mostly image files."""
    try:
        with open(f"/proc/{pid}/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{os.getpid()}/io"):
            pytest.skip("the kill points follow /proc/PID/io, which this kernel lacks "
                        "(no task I/O accounting)")
        return -1  # the process has gone


def _kill_at(corpus, output, fraction, *extra) -> None:
    """Start a run and SIGKILL it once it has read `fraction` of the images' bytes (a
    point in its progress whatever the machine's load; decoding runs only a few images
    ahead of the rows written)."""
    process, _ = _start(corpus, output, *extra)
    goal = _bytes_read(process.pid) + fraction * corpus["bytes"]
    while process.poll() is None and 0 <= _bytes_read(process.pid) < goal:
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.parametrize("seed,fmt", [(1, "csv"), (2, "jsonl"), (3, "json")])
def test_killed_runs_resume_to_the_uninterrupted_file(corpus, reference, tmp_path, seed, fmt):
    rng = random.Random(seed)
    target = tmp_path / f"scores.{fmt}"
    old = b"the previous run's results\n"
    target.write_bytes(old)
    # killed twice: once while overwriting the old file, once while resuming; the target
    # is either the old file or (killed after its rename) the finished one, never a mix
    _kill_at(corpus, target, rng.uniform(0.05, 0.6), "--overwrite")
    interrupted = target.read_bytes() == old
    assert interrupted or target.read_bytes() == reference[fmt]
    if interrupted:  # the rows committed before the kill, each input at most once
        kept = list(stored_paths(f"{target}.partial"))
        assert len(kept) <= IMAGES + 6 and len(set(kept)) == min(len(kept), IMAGES)
    _kill_at(corpus, target, rng.uniform(0.05, 0.6), "--resume")
    assert target.read_bytes() in (old, reference[fmt])
    assert interrupted, "the first run finished before its kill"
    done = _run(corpus, target, "--resume")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    rows = list(read_rows(target, fmt))
    assert len(rows) == IMAGES + 6
    assert target.read_bytes() == reference[fmt]  # order, each input once, same scores
    assert sorted(os.listdir(tmp_path)) == [target.name]


def test_resume_after_a_finished_run_scores_only_new_inputs(corpus, reference, tmp_path):
    target = tmp_path / "scores.csv"
    target.write_bytes(reference["csv"])
    done = _run(corpus, target, "--resume")
    assert done.returncode == 1 and f"{IMAGES + 6} row(s) were already in" in done.stderr
    assert target.read_bytes() == reference["csv"]


@pytest.fixture
def tmpfs(tmp_path):
    """A 96 KiB tmpfs (root and CAP_SYS_ADMIN needed; skipped where mounting is refused)."""
    point = tmp_path / "small"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.strip() or 'mount failed'}); "
                    "the disk-full and read-only tests need root with CAP_SYS_ADMIN")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=True)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_full_disk_ends_with_one_line_and_rows_kept_for_resume(corpus, reference, tmpfs):
    target = tmpfs / "scores.csv"
    full = _run(corpus, target)
    assert full.returncode == 2
    line = _one_error_line(full.stderr)
    assert line.startswith(f"error: cannot write {target}") and "No space left on device" in line
    assert "--resume" in line and not target.exists()
    subprocess.run(["mount", "-o", "remount,size=8m", str(tmpfs)], check=True)
    done = _run(corpus, target, "--resume")
    assert done.returncode == 1, done.stderr
    assert target.read_bytes() == reference["csv"]


def test_read_only_file_system_ends_with_one_line(corpus, tmpfs):
    target = tmpfs / "scores.csv"
    target.write_bytes(b"old\n")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    done = _run(corpus, target, "--overwrite")
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == f"error: cannot write {target}.partial (Read-only file system)"
    assert target.read_bytes() == b"old\n"


def test_device_output_error_is_one_line(corpus):
    done = _run(corpus, "/dev/full")  # a device is written as a stream, never replaced
    assert done.returncode == 2
    assert _one_error_line(done.stderr) == "error: cannot write /dev/full (No space left on device)"


def test_non_utf8_names_read_back_to_their_files(reference):
    rows = list(read_rows_bytes(reference["jsonl"]))
    odd = [r for r in rows if "caf" in r["path"] or "lines" in r["path"]]
    assert len(odd) == 12
    for row in odd:
        assert os.path.isfile(row["path"]) and (row["error"] is None), row


def read_rows_bytes(data: bytes):
    for line in data.decode("utf-8").splitlines():
        record = json.loads(line)
        record["path"] = unquote_path(record["path"])
        yield record
