"""Rows (path, score, level, error, and any extra columns) written once for every way of
scoring: `pmtiqa-score`, a Ray Data job, a Triton client. Atomic files, resume and the
formats live here and nowhere else.

    from pmtiqa_deploy.output import open_output
    with Scorer.open(model_dir) as scorer, open_output("scores.csv", mode="resume") as out:
        for row in scorer.score_files(out.inputs(paths)):
            out.write(row)
        summary = out.finish()

- `open_output(target, fmt, mode=...)`: a `ResultFile` for a file path (atomic, resumable),
  a `StreamOutput` for None (stdout) or a device or pipe.
- `inputs(paths)` yields the inputs that still need a row and remembers their places;
  `write(row)` takes a `ScoreRow` or a mapping, from any source, in any order;
  `finish()` writes the target in input order and returns a `Summary`.
- `read_rows(path, fmt)` reads a finished output back; `recorded_paths` gives the set of
  inputs that already have a row in a finished or partial output, or a folder of parts.
- `PartFolder`: a dataset of part files (Parquet for a Ray job), each appearing whole or
  not at all.
- `quote_path` / `unquote_path`: the one text form of a file name in every format.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pmtiqa_deploy.output.formats import (
    COLUMNS,
    FORMATS,
    TEXT_FORMATS,
    RowWriter,
    columns_for,
    format_for,
    read_rows,
)
from pmtiqa_deploy.output.names import quote_path, unquote_path
from pmtiqa_deploy.output.parts import PartFolder
from pmtiqa_deploy.errors import OutputError
from pmtiqa_deploy.output.store import RowStore, stored_paths
from pmtiqa_deploy.output.target import (
    MODES,
    PARTIAL_SUFFIX,
    ResultFile,
    StreamOutput,
    Summary,
    is_stream,
)

__all__ = [
    "COLUMNS", "FORMATS", "MODES", "PARTIAL_SUFFIX", "TEXT_FORMATS", "PartFolder", "ResultFile", "RowStore",
    "RowWriter", "StreamOutput", "Summary", "columns_for", "format_for", "is_stream",
    "open_output", "quote_path", "read_rows", "recorded_paths", "stored_paths", "unquote_path",
]


def open_output(target: str | os.PathLike | None, fmt: str | None = None, *, mode: str = "new",
                extra_columns: Sequence[str] = (), flush_rows: int = 64) -> ResultFile | StreamOutput:
    """Where rows go: None is stdout; an existing device, pipe or socket is a stream;
    anything else is a `ResultFile` (`mode`: new, overwrite or resume)."""
    fmt = format_for(fmt, target)
    columns = columns_for(extra_columns)
    if target is not None and not is_stream(target):
        return ResultFile(target, fmt, mode=mode, columns=columns, flush_rows=flush_rows)
    if mode == "resume":
        raise ValueError(f"resume needs a regular output file, not {target or 'stdout'}")
    if target is None:
        sys.stdout.flush()
        return StreamOutput(sys.stdout.buffer, "<stdout>", fmt, columns, flush_rows)
    try:
        stream = open(target, "wb")
    except OSError as exc:
        raise OutputError(os.fspath(target), exc.strerror or str(exc)) from None
    return StreamOutput(stream, os.fspath(target), fmt, columns, flush_rows, owns_stream=True)


def recorded_paths(target: str | os.PathLike, fmt: str | None = None) -> set[str]:
    """The paths that already have a row: in the finished parts when `target` is a folder
    (`PartFolder`, parquet unless `fmt` says otherwise); in `target`'s partial file when
    there is one (an unfinished run), else in the finished `target`, else none. Each path
    as the os functions take it (unquoted)."""
    target = Path(target)
    if target.is_dir():
        return PartFolder(target, fmt or "parquet").recorded_paths()
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    fmt = format_for(fmt, target)
    if partial.exists():
        return set(stored_paths(partial))
    if target.is_file():
        return {row["path"] for row in read_rows(target, fmt)}
    return set()
