"""Where rows go: a result file written atomically and resumable, or a stream.

`ResultFile` (a regular file as the target, `-o scores.csv`):
- rows go to `scores.csv.partial` (a `RowStore`) in the target's folder, committed every
  `flush_rows` rows; the target is untouched until the run finishes, when the rows are
  written in input order to `scores.csv.partial.tmp`, synced, and renamed over it
  (`os.replace`), and the partial file is removed. A run that dies leaves the previous
  target as it was and the partial file holding every committed row.
- mode "new" refuses a target or a partial file that exists; "overwrite" starts over
  (the old target stays until the new one replaces it); "resume" continues the partial
  file, else starts from the rows of a finished target, else from nothing.
- `inputs(paths)` is the filter between the inputs and any scorer: it passes on the
  inputs that have no row yet, in order, and remembers each one's place; `write(row)`
  takes rows from any source (a `Scorer`, a server client) in any order.

`StreamOutput` (stdout, or a target that is not a regular file such as a pipe or
/dev/full): rows are written as they come; nothing to resume.

Failures to write become `OutputError` (one line: the path and the cause); a target that
would destroy something becomes `OutputRefused`.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pmtiqa_deploy.errors import OutputError, OutputRefused
from pmtiqa_deploy.output.formats import COLUMNS, RowWriter, parquet_module, read_rows
from pmtiqa_deploy.output.store import RowStore

MODES = ("new", "overwrite", "resume")
# A claim lost to a kill is only redone by the next resume, so claims are committed more
# rarely than rows: this many claims weigh as much as one new row.
CLAIMS_PER_ROW = 256
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Summary:
    """What a finished output holds: `rows` for this run's inputs (`failed` of them error
    rows, `resumed` of them found already written), plus `kept` rows of paths that were
    not among this run's inputs (from an earlier run, kept after the others)."""

    rows: int
    failed: int
    resumed: int = 0
    kept: int = 0


def _as_row(row: Any) -> Mapping[str, Any]:
    return row.to_dict() if hasattr(row, "to_dict") else row


