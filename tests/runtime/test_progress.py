"""Progress on stderr: a live bar on a terminal, plain lines at most every PLAIN_INTERVAL_S
elsewhere, nothing when turned off. The other commands' tests (pmtiqa-data, -train,
-export, -bench) check their own lines with the interval shortened."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from scoring_inputs import null_model_dir, photo

from pmtiqa_deploy import progress
from pmtiqa_deploy.cli import score_command
from pmtiqa_deploy.progress import progress_bar, progress_write


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    import cv2

    folder = tmp_path_factory.mktemp("progress-images")
    paths = [folder / f"{i}.png" for i in range(6)]
    for i, path in enumerate(paths):
        assert cv2.imwrite(str(path), photo(64, 80, i))
    return paths


@pytest.fixture(scope="module")
def null_dir(tmp_path_factory) -> Path:
    return null_model_dir(tmp_path_factory.mktemp("null-model-progress"))


def test_lines_off_a_terminal_at_most_one_per_interval(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.2)
    log = io.StringIO()
    started = time.monotonic()
    with progress_bar(total=30, desc="scoring", unit="img", stream=log) as bar:
        for _ in range(30):
            time.sleep(0.02)
            bar.update()
    elapsed = time.monotonic() - started
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines, log.getvalue()
    assert all(line.startswith("scoring: ") for line in lines)
    assert lines[-1].startswith("scoring: 100% 30/30")  # the closing line of a bar that stays
    assert len(lines) <= elapsed / 0.2 + 1


def test_nothing_for_short_work_nor_when_turned_off(monkeypatch):
    log = io.StringIO()
    for _ in progress_bar(range(1000), desc="quick", stream=log):
        pass
    assert log.getvalue() == ""  # under the first interval: no line at all
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    for _ in progress_bar(range(10), desc="off", stream=log, enabled=False):
        pass
    assert log.getvalue() == ""


def test_live_bar_on_a_terminal():
    primary, secondary = _terminal()
    with os.fdopen(secondary, "w") as terminal:
        with progress_bar(total=3, desc="scoring", stream=terminal) as bar:
            bar.update(3)
        progress_write("a note above the bar", stream=terminal)
    drawn = _read_all(primary)
    assert "\r" in drawn and "scoring: 100%" in drawn and "a note above the bar" in drawn


def test_score_command_logs_plain_lines(images, null_dir, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    result = CliRunner().invoke(score_command, [*map(str, images), "--model", str(null_dir), "--backend", "null"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    assert "scoring (null): 100% 6/6" in result.stderr and "scored 6 of 6" in result.stderr
    quiet = CliRunner().invoke(score_command, [*map(str, images), "--model", str(null_dir), "--backend", "null",
                                               "--no-progress"])
    assert quiet.exit_code == 0 and quiet.stderr == "scored 6 of 6 image(s)\n"


def test_score_command_draws_a_live_bar_on_a_terminal(images, null_dir):
    """The console script in a real process whose stderr is a terminal."""
    primary, secondary = _terminal()
    script = Path(sys.executable).parent / "pmtiqa-score"
    done = subprocess.run([str(script), *map(str, images), "--model", str(null_dir), "--backend", "null"],
                          stdout=subprocess.PIPE, stderr=secondary, timeout=120)
    os.close(secondary)
    drawn = _read_all(primary)
    assert done.returncode == 0, drawn
    assert "\r" in drawn and "scoring (null): 100%" in drawn and "scored 6 of 6" in drawn
    assert done.stdout.decode().count("\n") == 7  # header and six rows, on stdout alone


def _read_all(primary: int) -> str:
    """Everything written to a pseudo-terminal whose other end is closed; closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return b"".join(chunks).decode()


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal pair, 24 rows of 100 columns (a new one has 0 x 0)."""
    import fcntl
    import struct
    import termios

    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    return primary, secondary
