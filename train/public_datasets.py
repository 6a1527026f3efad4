"""Readers for the seven public IQA datasets, each in the layout its authors ship
(PMT-IQA.md, "The datasets' own file layouts"). Each reader takes the folder the dataset
was unpacked into and returns a `Dataset` whose items point at the image files the
dataset's index names; whether those files are on disk is `inspect_dataset`'s question.

A file the layout needs that is absent, a .mat file without its key, or a table without
its column is a `DatasetError` that names the file and what was expected there.

Authentic datasets (LIVE-C, KonIQ-10k, BID, SPAQ) have one image per content, so each
image is its own reference; synthetic ones (KADID-10k, LIVE, CSIQ) name the reference
image each distorted image was made from, for content-disjoint splits.

This module imports nothing from `datasets.py` at load time: `datasets.py` imports it to
build its table, and the one-way import keeps either module importable first.
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pmtiqa_deploy.errors import DatasetError
from pmtiqa_deploy.spec import ScoreSpec

if TYPE_CHECKING:
    from pmtiqa_deploy.train.datasets import Dataset

# A row of a dataset's index: image path, score, reference, official split.
Row = tuple[Path, float, str | None, str | None]

LIVEC_IMAGES = "Data/AllImages_release.mat"
LIVEC_MOS = "Data/AllMOS_release.mat"
LIVEC_DROPPED = 7  # the first seven entries are the release's training images
KONIQ_SCORES = "koniq10k_scores_and_distributions.csv"
KONIQ_SETS = "koniq10k_distributions_sets.csv"
KONIQ_COLUMNS = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}
KADID_INDEX = "dmos.csv"
BID_GRADES = ("DatabaseGrades.xlsx", "DatabaseGrades.xls")
LIVE_DMOS = "dmos_realigned.mat"
LIVE_REFNAMES = "refnames_all.mat"
# Release 2's index runs through these folders in this order, img1.bmp.. in each.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
CSIQ_LABELS = "csiq_label.txt"
SPAQ_SCORES = "Annotations/MOS and Image attribute scores.xlsx"


def require_file(root: Path, relative: str, label: str, expected: str) -> Path:
    """`root / relative`, or a DatasetError saying what should have been there."""
    path = root / relative
    if not path.is_file():
        raise DatasetError(f"{label}: {relative} not found under {root}; expected {expected}")
    return path


def parse_score(value: Any, where: str, what: str = "score") -> float:
    """A finite float from a table cell, or a DatasetError naming the cell."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(score):
        raise DatasetError(f"{where}: {what} {value!r} is not finite")
    return score


