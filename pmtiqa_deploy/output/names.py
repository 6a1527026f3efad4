"""How a file name is written in a row's `path` column, in every output format.

Linux allows any bytes but `/` and NUL in a name, and names from other systems are often
not valid UTF-8; CSV, JSON and Parquet hold text. The scheme is git's quoted paths (as
`git ls-files` prints them with core.quotePath=false), quoting a few more names so that
every written path is also one line of a list file:

- a path whose bytes are valid UTF-8, with no control character (U+0000-U+001F, U+007F),
  not starting with `"` (a quoted path) or `#` (a list file's comment) and neither
  starting nor ending with white space (list lines are stripped), is written as it is;
- any other path is written between double quotes, with `\\"` and `\\\\` for a quote and a
  backslash, `\\a \\b \\t \\n \\v \\f \\r` for those controls, and three octal digits
  (`\\377`) for any other control byte and every byte that is not part of valid UTF-8;
  valid UTF-8 characters stay as they are.

So `photos/café.jpg` stays `photos/café.jpg`, and a Latin-1 name `photos/caf\\xe9.jpg`
becomes `"photos/caf\\351.jpg"`. `unquote_path` turns either back into the name that
opens the same file (for a non-UTF-8 name, the str Python's os functions use:
`os.fsdecode` of the bytes). List files accept the quoted form too, so a path copied from
an output names its file again.
"""

from __future__ import annotations

import os
import re

_NAMED = {7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r", 34: '"', 92: "\\"}
_UNNAMED = {letter: code for code, letter in _NAMED.items()}
_NEEDS_QUOTES = re.compile(r'[\x00-\x1f\x7f]|^["#\s]|\s$')
_ESCAPE = re.compile(r'\\([0-3][0-7]{2}|[abtnvfr"\\])')


def quote_path(path: str | bytes | os.PathLike) -> str:
    """The text that stands for `path` in an output (see the module docstring)."""
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not _NEEDS_QUOTES.search(text):
            return text
    out = ['"']
    position = 0
    while position < len(raw):
        try:
            # the longest valid UTF-8 run from here is kept as characters
            chunk = raw[position:].decode("utf-8")
            length = len(raw) - position
        except UnicodeDecodeError as exc:
            chunk = raw[position:position + exc.start].decode("utf-8")
            length = exc.start
        for char in chunk:
            code = ord(char)
            if code in _NAMED:
                out.append("\\" + _NAMED[code])
            elif code < 0x20 or code == 0x7F:
                out.append(f"\\{code:03o}")
            else:
                out.append(char)
        position += length
        if position < len(raw):  # a byte that starts no valid UTF-8 sequence
            out.append(f"\\{raw[position]:03o}")
            position += 1
    out.append('"')
    return "".join(out)


def unquote_path(text: str) -> str:
    """The file name `text` (as `quote_path` wrote it) stands for, as a str the os
    functions accept. Text that is not quoted is returned as it is."""
    if not (len(text) >= 2 and text.startswith('"') and text.endswith('"')):
        return text
    body = text[1:-1]
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(body):
        raw += body[position:match.start()].encode("utf-8", "surrogateescape")
        token = match.group(1)
        raw.append(int(token, 8) if token[0].isdigit() else _UNNAMED[token])
        position = match.end()
    raw += body[position:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(raw))
