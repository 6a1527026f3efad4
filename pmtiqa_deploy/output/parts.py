"""A dataset of part files: rows written by many writers (a Ray Data job's blocks), one
folder, one file per part.

Each part is written under a hidden temporary name in the folder, synced, and renamed to
`part-<name>.<format>`, so it appears whole or not at all: a reader (pyarrow.dataset,
Spark, DuckDB, this module) never sees a torn part, and the finished parts of a killed
job are exactly the rows it keeps. Resuming such a job means scoring the inputs that
`recorded_paths` lacks and writing them as new parts. Part names must be unique among
writers (a job id and a block number, say); rows within a part keep the order given.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pmtiqa_deploy.errors import OutputError, OutputRefused
from pmtiqa_deploy.output.formats import COLUMNS, FORMATS, RowWriter, read_rows

_TEMPORARY = ".writing-"


class PartFolder:
    """The part files of one output folder, in format `fmt` (parquet, csv, jsonl, json)."""

    def __init__(self, folder: str | os.PathLike, fmt: str = "parquet",
                 columns: Sequence[str] = COLUMNS):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.folder, self.fmt, self.columns = Path(folder), fmt, tuple(columns)

    def parts(self) -> list[Path]:
        """The finished parts, sorted by name."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"part-*.{self.fmt}"))

    def write_part(self, rows: Iterable[Mapping[str, Any]], name: str) -> Path:
        """Write one part atomically; its path. Refuses a name that exists already."""
        final = self.folder / f"part-{name}.{self.fmt}"
        if "/" in name or final.exists():
            raise OutputRefused(f"part {final} exists or is not a plain name: give each part "
                                "a name of its own")
        temporary = self.folder / f"{_TEMPORARY}{uuid.uuid4().hex}-{final.name}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as stream:
                writer = RowWriter(stream, self.fmt, self.columns)
                for row in rows:
                    writer.write(row)
                writer.close()
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, final)
        except OSError as exc:
            raise OutputError(str(temporary), exc.strerror or str(exc)) from None
        finally:
            temporary.unlink(missing_ok=True)
        return final

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every finished part's rows, part by part."""
        for part in self.parts():
            yield from read_rows(part, self.fmt)

    def recorded_paths(self) -> set[str]:
        """The inputs that have a row in a finished part (unquoted paths)."""
        return {row["path"] for row in self.rows()}

    def remove_temporaries(self) -> int:
        """Delete what killed writers left half-written (call when no writer runs)."""
        leftovers = list(self.folder.glob(f"{_TEMPORARY}*")) if self.folder.is_dir() else []
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return len(leftovers)
