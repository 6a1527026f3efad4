"""Dataset readers: the public IQA datasets in their shipped layouts, the generic CSV
manifest, and the built-in dataset. Every reader returns a `Dataset`.

`load_dataset(name, root)` looks the reader up in `DATASETS`; `content_split` makes the
paper's random 80/20 split with no content on both sides; `inspect_dataset` summarises a
dataset and lists the files its index names that are not on disk. The seven public
readers live in `public_datasets.py`.

The CSV manifest (`csv`, and `builtin`, which is written in this format):
    manifest.csv    columns path,score (required), reference,split (optional); paths
                    relative to the CSV's folder
    manifest.json   optional, beside it: name, score_min, score_max, higher_is_better,
                    units, resize ("none" or "fixed"), width, height; any other key is an
                    error. Without it the range is the data's min..max, higher is better.
"""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.errors import DatasetError, SpecError
from pmtiqa_deploy.spec import ScoreSpec
from pmtiqa_deploy.train import public_datasets
from pmtiqa_deploy.train.public_datasets import make_dataset, parse_score, read_csv_table


@dataclass(frozen=True)
class Item:
    """One labelled image. `reference` names its source content (for content-disjoint
    splits); `split` is the dataset's own split label when it ships one."""

    path: Path
    score: float
    reference: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    items: tuple[Item, ...]
    score: ScoreSpec
    # Resize policy before cropping (PMT-IQA.md): "none", or "fixed" with width/height.
    resize: str = "none"
    width: int | None = None
    height: int | None = None


Reader = Callable[..., Dataset]

MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
MANIFEST_KEYS = ("name", "score_min", "score_max", "higher_is_better", "units", "resize", "width",
                 "height")
NUM_LEVELS = 10  # PMT-IQA's K
MAKE_BUILTIN = "run pmtiqa-data make-builtin --out DIR"


def read_csv_manifest(root: Path) -> Dataset:
    """The generic manifest: `root` is the CSV file or a folder holding manifest.csv."""
    path = root / MANIFEST_CSV if root.is_dir() else root
    if not path.is_file():
        raise DatasetError(f"csv: {path.name} not found under {path.parent}; expected a CSV with columns "
                           "path,score (and optionally reference,split), or pass the CSV file itself")
    table = read_csv_table(path, "csv", ["path", "score"],
                           "columns path,score and optionally reference,split")
    rows = []
    for number, row in enumerate(table, start=2):
        if not row["path"]:
            raise DatasetError(f"{path} line {number}: the path is empty")
        rows.append((path.parent / row["path"], parse_score(row["score"], f"{path} line {number}"),
                     row.get("reference") or None, row.get("split") or None))
    if not rows:
        raise DatasetError(f"csv: {path} lists no images; expected one row per image after the header")
    sidecar = path.parent / MANIFEST_JSON
    meta = _sidecar(sidecar)
    name = meta.get("name", "csv")
    scores = [score for _, score, _, _ in rows]
    low, high = meta.get("score_min", min(scores)), meta.get("score_max", max(scores))
    if not high > low:
        raise DatasetError(f"{path}: the score range {low}..{high} is empty; set score_min < score_max "
                           f"in {sidecar}, or list at least two distinct scores")
    outside = [(p, s) for p, s, _, _ in rows if not low <= s <= high]
    if outside:
        raise DatasetError(f"{path}: {len(outside)} score(s) lie outside score_min..score_max = "
                           f"{low}..{high} of {sidecar}, e.g. {outside[0][1]} for {outside[0][0]}; "
                           "widen the range there")
    try:
        score = ScoreSpec.from_levels(float(low), float(high), NUM_LEVELS, units=meta.get("units", "MOS"),
                                      higher_is_better=meta.get("higher_is_better", True), dataset=name)
    except SpecError as exc:
        raise DatasetError(f"{sidecar}: {exc}") from None
    return make_dataset(name, path.parent, rows, score, resize=meta.get("resize", "none"),
                        width=meta.get("width"), height=meta.get("height"))


