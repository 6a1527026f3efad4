"""Row formats: writing rows to a binary stream and reading them back.

A row is a mapping with `path`, `score`, `level`, `error` and any extra columns the
caller declared (a manifest's `label`, say). `path` holds the file name as Python's os
functions take it; writers quote it and readers unquote it (`pmtiqa_deploy.output.names`),
so a name that is not UTF-8 survives a round trip in every format.

- csv: a header line, then one line a row; an empty field for None (a scored row's
  error, an error row's score and level).
- jsonl: one JSON object a line, None as null.
- json: an array of those objects, one a line.
- parquet (needs pyarrow: `pip install 'pmtiqa-deploy[parquet]'`): one file, written in
  row groups of `PARQUET_GROUP` rows; score float64, level int64, path and error strings.
Text formats are UTF-8 whatever the locale.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pmtiqa_deploy.output.names import quote_path, unquote_path

COLUMNS = ("path", "score", "level", "error")
TEXT_FORMATS = ("csv", "json", "jsonl")
FORMATS = (*TEXT_FORMATS, "parquet")
PARQUET_GROUP = 65536


def format_for(fmt: str | None, output: str | os.PathLike | None) -> str:
    """`fmt`, else the output file's suffix (.csv/.json/.jsonl/.parquet), else csv."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    suffix = Path(output).suffix.lower().lstrip(".") if output is not None else ""
    return suffix if suffix in FORMATS else "csv"


def columns_for(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The output's columns: the four of every row, then `extra` (which must not repeat them)."""
    clash = sorted(set(extra) & set(COLUMNS))
    if clash or len(set(extra)) != len(extra):
        raise ValueError(f"extra columns {list(extra)} repeat a column name"
                         f"{' (' + ', '.join(clash) + ' are the score columns)' if clash else ''}; "
                         "rename those columns")
    return (*COLUMNS, *extra)


class RowWriter:
    """Writes rows to a binary stream as they come, memory flat. `flush` pushes what is
    buffered to the OS; `close` ends the format (a JSON array's `]`, Parquet's footer)
    and flushes, but leaves the stream open."""

    def __init__(self, stream: IO[bytes], fmt: str, columns: Sequence[str] = COLUMNS):
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.fmt, self.columns, self.count = fmt, tuple(columns), 0
        self._parquet: Any = None
        self._pending: list[Mapping[str, Any]] = []
        if fmt == "parquet":
            self._parquet = _parquet_writer(stream, self.columns)
            return
        self._text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=False)
        if fmt == "csv":
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(self.columns)
        elif fmt == "json":
            self._text.write("[")

    def write(self, row: Mapping[str, Any]) -> None:
        if self._parquet is not None:
            self._pending.append(row)
            if len(self._pending) >= PARQUET_GROUP:
                self._write_group()
        else:
            values = {c: row.get(c) for c in self.columns}
            values["path"] = quote_path(row["path"])
            if self.fmt == "csv":
                self._csv.writerow(["" if values[c] is None else values[c] for c in self.columns])
            else:
                line = json.dumps(values, ensure_ascii=False)
                if self.fmt == "json":
                    line = ("\n  " if self.count == 0 else ",\n  ") + line
                else:
                    line += "\n"
                self._text.write(line)
        self.count += 1

    def flush(self) -> None:
        if self._parquet is None:
            self._text.flush()

    def close(self) -> None:
        if self._parquet is not None:
            self._write_group()
            self._parquet.close()
            return
        if self.fmt == "json":
            self._text.write("\n]\n" if self.count else "]\n")
        self._text.flush()
        self._text.detach()

    def _write_group(self) -> None:
        if self._pending:
            self._parquet.write_table(_arrow_table(self._pending, self.columns))
            self._pending.clear()


def read_rows(path: str | os.PathLike, fmt: str) -> Iterator[dict[str, Any]]:
    """The rows of a finished output file, lazily, with `path` unquoted. CSV values of
    extra columns come back as text (CSV has no types)."""
    if fmt == "parquet":
        yield from _read_parquet(path)
        return
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            for record in csv.DictReader(handle):
                yield _typed(record)
        elif fmt == "jsonl":
            for line in handle:
                if line.strip():
                    yield _unquoted(json.loads(line))
        elif fmt == "json":
            for record in json.load(handle):  # one document; a finished file is whole
                yield _unquoted(record)
        else:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _unquoted(record: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise ValueError(f"a row without a path: {record!r}")
    record["path"] = unquote_path(record["path"])
    return record


def _typed(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV record with None for empty fields and numbers for score and level."""
    row: dict[str, Any] = {k: (None if v == "" else v) for k, v in record.items()}
    if row.get("score") is not None:
        row["score"] = float(row["score"])
    if row.get("level") is not None:
        row["level"] = int(row["level"])
    return _unquoted(row)


# --- parquet (pyarrow, imported only when asked) ------------------------------------------

def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError("Parquet output needs pyarrow: pip install 'pmtiqa-deploy[parquet]'") from None
    return pyarrow


def _arrow_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    pa = _pyarrow()
    data: dict[str, list[Any]] = {c: [row.get(c) for row in rows] for c in columns}
    data["path"] = [quote_path(row["path"]) for row in rows]
    types = {"path": pa.string(), "score": pa.float64(), "level": pa.int64(), "error": pa.string()}
    return pa.table({c: pa.array(data[c], type=types.get(c)) for c in columns})


def _parquet_writer(stream: IO[bytes], columns: Sequence[str]) -> Any:
    pa = _pyarrow()
    # The schema is fixed by the first group for extra columns; score columns are typed.

    class _Lazy:
        def __init__(self) -> None:
            self.writer: Any = None

        def write_table(self, table: Any) -> None:
            if self.writer is None:
                self.writer = pa.parquet.ParquetWriter(stream, table.schema)
            self.writer.write_table(table.cast(self.writer.schema))

        def close(self) -> None:
            if self.writer is None:  # no rows: still a readable file with the columns
                self.write_table(_arrow_table([], [c for c in columns if c in COLUMNS]))
            self.writer.close()

    return _Lazy()


def _read_parquet(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    pa = _pyarrow()
    source = pa.parquet.ParquetFile(os.fspath(path))
    for batch in source.iter_batches(batch_size=PARQUET_GROUP):
        for record in batch.to_pylist():
            yield _unquoted(record)
