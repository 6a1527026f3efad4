"""The skip gate .ci/run applies after the tests: a skipped test must say that a GPU or a
library is missing, and no kind of skip may grow past the count .ci/expected-skips allows.

    python3 .ci/skip_gate.py JUNIT_XML .ci/expected-skips

Reads pytest's JUnit XML (every <skipped> element's message is the skip reason), sorts each
skip into the first category of .ci/expected-skips whose regular expression matches its
reason (re.search, ignoring case), and fails (exit 1), saying which test and why, when:
- a reason matches no category (a skip that names no missing GPU or library: a test that
  hid a failure, or a new kind of skip nobody has reviewed);
- a category holds more skips than its count (a GPU test was added without updating the
  list, or an install step broke and a library-dependent module now skips wholesale).
It prints the counts it saw, one line per category in the file's own format, so updating
the file after adding GPU-only tests is a copy of one line. Standard library only: it runs
before anything is installed and after everything is.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Category:
    name: str
    limit: int
    pattern: re.Pattern
    seen: int = 0


def read_categories(path: Path) -> list[Category]:
    """Lines `COUNT NAME: REGEX`; blank lines and # comments ignored."""
    categories = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = re.fullmatch(r"(\d+)\s+([\w-]+):\s*(.+)", line)
        if not found:
            sys.exit(f"{path}:{number}: expected 'COUNT NAME: REGEX', got {line!r}")
        categories.append(Category(found.group(2), int(found.group(1)), re.compile(found.group(3), re.I)))
    return categories


def read_skips(junit: Path) -> list[tuple[str, str]]:
    """(test id, skip reason) of every skipped test in a pytest JUnit XML file."""
    skips = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        for skipped in case.findall("skipped"):
            if skipped.get("type") == "pytest.xfail":
                continue
            test = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
            skips.append((test, skipped.get("message") or skipped.text or ""))
    return skips


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit("usage: skip_gate.py JUNIT_XML EXPECTED_SKIPS")
    junit, expected = Path(argv[0]), Path(argv[1])
    categories = read_categories(expected)
    failures = []
    for test, reason in read_skips(junit):
        category = next((c for c in categories if c.pattern.search(reason)), None)
        if category is None:
            failures.append(f"{test} skipped for a reason that names no missing GPU or library: "
                            f"{reason!r}. Fix the test (a failure must fail), or, if a GPU or library "
                            f"really is missing here, say which in the reason and add a category to {expected}")
        else:
            category.seen += 1
    print(f"skips by category (as {expected} would read them):")
    for category in categories:
        print(f"  {category.seen:<3} {category.name}: {category.pattern.pattern}"
              + (f"    <- more than the {category.limit} allowed" if category.seen > category.limit else ""))
        if category.seen > category.limit:
            failures.append(f"{category.seen} tests skipped as '{category.name}', {expected} allows "
                            f"{category.limit}: if the new skips are tests that need what this machine "
                            f"lacks (a GPU test added on purpose), raise the count there to {category.seen}; "
                            "otherwise find what stopped them running (a missing install step?)")
    for failure in failures:
        print(f"skip gate: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