def _sidecar(path: Path) -> dict[str, Any]:
    """The manifest's JSON sidecar, checked key by key; {} where there is none."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); expected an object with keys "
                           f"{list(MANIFEST_KEYS)}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object with keys {list(MANIFEST_KEYS)}")
    unknown = sorted(set(meta) - set(MANIFEST_KEYS))
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {unknown}; the keys are {list(MANIFEST_KEYS)}")

    def bad(key: str, wanted: str) -> DatasetError:
        return DatasetError(f"{path}: {key} must be {wanted}, got {meta[key]!r}")

    for key in ("name", "units"):
        if key in meta and not (isinstance(meta[key], str) and meta[key]):
            raise bad(key, "a non-empty string")
    for key in ("score_min", "score_max"):
        if key in meta and (isinstance(meta[key], bool) or not isinstance(meta[key], (int, float))):
            raise bad(key, "a number")
    if "higher_is_better" in meta and not isinstance(meta["higher_is_better"], bool):
        raise bad("higher_is_better", "true or false")
    for key in ("width", "height"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(key, "a positive integer or null")
    resize = meta.get("resize", "none")
    if resize not in ("none", "fixed"):
        raise bad("resize", "'none' or 'fixed'")
    sized = meta.get("width") is not None, meta.get("height") is not None
    if resize == "fixed" and not all(sized):
        raise DatasetError(f"{path}: resize 'fixed' needs width and height")
    if resize == "none" and any(sized):
        raise DatasetError(f"{path}: width and height are only for resize 'fixed'; set them to null")
    return meta


def read_builtin(root: Path) -> Dataset:
    """The built-in dataset: a CSV manifest folder written by `make_builtin`."""
    for name in (MANIFEST_CSV, MANIFEST_JSON):
        if not (root / name).is_file():
            raise DatasetError(f"builtin: {name} not found under {root}; expected the built-in dataset "
                               f"there: {MAKE_BUILTIN} to build it")
    dataset = read_csv_manifest(root)
    if dataset.name != "builtin":
        raise DatasetError(f"builtin: {root / MANIFEST_JSON} names the dataset {dataset.name!r}; read it "
                           f"as --dataset csv, or {MAKE_BUILTIN} into another folder")
    return dataset


DATASETS: dict[str, Reader] = {
    "builtin": read_builtin,
    "csv": read_csv_manifest,
    "livec": public_datasets.read_livec,
    "koniq": public_datasets.read_koniq,
    "kadid": public_datasets.read_kadid,
    "bid": public_datasets.read_bid,
    "live": public_datasets.read_live,
    "csiq": public_datasets.read_csiq,
    "spaq": public_datasets.read_spaq,
}


def load_dataset(name: str, root: str | Path, **options: Any) -> Dataset:
    """Read dataset `name` (a key of DATASETS) from `root`; `options` go to its reader
    (only koniq has any: score_column, image_dir)."""
    reader = DATASETS.get(name)
    if reader is None:
        raise DatasetError(f"unknown dataset {name!r}; the readers are {', '.join(sorted(DATASETS))}")
    root = Path(root).expanduser().absolute()
    if not root.exists():
        hint = MAKE_BUILTIN if name == "builtin" else "pass the folder the dataset was unpacked into"
        raise DatasetError(f"{name}: {root} does not exist; {hint}")
    if name != "csv" and not root.is_dir():
        raise DatasetError(f"{name}: {root} is not a folder; pass the folder the dataset was unpacked "
                           "into")
    accepted = [p for p in inspect.signature(reader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{name} has no option(s) {unknown}; its options are {accepted or 'none'}")
    return reader(root, **options)


def _content(item: Item) -> str:
    """The content an item shows: its reference, or the image itself where none is named."""
    return item.reference if item.reference is not None else str(item.path)


def content_split(items: Sequence[Item], test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[Item], list[Item]]:
    """(train, test): a random `test_fraction` of the distinct references (at least one,
    never all) goes to test with every item showing them, so no content is on both sides.
    Items keep their order; the same items and seed give the same split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    contents = sorted({_content(item) for item in items})
    if len(contents) < 2:
        raise DatasetError(f"a content-disjoint split needs at least two distinct references; these "
                           f"{len(items)} image(s) show {len(contents)}")
    random.Random(seed).shuffle(contents)
    count = min(max(1, round(test_fraction * len(contents))), len(contents) - 1)
    test_contents = set(contents[:count])
    train = [item for item in items if _content(item) not in test_contents]
    test = [item for item in items if _content(item) in test_contents]
    return train, test


def inspect_dataset(dataset: Dataset) -> dict[str, Any]:
    """A JSON-ready summary: size, score range (the spec's and the data's), direction,
    resize policy, distinct references (None where each image is its own), the official
    split's counts (None where there is none), images per quality level, and the files
    the index names that are not on disk."""
    scores = np.array([item.score for item in dataset.items], dtype=np.float64)
    contents = {_content(item) for item in dataset.items}
    splits = Counter(item.split for item in dataset.items if item.split is not None)
    levels = np.bincount(dataset.score.level(scores), minlength=dataset.score.num_levels)
    return {
        "name": dataset.name,
        "root": str(dataset.root),
        "count": len(dataset.items),
        "score_min": dataset.score.min,
        "score_max": dataset.score.max,
        "units": dataset.score.units,
        "higher_is_better": dataset.score.higher_is_better,
        "data_min": float(scores.min()) if scores.size else None,
        "data_max": float(scores.max()) if scores.size else None,
        "num_levels": dataset.score.num_levels,
        "levels": [int(n) for n in levels],
        "resize": dataset.resize,
        "width": dataset.width,
        "height": dataset.height,
        "references": None if len(contents) == len(dataset.items) else len(contents),
        "splits": dict(sorted(splits.items())) or None,
        "missing": [str(item.path) for item in dataset.items if not Path(item.path).is_file()],
    }