def read_csv_table(path: Path, label: str, columns: Sequence[str], expected: str) -> list[dict[str, str]]:
    """The rows of a CSV file with a header that has at least `columns`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DatasetError(f"{label}: {path} lacks column(s) {missing} (its header: {header}); "
                                   f"expected {expected}")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{label}: {path} is not a readable CSV file ({exc}); "
                           f"expected {expected}") from None


def load_mat(path: Path, keys: Iterable[str], label: str, expected: str) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB (v5) file."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        data = scipy.io.loadmat(str(path))
    except (MatReadError, ValueError, TypeError, IndexError, NotImplementedError, OSError) as exc:
        raise DatasetError(f"{label}: {path} is not a MATLAB file scipy can read ({exc}); "
                           f"expected {expected}") from None
    found = sorted(k for k in data if not k.startswith("__"))
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(f"{label}: {path} has no variable {missing[0]!r} (it has {found}); "
                           f"expected {expected}")
    return {k: data[k] for k in keys}


def mat_strings(array: np.ndarray) -> list[str]:
    """The strings of a MATLAB cell array of strings (or of a char matrix), in order."""
    array = np.asarray(array)
    if array.dtype.kind in "US":
        return [str(s).strip() for s in array.ravel()]
    names = []
    for cell in array.ravel():
        strings = mat_strings(cell) if isinstance(cell, np.ndarray) else [str(cell)]
        names.append("".join(strings))
    return names


def mat_numbers(array: np.ndarray, path: Path, label: str, key: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise DatasetError(f"{label}: {path} variable {key!r} is not numeric") from None


class _UnreadableSheet(Exception):
    """A spreadsheet library could not parse the file (the message says why)."""


def _xlsx_rows(path: Path) -> list[tuple[Any, ...]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return [tuple(row) for row in book.worksheets[0].iter_rows(values_only=True)]
        finally:
            book.close()
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise _UnreadableSheet(f"{type(exc).__name__}: {exc}") from None


def _xls_rows(path: Path) -> list[tuple[Any, ...]]:
    import xlrd

    try:
        sheet = xlrd.open_workbook(str(path)).sheet_by_index(0)
        return [tuple(sheet.row_values(r)) for r in range(sheet.nrows)]
    except (xlrd.XLRDError, OSError, ValueError, IndexError) as exc:
        raise _UnreadableSheet(f"{type(exc).__name__}: {exc}") from None


def read_sheet(path: Path, label: str, expected: str) -> list[tuple[Any, ...]]:
    """The rows of the first worksheet of an .xlsx (openpyxl) or .xls (xlrd) file,
    header row included, cell values as Python values."""
    try:
        return _xls_rows(path) if path.suffix.lower() == ".xls" else _xlsx_rows(path)
    except ImportError as exc:
        raise DatasetError(f"{label}: reading {path.name} needs {exc.name}; install it with "
                           "pip install 'pmtiqa-deploy[train]'") from None
    except _UnreadableSheet as exc:
        raise DatasetError(f"{label}: {path} is not a readable spreadsheet ({exc}); "
                           f"expected {expected}") from None


def make_dataset(name: str, root: Path, rows: Sequence[Row], score: ScoreSpec,
                 resize: str = "none", width: int | None = None, height: int | None = None) -> Dataset:
    """The `Dataset` of these rows (the types are imported here; see the module docstring)."""
    from pmtiqa_deploy.train.datasets import Dataset, Item

    if not rows:
        raise DatasetError(f"{name}: the index under {root} lists no images")
    items = tuple(Item(path, score, reference, split) for path, score, reference, split in rows)
    return Dataset(name=name, root=root, items=items, score=score, resize=resize, width=width,
                   height=height)


def read_livec(root: Path) -> Dataset:
    """LIVE In the Wild Challenge: 1162 photos, MOS 0..100 (the first 7 entries dropped)."""
    label = "LIVE-C"
    names_file = require_file(root, LIVEC_IMAGES, label,
                              "the image-name file from the LIVE In the Wild release")
    mos_file = require_file(root, LIVEC_MOS, label, "the MOS file from the LIVE In the Wild release")
    names = mat_strings(load_mat(names_file, ["AllImages_release"], label,
                                 "a cell array of image names")["AllImages_release"])
    mos_mat = load_mat(mos_file, ["AllMOS_release"], label, "a 1x1169 MOS vector")
    mos = mat_numbers(mos_mat["AllMOS_release"], mos_file, label, "AllMOS_release")
    if len(names) != len(mos) or len(names) <= LIVEC_DROPPED:
        raise DatasetError(f"{label}: {names_file} names {len(names)} images but {mos_file} has "
                           f"{len(mos)} scores; expected the same number, more than {LIVEC_DROPPED} "
                           "(1169 in the release)")
    rows = [(root / "Images" / name, parse_score(score, f"{mos_file}[{i}]"), name, None)
            for i, (name, score) in enumerate(zip(names, mos)) if i >= LIVEC_DROPPED]
    return make_dataset("livec", root, rows, ScoreSpec.from_levels(
        0.0, 100.0, 10, units="MOS", higher_is_better=True, dataset="livec"))


def read_koniq(root: Path, score_column: str = "MOS", image_dir: str | None = None) -> Dataset:
    """KonIQ-10k: 10073 photos resized to 512x384 for training. `score_column` is MOS
    (1..5, the default) or MOS_zscore (0..100); `image_dir` defaults to 1024x768/ (or
    512x384/ where only that copy is present). With the official split file beside the
    scores, each item's `split` is its set (training/validation/test)."""
    label = "KonIQ-10k"
    if score_column not in KONIQ_COLUMNS:
        raise DatasetError(f"{label}: score_column must be one of {sorted(KONIQ_COLUMNS)}, "
                           f"got {score_column!r}")
    scores_file = require_file(root, KONIQ_SCORES, label, "the KonIQ-10k scores and distributions CSV")
    table = read_csv_table(scores_file, label, ["image_name", score_column],
                           "columns image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore")
    sets: dict[str, str] = {}
    if (root / KONIQ_SETS).is_file():
        for row in read_csv_table(root / KONIQ_SETS, label, ["image_name", "set"],
                                  "the official split with columns image_name,...,set"):
            sets[row["image_name"]] = row["set"]
        unsplit = [row["image_name"] for row in table if row["image_name"] not in sets]
        if unsplit:
            raise DatasetError(f"{label}: {root / KONIQ_SETS} gives no set for {len(unsplit)} image(s) "
                               f"of {scores_file}, e.g. {unsplit[0]}; expected one row per image")
    if image_dir is None:
        image_dir = next((d for d in ("1024x768", "512x384") if (root / d).is_dir()), "1024x768")
    rows = [(root / image_dir / row["image_name"],
             parse_score(row[score_column], f"{scores_file} line {i + 2}"),
             row["image_name"], sets.get(row["image_name"])) for i, row in enumerate(table)]
    low, high = KONIQ_COLUMNS[score_column]
    return make_dataset("koniq", root, rows, ScoreSpec.from_levels(
        low, high, 10, units=score_column, higher_is_better=True, dataset="koniq"),
        resize="fixed", width=512, height=384)


