"""Progress of long commands, on stderr, for people at a terminal and for logs alike.

Every command that runs long (pmtiqa-data, pmtiqa-train, pmtiqa-export, pmtiqa-score,
pmtiqa-bench, and so the main job, which runs them) reports progress through
`progress_bar`, a tqdm bar:

- on a terminal, tqdm's live bar, redrawn in place;
- anywhere else (a CI log, a file, a pipe), plain lines: nothing for the first
  `PLAIN_INTERVAL_S` seconds, then at most one line every `PLAIN_INTERVAL_S` seconds and,
  for a bar that stays, one when it ends. tqdm redraws with carriage returns, which a log
  keeps as tens of thousands of fragments; here they become whole lines.

`progress_write` prints a message without breaking a live bar (tqdm.write).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", leave: bool = True, enabled: bool = True,
                 stream: IO[str] | None = None) -> tqdm:
    """A tqdm bar on `stream` (stderr): live on a terminal, plain timed lines elsewhere,
    nothing at all when not `enabled`. Use it as tqdm: iterate it, or `update()` it
    inside a `with` block."""
    stream = sys.stderr if stream is None else stream
    if not enabled or stream is None:
        return tqdm(iterable, total=total, disable=True)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True)
    interval = PLAIN_INTERVAL_S
    # miniters=1 turns tqdm's adaptive skipping off, so the clock alone paces the lines;
    # ncols=0 prints the counts and rates without a bar drawing.
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=_Lines(stream),
                mininterval=interval, maxinterval=max(interval, 1.0), miniters=1, delay=interval,
                ncols=0, ascii=True)


def progress_write(message: str, stream: IO[str] | None = None) -> None:
    """Print a line on stderr above any live bar, which is redrawn below it."""
    tqdm.write(message, file=sys.stderr if stream is None else stream)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _Lines:
    """A text stream for tqdm that keeps whole lines only: each carriage-return redraw
    ends the line before it, blank redraws (tqdm clearing its bar) are dropped, and so
    is a line equal to the one just written."""

    def __init__(self, stream: IO[str]):
        self.stream, self.pending, self.last = stream, "", ""

    def write(self, text: str) -> int:
        for part in re.split(r"([\r\n])", text):
            if part in ("\r", "\n"):
                self._end_line()
            else:
                self.pending += part
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def _end_line(self) -> None:
        line, self.pending = self.pending.strip(), ""
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = line
