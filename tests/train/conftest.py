"""Tiny replicas of the public IQA datasets in their exact shipped layouts (real .mat,
.xlsx, .xls, CSV and text files, real image files), for the dataset reader and CLI tests.

Each dataset fixture returns a `Replica`: its root and what a correct reader must find
there. The `write` fixture hands tests the same writers (images, xlsx, manifest).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path

import cv2
import numpy as np
import pytest

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


@dataclass(frozen=True)
class Replica:
    root: Path
    count: int               # items after the reader's documented drops
    scores: tuple[float, ...]  # in index order
    references: int | None   # distinct references; None where each image is its own
    higher_is_better: bool
    score_range: tuple[float, float]


def _encoded(ext: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def write_images(folder: Path, names, seed: int = 0) -> None:
    """A real 8x8 image under each name (format from the extension), one encoding each."""
    cache: dict[str, bytes] = {}
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = path.suffix.lower()
        if ext not in cache:
            cache[ext] = _encoded(ext, seed)
        path.write_bytes(cache[ext])


def cell_array(strings) -> np.ndarray:
    """A column cell array of strings, as MATLAB saves `{'a'; 'b'}`."""
    cells = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cells[i, 0] = s
    return cells


def write_xlsx(path: Path, rows) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)


def write_xls(path: Path, rows) -> None:
    xlwt = pytest.importorskip("xlwt", reason="xlwt (to write a legacy .xls replica) is not installed")
    book = xlwt.Workbook()
    sheet = book.add_sheet("Sheet1")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.save(str(path))


@pytest.fixture
def livec(tmp_path) -> Replica:
    import scipy.io

    root = tmp_path / "ChallengeDB_release"
    names = [f"trainingImages/t{i}.bmp" for i in range(1, 8)] + ["3.bmp", "100.bmp", "1001.JPG",
                                                                  "12.bmp", "1150.JPG", "56.bmp"]
    mos = [50.0] * 7 + [3.42, 92.43, 61.2, 45.0, 12.5, 77.7]
    (root / "Data").mkdir(parents=True)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cell_array(names)})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos])})
    write_images(root / "Images", names)
    return Replica(root, 6, tuple(mos[7:]), None, True, (0.0, 100.0))


@pytest.fixture
def koniq(tmp_path) -> Replica:
    root = tmp_path / "koniq10k"
    names = ["826373.jpg", "10000071.jpg", "1010134.jpg", "10228561.jpg", "1027441.jpg", "10361337.jpg"]
    mos = [3.92, 2.05, 1.27, 4.61, 3.3, 2.7]
    header = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
    rows = [[n, 0, 2, 25, 73, 5, 105, m, 0.6, (m - 1) * 25] for n, m in zip(names, mos)]
    root.mkdir()
    with open(root / "koniq10k_scores_and_distributions.csv", "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC).writerows([header, *rows])
    sets = ["training", "training", "training", "validation", "test", "test"]
    with open(root / "koniq10k_distributions_sets.csv", "w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC).writerows(
            [header + ["set"], *[row + [s] for row, s in zip(rows, sets)]])
    write_images(root / "1024x768", names)
    return Replica(root, 6, tuple(mos), None, True, (1.0, 5.0))


@pytest.fixture
def kadid(tmp_path) -> Replica:
    root = tmp_path / "kadid10k"
    refs = ["I01.png", "I02.png", "I03.png", "I04.png", "I05.png"]
    rows = [[f"{r[:-4]}_{d:02d}_{lv:02d}.png", r, round(1.0 + 0.8 * lv + 0.1 * d, 3), 0.3]
            for r in refs for d in (1, 2) for lv in (1, 3)]
    root.mkdir()
    with open(root / "dmos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["dist_img", "ref_img", "dmos", "var"], *rows])
    write_images(root / "images", [row[0] for row in rows] + refs)
    return Replica(root, len(rows), tuple(row[2] for row in rows), len(refs), True, (1.0, 5.0))


BID_ROWS = [("Image", "MOS"), (1, 4.3), (2, 0.6), (3, 2.75), (4, 3.1), (5, 1.9), (586, 3.5)]


def _bid(root: Path, grades: str) -> Replica:
    root.mkdir()
    (write_xls if grades.endswith(".xls") else write_xlsx)(root / grades, BID_ROWS)
    write_images(root / "ImageDatabase", ["DatabaseImage%04d.JPG" % n for n, _ in BID_ROWS[1:]])
    return Replica(root, len(BID_ROWS) - 1, tuple(m for _, m in BID_ROWS[1:]), None, True, (0.0, 5.0))


@pytest.fixture
def bid(tmp_path) -> Replica:
    return _bid(tmp_path / "BID", "DatabaseGrades.xlsx")


@pytest.fixture
def bid_xls(tmp_path) -> Replica:
    return _bid(tmp_path / "BID", "DatabaseGrades.xls")


@pytest.fixture
def live(tmp_path) -> Replica:
    """All 982 entries of release 2 over 29 references; every fifth is a reference's own entry."""
    import scipy.io

    root = tmp_path / "databaserelease2"
    total = sum(c for _, c in LIVE_FOLDERS)
    refs = [f"ref{k:02d}.bmp" for k in range(29)]
    refnames = [refs[i % 29] for i in range(total)]
    orgs = np.array([1.0 if i % 5 == 0 else 0.0 for i in range(total)])
    dmos = np.where(orgs == 1, 0.0, np.random.default_rng(0).uniform(5, 95, total))
    root.mkdir()
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": dmos[None, :], "orgs": orgs[None, :]})
    names = np.empty((1, total), dtype=object)
    names[0, :] = refnames
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": names})
    write_images(root, [f"{folder}/img{i}.bmp" for folder, n in LIVE_FOLDERS for i in range(1, n + 1)])
    write_images(root / "refimgs", refs)
    kept = tuple(float(d) for d, o in zip(dmos, orgs) if o != 1)
    return Replica(root, len(kept), kept, 29, False, (0.0, 100.0))


