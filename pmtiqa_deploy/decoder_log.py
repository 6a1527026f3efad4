"""What image decoders print, kept off the terminal and put to use.

OpenCV, and the libpng and libjpeg inside it, report a bad file by printing to the
process's stderr (file descriptor 2), one or more lines per file, in whatever thread
decodes it; no API hands the text back. Scoring a million files with a few broken ones
would scatter those lines between the rows, and the rows would say less than the noise.

So while any decode is in flight, fd 2 points at a pipe. A reader thread forwards
everything from it to the real stderr at once, except lines that start the way these
libraries' messages start (`DECODER_PREFIXES`), which it holds back. Python's own stderr
writes (progress bars, warnings, tracebacks) go through the same pipe and reach the
terminal unchanged. Decodes run in parallel, so the lines cannot be told apart by file;
when a decode fails, `said_while` decodes the same bytes again alone (no other decode in
flight) and returns exactly what the decoders said, for the row's error text.

One instance, `DECODER_LOG`, serves the process. Where fd 2 cannot be duplicated (closed
in a daemon), decodes run as before, uncaptured.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# How OpenCV's log, libpng's default handlers and libjpeg's warnings begin a line (the list
# native/src/decoder_log.cpp compiles in).
DECODER_PREFIXES: tuple[str, ...] = tuple(json.loads(
    Path(__file__).with_name("decoder_prefixes.json").read_text(encoding="utf-8"))["prefixes"])
# OpenCV's "[ WARN:0@0.019] global grfmt_png.cpp:792 readFromStreamOrBuffer " before its words.
_OPENCV_HEAD = re.compile(r"^\[[^\]]*\]\s+(global\s+)?\S+\s+(\(\d+\)\s+)?\S+\s+")


_MARKER = "\0pmtiqa-sync-"  # written by `_sync`, never forwarded
_STARTS = tuple(prefix.encode() for prefix in (*DECODER_PREFIXES, _MARKER))


def _first_start(data: bytes, offset: int = 0) -> int:
    """Where the first decoder line (or sync marker) starts in `data`, or -1."""
    found = [i for i in (data.find(start, offset) for start in _STARTS) if i >= 0]
    return min(found, default=-1)


def _partial_start(data: bytes) -> int:
    """The length of the longest end of `data` that could begin a decoder line."""
    for size in range(min(len(data), max(map(len, _STARTS)) - 1), 0, -1):
        if any(start.startswith(data[-size:]) for start in _STARTS):
            return size
    return 0


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


def plain(line: str) -> str:
    """A decoder line without OpenCV's level, time and source location."""
    return _OPENCV_HEAD.sub("", line).strip()


