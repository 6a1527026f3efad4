"""Input paths for scoring: files, folders and list files, expanded lazily and in a fixed
order, so scoring a folder of a million images never holds more than one directory's
names in memory and two runs over the same inputs give their rows in the same order.

- a file is scored whatever its extension (the user named it; a non-image becomes an
  error row, not a silent skip), and a path that does not exist becomes an error row too;
- a folder is walked recursively, entries sorted by name, keeping the files whose
  extension is an image extension (case-insensitive) and skipping hidden files and folders;
  a symbolic link with an image extension that is broken or loops, and a sub-folder that
  cannot be listed, are kept too (each gets an error row, nothing is dropped unseen);
  other files are skipped and counted (`Inputs.skipped`);
- `@list.txt` (or `--list list.txt` on the command line) is a list file: one path per
  line, each treated like a path on the command line; blank lines and lines starting
  with `#` are skipped. Relative paths in a list file are relative to the current
  directory, as they would be on the command line (so `find photos -name '*.jpg' >
  list.txt` works as is, whatever bytes the names hold). A line in double quotes is a
  quoted path as outputs write it (`pmtiqa_deploy.output.names`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pmtiqa_deploy.errors import InputError, OutputRefused
from pmtiqa_deploy.output.names import unquote_path

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".sr", ".ras",
})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(folder: str | os.PathLike,
                skipped: Callable[[str], None] | None = None) -> Iterator[Path]:
    """The image files under `folder`, recursively, sorted by name within each folder
    (files and sub-folders interleaved by name, as `ls -R` would order them).
    Symbolic links to folders are not followed (no cycles); links to files are, and a
    broken or looping link with an image extension is yielded (it gets an error row).
    A folder that cannot be listed is yielded itself, for its error row. Every other
    file (not an image extension; a pipe, socket or device) is passed to `skipped`."""
    try:
        with os.scandir(os.fspath(folder)) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:
        yield Path(folder)
        return
    for entry in entries:
        name = os.fsdecode(entry.name)
        if name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from walk_images(entry.path, skipped)
        elif is_image_name(name) and _is_file_or_broken_link(entry):
            yield Path(entry.path)
        elif skipped is not None:
            skipped(entry.path)


def _is_file_or_broken_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:  # ELOOP and the like: the link is broken
        return True


def read_list_file(list_file: str | os.PathLike) -> Iterator[str]:
    """The entries of a list file, one a line, read lazily (blank lines and `#` comments
    skipped; surrounding whitespace stripped)."""
    try:
        # surrogateescape: a name that is not UTF-8 (as `find` writes it) names its file
        handle = open(list_file, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise InputError(f"cannot read list file {list_file} ({exc.strerror}); it should hold "
                         "one image path per line") from None
    with handle:
        for line in handle:
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield unquote_path(entry)


def expand_path(source: str | os.PathLike,
                skipped: Callable[[str], None] | None = None) -> Iterator[Path]:
    """One command-line argument: `@list.txt`, a folder, or a file (kept even when it
    does not exist, so it gets its own error row)."""
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith("@"):
        for entry in read_list_file(text[1:]):
            yield from expand_path(Path(entry), skipped)
        return
    path = Path(text)
    if path.is_dir():
        yield from walk_images(path, skipped)
    else:
        yield path


class Inputs:
    """Every input path, lazily: `sources` in order (each expanded by `expand_path`),
    then the entries of each list file in `list_files`. `skipped` counts the files
    folder scans passed over (not an image extension, or not a regular file)."""

    def __init__(self, sources: Iterable[str | os.PathLike],
                 list_files: Iterable[str | os.PathLike] = ()):
        self.sources, self.list_files = list(sources), list(list_files)
        self.skipped = 0

    def _skip(self, path: str) -> None:
        self.skipped += 1

    def __iter__(self) -> Iterator[Path]:
        self.skipped = 0
        for source in self.sources:
            yield from expand_path(source, self._skip)
        for list_file in self.list_files:
            for entry in read_list_file(list_file):
                yield from expand_path(Path(entry), self._skip)


def iter_paths(sources: Iterable[str | os.PathLike],
               list_files: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Every input path, lazily (`Inputs` without the count of skipped files)."""
    return iter(Inputs(sources, list_files))


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


def check_output_not_input(output: str | os.PathLike, sources: Iterable[str | os.PathLike],
                           list_files: Iterable[str | os.PathLike] = ()) -> None:
    """Raise OutputRefused, before anything is opened for writing, when the output would
    overwrite an input: a list file, a file named as an input, or a file a folder scan
    would pick up (inside a scanned folder, with an image extension, not hidden)."""
    target = os.path.realpath(output)
    named = [os.fspath(s) for s in sources]
    lists = [n[1:] for n in named if n.startswith("@")] + [os.fspath(f) for f in list_files]
    for name in lists:
        if os.path.realpath(name) == target:
            raise OutputRefused(f"the output {output} is the list file {name}: writing it would "
                                "destroy the list before it is read; choose another -o")
    for name in (n for n in named if not n.startswith("@")):
        real = os.path.realpath(name)
        if real == target:
            raise OutputRefused(f"the output {output} is the input {name}; choose another -o")
        if os.path.isdir(name) and _scan_would_find(real, target):
            raise OutputRefused(f"the output {output} is inside the scanned folder {name} and "
                                "has an image extension, so it would be scored as an input; "
                                "choose another -o")


def _scan_would_find(folder: str, target: str) -> bool:
    relative = os.path.relpath(target, folder)
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        return False
    parts = relative.split(os.sep)
    return is_image_name(parts[-1]) and not any(p.startswith(".") for p in parts)


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why an input that failed to read is no image file, in words, when the reason is
    its kind rather than its bytes: a broken or looping link, a folder that cannot be
    listed, a pipe or device. None for a plain file."""
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except OSError as exc:
        if os.path.islink(name):
            if exc.errno == errno.ELOOP:
                return "a symbolic link that loops (it leads back to itself)"
            return f"a broken symbolic link (its target {os.readlink(name)} does not exist)"
        return None
    if stat.S_ISDIR(mode):
        try:
            os.listdir(name)
        except OSError as exc:
            return f"a folder that cannot be listed ({exc.strerror})"
        return "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    return None