def _sqlite_cause(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return os.strerror(28)  # ENOSPC
    if name.startswith("SQLITE_READONLY"):
        return os.strerror(30)  # EROFS
    if name.startswith("SQLITE_IOERR"):
        return os.strerror(5)  # EIO
    return str(exc)


class StreamOutput:
    """Rows written straight to a binary stream (stdout, a pipe, a device). Nothing is
    written (not even a CSV header) before the first row or `finish`, so a run that
    cannot start leaves stdout empty."""

    def __init__(self, stream: IO[bytes], name: str, fmt: str, columns: Sequence[str] = COLUMNS,
                 flush_rows: int = 64, *, owns_stream: bool = False):
        self.name, self.flush_rows, self.resumed = name, flush_rows, 0
        self.fmt, self.columns = fmt, tuple(columns)
        self._stream, self._owns = stream, owns_stream
        self._writer: RowWriter | None = None
        self._count = self._failed = 0
        self._finished = False

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise OutputError(self.name, exc.strerror or str(exc)) from None

    def _started(self) -> RowWriter:
        if self._writer is None:
            self._writer = RowWriter(self._stream, self.fmt, self.columns)
        return self._writer

    def inputs(self, paths: Iterable[Any]) -> Iterator[Any]:
        return iter(paths)

    def write(self, row: Any) -> None:
        record = _as_row(row)
        with self._errors():
            writer = self._started()
            writer.write(record)
            self._count += 1
            self._failed += record.get("error") is not None
            if self._count % self.flush_rows == 0:
                writer.flush()

    def finish(self) -> Summary:
        with self._errors():
            self._started().close()
            self._finished = True
            self._stream.flush()
            if self._owns:
                self._stream.close()
        return Summary(self._count, self._failed)

    def close(self) -> None:
        """After a failure: push out what was written (a JSON array stays unclosed)."""
        if self._finished:
            return
        try:
            if self._writer is not None:
                self._writer.release()
            self._stream.flush()
        except OSError:
            pass
        if self._owns:
            try:
                self._stream.close()
            except OSError:
                pass

    def __enter__(self) -> StreamOutput:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ResultFile:
    """A regular file written atomically, resumable (see the module docstring)."""

    def __init__(self, target: str | os.PathLike, fmt: str, *, mode: str = "new",
                 columns: Sequence[str] = COLUMNS, flush_rows: int = 64):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if fmt == "parquet":
            parquet_module()  # missing pyarrow is said now, not after the run
        # A link is followed: the file it names is replaced, and the link stays.
        self.target = Path(os.path.realpath(target) if os.path.islink(target) else target)
        self.partial = self.target.with_name(self.target.name + PARTIAL_SUFFIX)
        self.fmt, self.mode, self.columns, self.flush_rows = fmt, mode, tuple(columns), flush_rows
        self.resumed = 0
        self.imported = 0  # rows read from a finished target to resume from it
        self._lock = threading.Lock()  # write() may be called from any thread
        self._places: dict[str, deque[int]] = defaultdict(deque)
        self._next = 0
        self._pending = 0.0
        if not self.partial.exists():
            self._refuse_to_destroy()  # before a partial file is made
        self.store = self._open_store()
        self._lookup = not self.store.empty

    # --- opening -------------------------------------------------------------------------

    def _refuse_to_destroy(self, store: RowStore | None = None) -> None:
        """In mode "new": refuse a partial file that holds rows (`store`, once open; a run
        killed before its first row left nothing to lose), else a target that exists."""
        if self.mode != "new":
            return
        if store is not None and not store.empty:
            raise OutputRefused(f"{self.partial} holds the rows of an unfinished run into "
                                f"{self.target}: pass --resume to continue it, or --overwrite "
                                "to discard it and start over")
        if self.target.exists():
            raise OutputRefused(f"{self.target} exists: pass --overwrite to replace it (it is "
                                "kept until this run finishes), or --resume to score only the "
                                "inputs it has no row for")

    def _open_store(self) -> RowStore:
        folder = self.target.parent
        if not folder.is_dir():
            raise OutputError(str(folder), "folder does not exist; create it first")
        had_partial = self.partial.exists()
        try:
            store = self._open_partial()
        except BaseException:
            if not had_partial:
                with suppress(OSError):  # the file system that refused it may refuse this too
                    self._remove_partial()
            raise
        try:
            self._refuse_to_destroy(store)
        except OutputRefused:
            store.abandon()
            raise
        if self.mode == "resume" and not had_partial and self.target.is_file():
            try:
                with self._errors(self.partial):
                    self.imported = store.add_all(read_rows(self.target, self.fmt))
                    store.commit()
            except (ValueError, KeyError, UnicodeDecodeError) as exc:
                store.abandon()
                self._remove_partial()
                raise OutputRefused(f"cannot resume from {self.target}: it is not a {self.fmt} "
                                    f"output of pmtiqa-score ({exc}); pass --format to name its "
                                    "format, or --overwrite to replace it") from None
        return store

    def _open_partial(self) -> RowStore:
        with self._errors(self.partial):
            # Create it here, so a refusal by the file system (EACCES, EROFS, ENOSPC) comes
            # with its errno rather than SQLite's "unable to open database file".
            os.close(os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644))
            try:
                store = RowStore(self.partial, self.columns, fresh=self.mode == "overwrite")
            except sqlite3.DatabaseError as exc:
                name = getattr(exc, "sqlite_errorname", "")
                if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                    raise OutputRefused(f"another run is writing {self.target} (its rows go to "
                                        f"{self.partial}); wait for it to finish") from None
                if name not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                    raise
                if self.mode != "overwrite":
                    raise OutputRefused(f"{self.partial} is not a partial output of pmtiqa-score "
                                        f"({exc}): move it away, or pass --overwrite") from None
                self._remove_partial()  # --overwrite: a damaged partial file is discarded too
                store = RowStore(self.partial, self.columns, fresh=True)
            except ValueError as exc:
                raise OutputRefused(str(exc)) from None
        return store

    @contextmanager
    def _errors(self, path: Path) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise OutputError(str(path), exc.strerror or str(exc), kept=self._kept()) from None
        except sqlite3.DatabaseError as exc:
            raise OutputError(str(path), _sqlite_cause(exc), kept=self._kept()) from None

    def _kept(self) -> str | None:
        return str(self.partial) if getattr(self, "store", None) is not None else None

    # --- rows ----------------------------------------------------------------------------

    def inputs(self, paths: Iterable[Any]) -> Iterator[Any]:
        """The inputs that still need a row, in order (the others count as `resumed`)."""
        for path in paths:
            seq, self._next = self._next, self._next + 1
            key = os.fspath(path)
            with self._lock:
                if self._lookup:
                    with self._errors(self.partial):
                        claimed = self.store.claim(key, seq)
                    if claimed:
                        self.resumed += 1
                        self._count(1 / CLAIMS_PER_ROW)
                        continue
                self._places[key].append(seq)
            yield path

    def write(self, row: Any) -> None:
        """Record one input's row (from any source, any thread; its path must have come
        out of `inputs`)."""
        record = _as_row(row)
        key = os.fspath(record["path"])
        with self._lock, self._errors(self.partial):
            places = self._places.get(key)
            if not places:
                raise ValueError(f"a row for {key!r}, which is not an input waiting for one")
            seq = places.popleft()
            if not places:
                del self._places[key]
            self.store.add(record, seq)
            self._count()

    def _count(self, weight: float = 1.0) -> None:
        self._pending += weight
        if self._pending >= self.flush_rows:
            self.store.commit()
            self._pending = 0.0

    def finish(self) -> Summary:
        """Write the target in input order and replace the old one atomically."""
        if self._places:
            waiting = next(iter(self._places))
            raise ValueError(f"{sum(map(len, self._places.values()))} input(s) got no row "
                             f"(the first: {waiting!r}); every input from `inputs` needs one")
        with self._errors(self.partial):
            self.store.commit()
            rows, failed, kept = self.store.counts()
        temporary = self.partial.with_name(self.partial.name + ".tmp")
        with self._errors(temporary):
            try:
                with open(temporary, "wb") as stream:
                    writer = RowWriter(stream, self.fmt, self.columns)
                    for row in self.store.rows():
                        writer.write(row)
                    writer.close()
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, self.target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        with self._errors(self.target.parent):
            _sync_folder(self.target.parent)
            self.store.close()
            self.store = None  # type: ignore[assignment]
            self._remove_partial()
        return Summary(rows, failed, self.resumed, kept)

    def _remove_partial(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.partial}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        """Keep the rows so far (after a failure or an interrupt): commit and close. A
        partial file without a row is removed: there is nothing to resume."""
        if self.store is not None:
            try:
                empty = self.store.empty
                self.store.close()
            except sqlite3.Error:
                empty = False
            self.store = None  # type: ignore[assignment]
            if empty:
                self._remove_partial()

    def __enter__(self) -> ResultFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power loss."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def is_stream(target: str | os.PathLike) -> bool:
    """Whether `target` is written as a stream, not replaced: it exists and is not a
    regular file (a device, pipe or socket), or it is a name under /dev or /proc such as
    /dev/stdout (no file is ever created or replaced there; /dev/shm is a plain folder)."""
    name = os.path.abspath(target)
    if name.startswith(("/dev/", "/proc/")) and not name.startswith("/dev/shm/"):
        return True
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
