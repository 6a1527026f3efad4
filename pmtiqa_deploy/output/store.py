"""The rows of an unfinished run, in a SQLite file beside the output (`scores.csv.partial`).

Why SQLite (the standard library's): every commit is atomic, so a run killed at any
instant (SIGKILL, OOM killer, a pre-empted node) leaves every committed row readable and
no torn one; lookups by path are indexed, so resuming a run over millions of inputs needs
no memory per input; and rows come back in input order with one ORDER BY.

Each row keeps its place in the input order (`seq`) and the run that last matched it to
an input (`claimed`). A resumed run renumbers: every input that already has a row claims
that row (the first unclaimed one with its path: an input listed twice needs two rows)
and takes its new place; the others are scored and added. Rows no run has claimed this
time (their path is no longer an input) are kept and come after the inputs' rows.

The connection holds an exclusive lock from its first write until it closes, so two runs
cannot write one output. WAL journal, synchronous=NORMAL: a killed process loses at most
the rows of the commit in flight, and power loss cannot corrupt the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pmtiqa_deploy.errors import OutputRefused
from pmtiqa_deploy.output.names import quote_path, unquote_path

SCHEMA = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    seq INTEGER NOT NULL,       -- place in the input order of the run that claimed it
    claimed INTEGER NOT NULL,   -- that run's number
    path TEXT NOT NULL,         -- quoted as in every output (valid UTF-8)
    score REAL, level INTEGER, error TEXT,
    extra TEXT                  -- the extra columns, a JSON object, or NULL
);
CREATE INDEX IF NOT EXISTS rows_by_path ON rows (path, claimed, seq);
CREATE INDEX IF NOT EXISTS rows_by_place ON rows (claimed, seq);
"""


class RowStore:
    """One partial output. `run` is this open's number; `claim` and `add` record rows of
    this run; `commit` makes them survive a kill; `rows` reads them back in order."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], *, fresh: bool = False):
        """Open (or create) the store at `path`; `fresh` discards any rows it holds."""
        self.path = os.fspath(path)
        self.columns = tuple(columns)
        # isolation_level=None: transactions are begun and committed here, explicitly.
        self._db = sqlite3.connect(self.path, timeout=1.0, isolation_level=None,
                                   check_same_thread=False)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_TABLES)
            # The write lock, held from here until close: a second run stops here.
            self._db.execute("BEGIN IMMEDIATE")
            if fresh:
                self._db.execute("DELETE FROM rows")
                self._db.execute("DELETE FROM meta")
            self._check_meta()
            self.run = int(self._meta("runs") or "0") + 1
            self._set_meta("runs", str(self.run))
        except BaseException:
            self._db.close()
            raise

    def _meta(self, key: str, default: str | None = None) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else default

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _check_meta(self) -> None:
        schema = self._meta("schema")
        columns = self._meta("columns")
        if schema is None:
            self._set_meta("schema", str(SCHEMA))
            self._set_meta("columns", json.dumps(self.columns))
        elif int(schema) != SCHEMA:
            raise ValueError(f"{self.path} was written by another version of pmtiqa-deploy "
                             f"(schema {schema}); finish it with that version or start over")
        elif columns is not None and tuple(json.loads(columns)) != self.columns:
            raise ValueError(f"{self.path} holds rows with columns {json.loads(columns)}, not "
                             f"{list(self.columns)}; resume with the same columns or start over")

    @property
    def empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM rows").fetchone()[0])

    def claim(self, path: str, seq: int) -> bool:
        """Give the first row of `path` not yet claimed by this run the place `seq`.
        False when there is none (the input still needs a row)."""
        cursor = self._db.execute(
            "UPDATE rows SET seq = ?, claimed = ? WHERE rowid = (SELECT rowid FROM rows "
            "WHERE path = ? AND claimed < ? ORDER BY claimed DESC, seq LIMIT 1)",
            (seq, self.run, quote_path(path), self.run))
        return cursor.rowcount == 1

    def add(self, row: Mapping[str, Any], seq: int, claimed: int | None = None) -> None:
        extra = {c: row.get(c) for c in self.columns[4:]}
        self._db.execute(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, self.run if claimed is None else claimed, quote_path(row["path"]),
             row.get("score"), row.get("level"), row.get("error"),
             json.dumps(extra, ensure_ascii=False) if extra else None))

    def add_all(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Rows of a finished output being resumed, in its order, claimed by no run yet."""
        count = 0
        for count, row in enumerate(rows, 1):
            self.add(row, count - 1, claimed=0)
        return count

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def counts(self) -> tuple[int, int, int]:
        """(rows claimed by this run, of which failed, rows no input claimed)."""
        mine, failed = self._db.execute(
            "SELECT count(*), count(error) FROM rows WHERE claimed = ?", (self.run,)).fetchone()
        return int(mine), int(failed), len(self) - int(mine)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row: this run's in input order, then unclaimed ones in their old order."""
        cursor = self._db.execute(
            "SELECT path, score, level, error, extra FROM rows ORDER BY claimed != ?, seq",
            (self.run,))
        for path, score, level, error, extra in cursor:
            row = {"path": unquote_path(path), "score": score, "level": level, "error": error}
            if extra is not None:
                row.update(json.loads(extra))
            yield row

    def close(self) -> None:
        """Commit what is pending and close (the file stays, for --resume)."""
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._db.close()

    def abandon(self) -> None:
        """Close without committing the open transaction."""
        self._db.close()


def stored_paths(path: str | os.PathLike) -> Iterator[str]:
    """The paths (unquoted) that have a row in the store at `path`, read without taking
    the writer's lock: a store a run is writing now is refused as "database is locked"."""
    db = sqlite3.connect(os.fspath(path), timeout=0.2)
    try:
        try:
            cursor = db.execute("SELECT path FROM rows")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise OutputRefused(f"{path} is being written by a run now; read it when that "
                                    "run has finished or stopped") from None
            if "no such table" in str(exc):  # a run killed before it made its tables
                return
            raise
        for (quoted,) in cursor:
            yield unquote_path(quoted)
    finally:
        db.close()