def read_kadid(root: Path) -> Dataset:
    """KADID-10k: 10125 distorted images of 81 references; `dmos` is 1..5, higher is better."""
    label = "KADID-10k"
    columns = "columns dist_img,ref_img,dmos,var"
    index = require_file(root, KADID_INDEX, label, f"the KADID-10k index with {columns}")
    table = read_csv_table(index, label, ["dist_img", "ref_img", "dmos"], columns)
    rows = [(root / "images" / row["dist_img"], parse_score(row["dmos"], f"{index} line {i + 2}"),
             Path(row["ref_img"]).stem, None) for i, row in enumerate(table)]
    return make_dataset("kadid", root, rows, ScoreSpec.from_levels(
        1.0, 5.0, 10, units="DMOS", higher_is_better=True, dataset="kadid"))


def read_bid(root: Path) -> Dataset:
    """BID (Blurred Image Database): 586 photos resized to 512x512, MOS 0..5. Images are
    read from ImageDatabase/ as shipped, or from the root itself where they were moved there."""
    label = "BID"
    grades = next((root / name for name in BID_GRADES if (root / name).is_file()), None)
    if grades is None:
        raise DatasetError(f"{label}: {BID_GRADES[0]} (or {BID_GRADES[1]}) not found under {root}; "
                           "expected the grades spreadsheet of the Blurred Image Database (header row, "
                           "then image number and MOS)")
    table = read_sheet(grades, label, "a header row, then image number and MOS")
    image_folder = root / "ImageDatabase" if (root / "ImageDatabase").is_dir() else root
    rows = []
    for number, row in enumerate(table[1:], start=2):
        image_cell, mos_cell = (tuple(row) + (None, None))[:2]
        if image_cell in (None, ""):
            break
        where = f"{grades} row {number}"
        image = parse_score(image_cell, where, "image number")
        if image != int(image) or image < 1:
            raise DatasetError(f"{where}: column 1 should be the image number, got {image_cell!r}")
        name = "DatabaseImage%04d.JPG" % int(image)
        rows.append((image_folder / name, parse_score(mos_cell, where), name, None))
    return make_dataset("bid", root, rows, ScoreSpec.from_levels(
        0.0, 5.0, 10, units="MOS", higher_is_better=True, dataset="bid"),
        resize="fixed", width=512, height=512)