class DecoderLog:
    """fd 2 captured while decodes run; see the module docstring."""

    def __init__(self) -> None:
        self._state = threading.Condition()
        self._active = 0  # decodes in flight
        self._alone = False  # a `said_while` decode runs, and nothing else
        self._opening = False
        self._pipe: tuple[int, int] | None = None
        self._stderr: int | None = None  # the real stderr, duplicated
        self._recorded: list[str] | None = None
        self._markers = itertools.count(1)
        self._seen = 0
        self._owed = 0  # newlines of decoder lines cut short by another decoder line
        self._broken = False

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Decoders' messages during the block stay off the terminal."""
        self._enter(alone=False)
        try:
            yield
        finally:
            self._leave()

    def said_while(self, decode: Callable[[], Any]) -> list[str]:
        """Run `decode` with no other decode in flight; the decoder lines it printed (an
        exception it raises is the caller's to see again: it is swallowed here)."""
        self._enter(alone=True)
        try:
            self._sync()  # what earlier decodes said is still in the pipe: not ours
            self._recorded = []
            try:
                decode()
            except Exception:  # the caller decoded these bytes already and has its error
                pass
            self._sync()
            said, self._recorded = self._recorded, None
        finally:
            self._leave()
        return list(dict.fromkeys(plain(line) for line in said if plain(line)))

    # --- the capture --------------------------------------------------------------------

    def _enter(self, alone: bool) -> None:
        with self._state:
            self._state.wait_for(lambda: not self._opening and not self._alone
                                 and not (alone and self._active))
            if self._active == 0 and not self._broken:
                self._opening = True  # _open_window may wait for the reader
                try:
                    self._open_window()
                finally:
                    self._opening = False
            self._active += 1
            self._alone = alone

    def _leave(self) -> None:
        with self._state:
            self._active -= 1
            self._alone = False
            if self._active == 0 and self._pipe is not None and self._stderr is not None:
                os.dup2(self._stderr, 2)
            self._state.notify_all()

    def _open_window(self) -> None:
        """Point fd 2 at the pipe, keeping what it pointed at (which may have changed since
        the last window: pytest, a daemon's log file) for the reader and for `_leave`."""
        try:
            current = os.dup(2)
        except OSError:  # no stderr at all: decode uncaptured
            self._broken = True
            return
        if self._stderr is not None and _same_file(current, self._stderr):
            os.close(current)
        else:
            if self._stderr is not None:
                self._sync()  # the reader may still write to the old one
                os.close(self._stderr)
            self._stderr = current
        if self._pipe is None:
            self._pipe = os.pipe()
            threading.Thread(target=self._pump, args=(self._pipe[0],), name="pmtiqa-decoder-log",
                             daemon=True).start()
        os.dup2(self._pipe[1], 2)

    def _sync(self) -> None:
        """Wait until the reader has handled everything written to the pipe so far."""
        if self._pipe is None:
            return
        number = next(self._markers)
        os.write(self._pipe[1], f"{_MARKER}{number}\n".encode())
        with self._state:
            self._state.wait_for(lambda: self._seen >= number, timeout=10.0)

    def drain(self) -> None:
        """Forward whatever is still in the pipe (at exit, so nothing written is lost)."""
        if self._pipe is not None and not self._broken:
            self._sync()

    def _pump(self, source: int) -> None:
        pending = b""
        while chunk := os.read(source, 65536):
            pending = self._split(pending + chunk)
        self._forward(pending)

    def _split(self, data: bytes) -> bytes:
        """Hold back decoder lines (recording them for `said_while`), forward the rest at
        once, even without its newline (a progress bar redraws with carriage returns
        only); return the tail that may still become a decoder line."""
        while data:
            if self._owed and data.startswith(b"\n"):
                data, self._owed = data[1:], self._owed - 1
                continue
            start = _first_start(data)
            if start < 0:
                keep = _partial_start(data)
                self._forward(data[:len(data) - keep])
                return data[len(data) - keep:]
            self._forward(data[:start])
            end, following = data.find(b"\n", start), _first_start(data, start + 1)
            if following >= 0 and (end < 0 or following < end):
                # libpng writes its message and its newline separately, so another
                # thread's line can come between them: the newline is still owed.
                self._route(data[start:following].decode("utf-8", "replace"))
                data, self._owed = data[following:], self._owed + 1
                continue
            if end < 0:
                return data[start:]  # the rest of the line is still to come
            self._route(data[start:end].decode("utf-8", "replace"))
            data = data[end + 1:]
        return b""

    def _route(self, line: str) -> None:
        if line.startswith(_MARKER):
            with self._state:
                self._seen = int(line[len(_MARKER):])
                self._state.notify_all()
        elif self._recorded is not None:
            self._recorded.append(line)

    def _forward(self, data: bytes) -> None:
        if self._stderr is None:
            return
        try:
            os.write(self._stderr, data)
        except OSError:  # the real stderr is gone: nothing can be shown anyway
            pass

    def _after_fork_in_child(self) -> None:
        """A child has no reader thread: give it its real stderr back and start afresh."""
        if self._active and self._stderr is not None:
            os.dup2(self._stderr, 2)
        for fd in (*(self._pipe or ()), *((self._stderr,) if self._stderr is not None else ())):
            try:
                os.close(fd)
            except OSError:
                pass
        self.__init__()  # type: ignore[misc]


DECODER_LOG = DecoderLog()
os.register_at_fork(after_in_child=DECODER_LOG._after_fork_in_child)
atexit.register(DECODER_LOG.drain)