@pytest.fixture
def csiq(tmp_path) -> Replica:
    root = tmp_path / "CSIQ"
    refs = ["1600", "aerial_city", "boston", "bridge", "butter_flower"]
    lines = [(f"{r}.{d}.{lv}.png", round(0.05 * lv + 0.01 * k, 6))
             for k, r in enumerate(refs) for d in ("AWGN", "JPEG", "BLUR") for lv in (1, 4)]
    root.mkdir()
    (root / "csiq_label.txt").write_text("".join(f"{n} {v}\n" for n, v in lines))
    write_images(root / "dst_imgs_all", [n for n, _ in lines])
    write_images(root / "src_imgs", [f"{r}.png" for r in refs])
    return Replica(root, len(lines), tuple(v for _, v in lines), len(refs), False, (0.0, 1.0))


@pytest.fixture
def spaq(tmp_path) -> Replica:
    root = tmp_path / "SPAQ"
    header = ("Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")
    rows = [(f"{i:05d}.jpg", mos, 50, 50, 50, 50, 50)
            for i, mos in enumerate([42.0, 78.5, 13.25, 90.0, 61.0], start=1)]
    write_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx", [header, *rows])
    write_images(root / "TestImage", [r[0] for r in rows])
    return Replica(root, len(rows), tuple(r[1] for r in rows), None, True, (0.0, 100.0))


def write_manifest(folder: Path, rows, meta: dict | None = None, name: str = "manifest.csv") -> Path:
    """A CSV manifest (header from the first row) with images for its paths, and a sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    write_images(folder, [row[0] for row in rows[1:]])
    if meta is not None:
        (folder / "manifest.json").write_text(json.dumps(meta))
    return folder / name


@pytest.fixture
def manifest(tmp_path) -> Replica:
    """The generic manifest without a sidecar: range from the data, higher is better."""
    rows = [["path", "score", "reference", "split"]] + [
        [f"img/{r}_{k}.png", str(10.0 * k + i), r, "train" if r != "c" else "test"]
        for i, r in enumerate("abcd") for k in range(3)]
    write_manifest(tmp_path / "mine", rows)
    scores = tuple(float(r[1]) for r in rows[1:])
    return Replica(tmp_path / "mine", len(scores), scores, 4, True, (min(scores), max(scores)))


@pytest.fixture
def write() -> SimpleNamespace:
    """The replica writers, for tests that build or break a replica themselves."""
    return SimpleNamespace(images=write_images, xlsx=write_xlsx, manifest=write_manifest)