def read_live(root: Path) -> Dataset:
    """LIVE release 2: 779 distorted images of 29 references in five folders; realigned
    DMOS, lower is better; the references' own entries (orgs == 1) are dropped. The range
    is the nominal 0..100; a realigned value outside it falls in the end quality level."""
    label = "LIVE"
    dmos_file = require_file(root, LIVE_DMOS, label,
                             "the realigned DMOS of LIVE release 2 (dmos_new, orgs)")
    names_file = require_file(root, LIVE_REFNAMES, label, "the reference names of LIVE release 2")
    mats = load_mat(dmos_file, ["dmos_new", "orgs"], label, "variables dmos_new and orgs")
    dmos = mat_numbers(mats["dmos_new"], dmos_file, label, "dmos_new")
    orgs = mat_numbers(mats["orgs"], dmos_file, label, "orgs")
    refnames = mat_strings(load_mat(names_file, ["refnames_all"], label,
                                    "a cell array of reference names")["refnames_all"])
    total = sum(count for _, count in LIVE_FOLDERS)
    if not len(dmos) == len(orgs) == len(refnames) == total:
        raise DatasetError(f"{label}: {dmos_file} has {len(dmos)} dmos_new and {len(orgs)} orgs entries, "
                           f"{names_file} {len(refnames)} names; expected {total} each "
                           f"({'+'.join(str(c) for _, c in LIVE_FOLDERS)} images of release 2)")
    paths = [root / folder / f"img{i}.bmp" for folder, count in LIVE_FOLDERS for i in range(1, count + 1)]
    rows = [(path, parse_score(score, f"{dmos_file} dmos_new[{i}]"), Path(ref).stem, None)
            for i, (path, score, org, ref) in enumerate(zip(paths, dmos, orgs, refnames)) if org != 1]
    return make_dataset("live", root, rows, ScoreSpec.from_levels(
        0.0, 100.0, 10, units="DMOS", higher_is_better=False, dataset="live"))


def read_csiq(root: Path) -> Dataset:
    """CSIQ: 866 distorted images of 30 references; DMOS 0..1, lower is better. The
    reference is the part of a name before its first dot (1600.AWGN.1.png -> 1600)."""
    label = "CSIQ"
    labels = require_file(root, CSIQ_LABELS, label, "the label file with lines '<name> <dmos>'")
    rows = []
    try:
        lines = labels.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{label}: {labels} is not a text file; "
                           "expected lines '<name> <dmos>'") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{label}: {labels} line {number} is {line!r}; expected '<name> <dmos>' "
                               "such as '1600.AWGN.1.png 0.061989'")
        name, value = fields
        rows.append((root / "dst_imgs_all" / name, parse_score(value, f"{labels} line {number}"),
                     name.split(".", 1)[0], None))
    return make_dataset("csiq", root, rows, ScoreSpec.from_levels(
        0.0, 1.0, 10, units="DMOS", higher_is_better=False, dataset="csiq"))


def read_spaq(root: Path) -> Dataset:
    """SPAQ: 11125 smartphone photos, MOS 0..100, scored from the annotation workbook.
    Kept at full size (resize "none"): the Dataset's resize policy has no shorter-side mode,
    so shrink the photos beforehand (the SPAQ authors use a 512 shorter side) and list them
    in a CSV manifest where memory is short."""
    label = "SPAQ"
    scores = require_file(root, SPAQ_SCORES, label,
                          "the SPAQ annotation workbook (columns Image name, MOS, ...)")
    table = read_sheet(scores, label, "a header row with columns 'Image name' and 'MOS'")
    header = [str(cell).strip() if cell is not None else "" for cell in (table[0] if table else ())]
    missing = [c for c in ("Image name", "MOS") if c not in header]
    if missing:
        raise DatasetError(f"{label}: {scores} lacks column(s) {missing} (its header: {header}); "
                           "expected columns Image name, MOS, ...")
    name_col, mos_col = header.index("Image name"), header.index("MOS")
    rows = []
    for number, row in enumerate(table[1:], start=2):
        if len(row) <= max(name_col, mos_col) or row[name_col] in (None, ""):
            continue
        name = str(row[name_col]).strip()
        score = parse_score(row[mos_col], f"{scores} row {number}")
        rows.append((root / "TestImage" / name, score, name, None))
    return make_dataset("spaq", root, rows, ScoreSpec.from_levels(
        0.0, 100.0, 10, units="MOS", higher_is_better=True, dataset="spaq"))


PUBLIC_READERS = {
    "livec": read_livec,
    "koniq": read_koniq,
    "kadid": read_kadid,
    "bid": read_bid,
    "live": read_live,
    "csiq": read_csiq,
    "spaq": read_spaq,
}
