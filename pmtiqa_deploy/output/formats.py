"""Row formats: writing rows to a binary stream and reading them back.

A row is a mapping with `path`, `score`, `level`, `error` and any extra columns the
caller declared (a manifest's `label`, say). `path` holds the file name as Python's os
functions take it; writers quote it and readers unquote it (`pmtiqa_deploy.output.names`),
so a name that is not UTF-8 survives a round trip in every format.

- csv: a header line, then one line a row; an empty field for None (a scored row's
  error, an error row's score and level).
- jsonl: one JSON object a line, None (and NaN) as null: strict JSON.
- json: an array of those objects, one a line.
- parquet (needs pyarrow: `pip install 'pmtiqa-deploy[parquet]'`): one file, written in
  row groups of `PARQUET_GROUP` rows; score float64, level int64, path and error strings.
Text formats are UTF-8 whatever the locale.
"""

from __future__ import annotations

import csv
import io
import json
import math
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
        if fmt == "parquet":
            self._parquet = _ParquetRows(stream, self.columns)
            return
        self._text: Any = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        if fmt == "csv":
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(self.columns)
        elif fmt == "json":
            self._text.write("[")

    def write(self, row: Mapping[str, Any]) -> None:
        if self.fmt == "parquet":
            self._parquet.write(row)
        else:
            values = {c: row.get(c) for c in self.columns}
            values["path"] = quote_path(row["path"])
            if self.fmt == "csv":
                self._csv.writerow(["" if values[c] is None else values[c] for c in self.columns])
            else:  # strict JSON: a missing number (NaN, as pandas gives) is null
                values = {c: None if isinstance(v, float) and not math.isfinite(v) else v
                          for c, v in values.items()}
                line = json.dumps(values, ensure_ascii=False, allow_nan=False)
                if self.fmt == "json":
                    line = ("\n  " if self.count == 0 else ",\n  ") + line
                else:
                    line += "\n"
                self._text.write(line)
        self.count += 1

    def flush(self) -> None:
        if self.fmt != "parquet":  # a Parquet file is readable only once closed
            self._text.flush()

    def release(self) -> None:
        """Flush what is written and let go of the stream without ending the format (after
        a failure), leaving the stream open for its owner."""
        if self.fmt != "parquet" and self._text is not None:
            text, self._text = self._text, None
            try:
                text.flush()
            finally:
                text.detach()

    def close(self) -> None:
        if self.fmt == "parquet":
            self._parquet.close()
            return
        if self.fmt == "json":
            self._text.write("\n]\n" if self.count else "]\n")
        self.release()


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
            yield from map(_unquoted, _json_array(handle))
        else:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _json_array(handle: IO[str]) -> Iterator[Any]:
    """The items of a JSON array, one line at a time when it is laid out as RowWriter
    writes it (`[`, one object a line, `]`), so a large file is never held whole; any
    other layout is parsed as one document."""
    lines = (line.strip() for line in handle)
    if next(lines, None) == "[":
        first = next(lines, "")
        try:
            item = json.loads(first.removesuffix(",")) if first != "]" else None
        except json.JSONDecodeError:
            item = None
        if first == "]":
            return
        if isinstance(item, dict):
            yield item
            for text in lines:
                if text == "]":
                    return
                yield json.loads(text.removesuffix(","))
            raise ValueError("a JSON array without its closing ]: the file is cut short")
    handle.seek(0)
    yield from json.load(handle)


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

def parquet_module() -> Any:
    """pyarrow, with pyarrow.parquet loaded; ImportError naming the extra when missing."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError("Parquet output needs pyarrow: pip install 'pmtiqa-deploy[parquet]'") from None
    return pyarrow


class _ParquetRows:
    """Rows gathered into row groups of PARQUET_GROUP. The score columns have fixed types;
    an extra column's type is inferred from its first group (all None: a null column)."""

    def __init__(self, stream: IO[bytes], columns: Sequence[str]):
        self.pa = parquet_module()
        self.stream, self.columns = stream, tuple(columns)
        self.types = {"path": self.pa.string(), "score": self.pa.float64(),
                      "level": self.pa.int64(), "error": self.pa.string()}
        self.pending: list[Mapping[str, Any]] = []
        self.writer: Any = None

    def write(self, row: Mapping[str, Any]) -> None:
        self.pending.append(row)
        if len(self.pending) >= PARQUET_GROUP:
            self._write_group()

    def _write_group(self) -> None:
        pa = self.pa
        values = {c: [row.get(c) for row in self.pending] for c in self.columns}
        values["path"] = [quote_path(row["path"]) for row in self.pending]
        arrays = {}
        for column in self.columns:
            try:
                arrays[column] = pa.array(values[column], type=self.types.get(column))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"column {column!r} mixes types, which Parquet cannot hold ({exc}); "
                                 "give it one type in every row") from None
        table = pa.table(arrays)
        if self.writer is None:
            self.writer = pa.parquet.ParquetWriter(self.stream, table.schema)
        try:
            self.writer.write_table(table.cast(self.writer.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"rows whose columns changed type from the first rows ({exc}); "
                             "give each column one type in every row") from None
        self.pending.clear()

    def close(self) -> None:
        if self.pending or self.writer is None:  # no rows at all: still a file with the columns
            self._write_group()
        self.writer.close()


def _read_parquet(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    pa = parquet_module()
    source = pa.parquet.ParquetFile(os.fspath(path))
    for batch in source.iter_batches(batch_size=PARQUET_GROUP):
        for record in batch.to_pylist():
            yield _unquoted(record)
