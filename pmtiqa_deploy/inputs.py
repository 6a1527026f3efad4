"""Input paths for scoring: files, folders and list files, expanded lazily and in a fixed
order, so scoring a folder of a million images never holds more than one directory's
names in memory and two runs over the same inputs give their rows in the same order.

- a file is scored whatever its extension (the user named it; a non-image becomes an
  error row, not a silent skip), and a path that does not exist becomes an error row too;
- a folder is walked recursively, entries sorted by name, keeping the files whose
  extension is an image extension (case-insensitive) and skipping hidden files and folders;
- `@list.txt` (or `--list list.txt` on the command line) is a list file: one path per
  line, each treated like a path on the command line; blank lines and lines starting
  with `#` are skipped. Relative paths in a list file are relative to the current
  directory, as they would be on the command line (so `find photos -name '*.jpg' >
  list.txt` works as is).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pmtiqa_deploy.errors import InputError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".sr", ".ras",
})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str | os.PathLike) -> Iterator[Path]:
    """The image files under `folder`, recursively, sorted by name within each folder
    (files and sub-folders interleaved by name, as `ls -R` would order them).
    Symbolic links to folders are not followed (no cycles); links to files are."""
    try:
        with os.scandir(os.fspath(folder)) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        raise InputError(f"cannot list folder {folder} ({exc.strerror})") from None
    for entry in entries:
        name = str(entry.name)
        if name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk_images(entry.path)
        elif is_image_name(name) and entry.is_file():
            yield Path(entry.path)


def read_list_file(list_file: str | os.PathLike) -> Iterator[str]:
    """The entries of a list file, one a line, read lazily (blank lines and `#` comments
    skipped; surrounding whitespace stripped)."""
    try:
        handle = open(list_file, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read list file {list_file} ({exc.strerror}); it should hold "
                         "one image path per line") from None
    with handle:
        for line in handle:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield entry


def expand_path(source: str | os.PathLike) -> Iterator[Path]:
    """One command-line argument: `@list.txt`, a folder, or a file (kept even when it
    does not exist, so it gets its own error row)."""
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith("@"):
        for entry in read_list_file(text[1:]):
            yield from expand_path(Path(entry))
        return
    path = Path(text)
    if path.is_dir():
        yield from walk_images(path)
    else:
        yield path


def iter_paths(sources: Iterable[str | os.PathLike],
               list_files: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Every input path, lazily: `sources` in order (each expanded by `expand_path`),
    then the entries of each list file in `list_files`."""
    for source in sources:
        yield from expand_path(source)
    for list_file in list_files:
        for entry in read_list_file(list_file):
            yield from expand_path(Path(entry))


def check_list_files(sources: Iterable[str | os.PathLike],
                     list_files: Iterable[str | os.PathLike] = ()) -> None:
    """Raise InputError now, before any scoring, when a named list file cannot be read."""
    names = [os.fspath(s)[1:] for s in sources if isinstance(s, str) and s.startswith("@")]
    for name in names + [os.fspath(f) for f in list_files]:
        if not os.path.isfile(name) or not os.access(name, os.R_OK):
            raise InputError(f"list file {name} does not exist or cannot be read; it should hold "
                             "one image path per line")


def count_paths(sources: Iterable[str | os.PathLike],
                list_files: Iterable[str | os.PathLike] = ()) -> int:
    """How many inputs `iter_paths` gives (a second, name-only pass: for progress totals)."""
    return sum(1 for _ in iter_paths(sources, list_files))
