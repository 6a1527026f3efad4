"""Dataset readers over tiny replicas of each dataset's shipped layout (conftest.py):
counts, scores, ranges, directions, references, official splits, resize policies,
content-disjoint splits, inspection, and broken replicas that name the file at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from pmtiqa_deploy.errors import DatasetError
from pmtiqa_deploy.train.datasets import DATASETS, Item, content_split, inspect_dataset, load_dataset

LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))

# (fixture, reader) for every format, the .xls flavour of BID included.
FORMATS = [("livec", "livec"), ("koniq", "koniq"), ("kadid", "kadid"), ("bid", "bid"), ("bid_xls", "bid"),
           ("live", "live"), ("csiq", "csiq"), ("spaq", "spaq"), ("manifest", "csv")]


@pytest.fixture(params=FORMATS, ids=[f for f, _ in FORMATS])
def replica(request):
    fixture, reader = request.param
    return request.getfixturevalue(fixture), reader


def test_every_reader_is_in_the_table():
    assert set(DATASETS) == {"builtin", "csv", "livec", "koniq", "kadid", "bid", "live", "csiq", "spaq"}


def test_reads_replica(replica):
    rep, name = replica
    dataset = load_dataset(name, rep.root)
    assert dataset.name == name
    assert len(dataset.items) == rep.count
    np.testing.assert_allclose([item.score for item in dataset.items], rep.scores)
    assert (dataset.score.min, dataset.score.max) == rep.score_range
    assert dataset.score.higher_is_better is rep.higher_is_better
    assert dataset.score.num_levels == 10 and dataset.score.dataset == name
    info = inspect_dataset(dataset)
    assert info["count"] == rep.count and info["missing"] == []
    assert info["references"] == rep.references
    assert info["higher_is_better"] is rep.higher_is_better
    assert (info["score_min"], info["score_max"]) == rep.score_range
    assert info["data_min"] == pytest.approx(min(rep.scores))
    assert info["data_max"] == pytest.approx(max(rep.scores))
    assert sum(info["levels"]) == rep.count and len(info["levels"]) == 10
    assert info["name"] == name and info["root"] == str(rep.root)
    json.dumps(info)
    assert all(item.path.is_file() and item.path.is_absolute() for item in dataset.items)


def test_content_split_is_disjoint_by_reference(replica):
    rep, name = replica
    items = list(load_dataset(name, rep.root).items)
    train, test = content_split(items, test_fraction=0.2, seed=0)
    train_refs, test_refs = {i.reference for i in train}, {i.reference for i in test}
    assert train and test and not train_refs & test_refs
    assert sorted(map(str, train + test)) == sorted(map(str, items))
    assert [i for i in items if i in train] == train  # order kept
    assert content_split(items, test_fraction=0.2, seed=0) == (train, test)
    distinct = len({i.reference for i in items})
    assert len(test_refs) == min(max(1, round(0.2 * distinct)), distinct - 1)


def test_livec_drops_the_seven_training_images(livec):
    dataset = load_dataset("livec", livec.root)
    assert not any("trainingImages" in str(i.path) for i in dataset.items)
    assert dataset.items[0].path == livec.root / "Images" / "3.bmp"
    assert dataset.items[0].reference == "3.bmp" and dataset.resize == "none"


def test_koniq_official_split_resize_and_score_column(koniq):
    dataset = load_dataset("koniq", koniq.root)
    assert (dataset.resize, dataset.width, dataset.height) == ("fixed", 512, 384)
    assert inspect_dataset(dataset)["splits"] == {"test": 2, "training": 3, "validation": 1}
    assert dataset.items[0].path == koniq.root / "1024x768" / "826373.jpg"
    zscore = load_dataset("koniq", koniq.root, score_column="MOS_zscore")
    assert (zscore.score.min, zscore.score.max, zscore.score.units) == (0.0, 100.0, "MOS_zscore")
    np.testing.assert_allclose([i.score for i in zscore.items], [(m - 1) * 25 for m in koniq.scores])
    with pytest.raises(DatasetError, match="score_column must be one of"):
        load_dataset("koniq", koniq.root, score_column="SD")


def test_koniq_without_split_file_and_with_the_small_copy(koniq):
    (koniq.root / "koniq10k_distributions_sets.csv").unlink()
    (koniq.root / "1024x768").rename(koniq.root / "512x384")
    dataset = load_dataset("koniq", koniq.root)
    assert all(i.split is None for i in dataset.items)
    assert inspect_dataset(dataset)["splits"] is None and inspect_dataset(dataset)["missing"] == []
    assert dataset.items[0].path.parent.name == "512x384"


def test_kadid_references_are_reference_stems(kadid):
    dataset = load_dataset("kadid", kadid.root)
    assert {i.reference for i in dataset.items} == {"I01", "I02", "I03", "I04", "I05"}
    assert dataset.items[0].path == kadid.root / "images" / "I01_01_01.png"


def test_bid_resize_and_flattened_layout(bid):
    dataset = load_dataset("bid", bid.root)
    assert (dataset.resize, dataset.width, dataset.height) == ("fixed", 512, 512)
    assert dataset.items[-1].path == bid.root / "ImageDatabase" / "DatabaseImage0586.JPG"
    for path in (bid.root / "ImageDatabase").iterdir():
        path.rename(bid.root / path.name)
    (bid.root / "ImageDatabase").rmdir()
    assert inspect_dataset(load_dataset("bid", bid.root))["missing"] == []


def test_live_folder_order_and_dropped_references(live):
    dataset = load_dataset("live", live.root)
    paths = [live.root / f / f"img{i}.bmp" for f, n in LIVE_FOLDERS for i in range(1, n + 1)]
    assert [i.path for i in dataset.items] == [p for k, p in enumerate(paths) if k % 5]
    assert dataset.items[0].path == live.root / "jp2k" / "img2.bmp"
    assert len({i.reference for i in dataset.items}) == 29 and dataset.items[0].reference == "ref01"
    train, test = content_split(list(dataset.items), seed=0)
    assert len({i.reference for i in test}) == 6  # round(0.2 * 29)
    assert content_split(list(dataset.items), seed=1) != (train, test)


def test_csiq_reference_is_the_name_before_the_first_dot(csiq):
    dataset = load_dataset("csiq", csiq.root)
    assert dataset.items[0].path == csiq.root / "dst_imgs_all" / "1600.AWGN.1.png"
    assert dataset.items[0].reference == "1600"
    assert dataset.score.units == "DMOS" and not dataset.score.higher_is_better


def test_inspect_lists_missing_images(live):
    (live.root / "wn" / "img3.bmp").unlink()
    (live.root / "fastfading" / "img174.bmp").unlink()
    missing = inspect_dataset(load_dataset("live", live.root))["missing"]
    assert missing == [str(live.root / "wn" / "img3.bmp"), str(live.root / "fastfading" / "img174.bmp")]


def test_csv_manifest_with_sidecar_and_file_root(tmp_path, write):
    rows = [["path", "score", "reference"],
            ["a/1.png", "12.5", "a"], ["a/2.png", "80", "a"], ["b/1.jpg", "3", ""]]
    meta = {"name": "mine", "score_min": 0, "score_max": 100, "higher_is_better": False, "units": "DMOS",
            "resize": "fixed", "width": 512, "height": 384}
    path = write.manifest(tmp_path / "set", rows, meta, name="train.csv")
    dataset = load_dataset("csv", path)
    assert dataset.name == "mine" and dataset.root == tmp_path / "set"
    assert (dataset.score.min, dataset.score.max, dataset.score.units) == (0.0, 100.0, "DMOS")
    assert not dataset.score.higher_is_better and dataset.score.dataset == "mine"
    assert (dataset.resize, dataset.width, dataset.height) == ("fixed", 512, 384)
    assert dataset.items[2] == Item(tmp_path / "set" / "b" / "1.jpg", 3.0, None, None)
    assert inspect_dataset(dataset)["references"] == 2


def test_builtin_layout_is_read_by_the_csv_reader(tmp_path, write):
    from pmtiqa_deploy.train.builtin import MANIFEST

    rows = [["path", "score", "reference"]] + [[f"images/{s}/blur_{k}.png", str(90 - 15 * k), s]
                                               for s in ("chelsea", "coffee", "rocket") for k in range(1, 4)]
    write.manifest(tmp_path / "builtin", rows, MANIFEST)
    dataset = load_dataset("builtin", tmp_path / "builtin")
    assert dataset.name == "builtin" and len(dataset.items) == 9
    assert (dataset.score.min, dataset.score.max, dataset.score.units) == (0.0, 100.0, "pseudo-MOS")
    assert inspect_dataset(dataset)["references"] == 3


def test_reads_a_real_builtin_build(tmp_path):
    pytest.importorskip("skimage", reason="the train extra (scikit-image) is not installed")
    from pmtiqa_deploy.train.builtin import make_builtin

    root = make_builtin(tmp_path / "b", progress=False, sources=("chelsea", "rocket"), size=(240, 176))
    dataset = load_dataset("builtin", root)
    info = inspect_dataset(dataset)
    assert info["count"] == 100 and info["references"] == 2 and info["missing"] == []
    train, test = content_split(list(dataset.items))
    assert {i.reference for i in train}.isdisjoint({i.reference for i in test})


def test_content_split_without_references_and_bad_arguments(tmp_path):
    items = [Item(tmp_path / f"{k}.png", float(k)) for k in range(10)]
    train, test = content_split(items, test_fraction=0.3, seed=4)
    assert len(test) == 3 and not set(train) & set(test)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        content_split(items, test_fraction=1.0)
    with pytest.raises(DatasetError, match="at least two distinct references"):
        content_split([Item(tmp_path / "a.png", 1.0, "x"), Item(tmp_path / "b.png", 2.0, "x")])


# Broken replicas: (fixture, reader, how to break it, what the message must name).
def _delete(rel):
    return lambda root, write: (root / rel).unlink()


def _savemat(rel, **variables):
    return lambda root, write: scipy.io.savemat(root / rel, variables)


def _rewrite_csv(rel, old, new):
    def mutate(root, write):
        text = (root / rel).read_text()
        (root / rel).write_text(text.replace(old, new, 1))
    return mutate


def _garbage(rel):
    return lambda root, write: (root / rel).write_bytes(b"this is not that kind of file")


def _xlsx(rel, rows):
    return lambda root, write: write.xlsx(root / rel, rows)


def _sidecar(text):
    return lambda root, write: (root / "manifest.json").write_text(text)


SPAQ_XLSX = "Annotations/MOS and Image attribute scores.xlsx"
BROKEN = [
    ("livec", "livec", _delete("Data/AllMOS_release.mat"),
     ["LIVE-C: Data/AllMOS_release.mat not found under", "MOS file from the LIVE In the Wild release"]),
    ("livec", "livec", _delete("Data/AllImages_release.mat"), ["Data/AllImages_release.mat not found"]),
    ("livec", "livec", _savemat("Data/AllMOS_release.mat", MOS=np.zeros((1, 13))),
     ["AllMOS_release.mat has no variable 'AllMOS_release'", "['MOS']"]),
    ("livec", "livec", _savemat("Data/AllMOS_release.mat", AllMOS_release=np.zeros((1, 12))),
     ["names 13 images but", "has 12 scores"]),
    ("livec", "livec", _garbage("Data/AllImages_release.mat"),
     ["AllImages_release.mat is not a MATLAB file"]),
    ("koniq", "koniq", _delete("koniq10k_scores_and_distributions.csv"),
     ["KonIQ-10k: koniq10k_scores_and_distributions.csv not found under"]),
    ("koniq", "koniq", _rewrite_csv("koniq10k_scores_and_distributions.csv", '"MOS"', '"Mos"'),
     ["koniq10k_scores_and_distributions.csv lacks column(s) ['MOS']"]),
    ("koniq", "koniq", _rewrite_csv("koniq10k_distributions_sets.csv", '"set"', '"subset"'),
     ["koniq10k_distributions_sets.csv lacks column(s) ['set']"]),
    ("kadid", "kadid", _delete("dmos.csv"), ["KADID-10k: dmos.csv not found under"]),
    ("kadid", "kadid", _rewrite_csv("dmos.csv", "ref_img", "reference"),
     ["dmos.csv lacks column(s) ['ref_img']"]),
    ("kadid", "kadid", _rewrite_csv("dmos.csv", ",1.9,", ",high,"),
     ["dmos.csv line", "score 'high' is not a number"]),
    ("bid", "bid", _delete("DatabaseGrades.xlsx"),
     ["BID: DatabaseGrades.xlsx (or DatabaseGrades.xls) not found"]),
    ("bid", "bid", _xlsx("DatabaseGrades.xlsx", [("Image", "MOS"), ("one", 3.0)]),
     ["DatabaseGrades.xlsx row 2", "image number 'one' is not a number"]),
    ("bid", "bid", _garbage("DatabaseGrades.xlsx"), ["DatabaseGrades.xlsx is not a readable spreadsheet"]),
    ("live", "live", _delete("refnames_all.mat"), ["LIVE: refnames_all.mat not found under"]),
    ("live", "live", _savemat("dmos_realigned.mat", dmos_new=np.zeros((1, 982)), org=np.zeros((1, 982))),
     ["dmos_realigned.mat has no variable 'orgs'"]),
    ("live", "live", _savemat("dmos_realigned.mat", dmos_new=np.zeros((1, 779)), orgs=np.zeros((1, 779))),
     ["dmos_realigned.mat has 779 dmos_new", "expected 982 each (227+233+174+174+174"]),
    ("csiq", "csiq", _delete("csiq_label.txt"), ["CSIQ: csiq_label.txt not found under"]),
    ("csiq", "csiq", lambda root, write: (root / "csiq_label.txt").write_text("1600.AWGN.1.png,0.06\n"),
     ["csiq_label.txt line 1", "expected '<name> <dmos>'"]),
    ("spaq", "spaq", _delete(SPAQ_XLSX), [f"SPAQ: {SPAQ_XLSX} not found under"]),
    ("spaq", "spaq", _xlsx(SPAQ_XLSX, [("Image", "MOS"), ("00001.jpg", 40.0)]),
     ["MOS and Image attribute scores.xlsx lacks column(s) ['Image name']"]),
    ("manifest", "csv", _delete("manifest.csv"), ["csv: manifest.csv not found under"]),
    ("manifest", "csv", _rewrite_csv("manifest.csv", "score", "mos"),
     ["manifest.csv lacks column(s) ['score']"]),
    ("manifest", "csv", _sidecar('{"score_min": 0, "scale": 5}'),
     ["manifest.json: unknown key(s) ['scale']"]),
    ("manifest", "csv", _sidecar('{"higher_is_better": "yes"}'),
     ["manifest.json: higher_is_better must be true or false"]),
    ("manifest", "csv", _sidecar('{"resize": "fixed", "width": 512}'),
     ["resize 'fixed' needs width and height"]),
    ("manifest", "csv", _sidecar('{"score_min": 0, "score_max": 5}'),
     ["score(s) lie outside score_min..score_max = 0..5", "widen the range"]),
]


@pytest.mark.parametrize("fixture, reader, mutate, messages", BROKEN,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_broken_replica_names_the_file(request, write, fixture, reader, mutate, messages):
    rep = request.getfixturevalue(fixture)
    mutate(rep.root, write)
    with pytest.raises(DatasetError) as caught:
        load_dataset(reader, rep.root)
    for message in messages:
        assert message in str(caught.value)


def test_builtin_missing_says_how_to_build_it(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="builtin: manifest.csv not found .*"
                                           "run pmtiqa-data make-builtin --out DIR"):
        load_dataset("builtin", tmp_path / "b")
    with pytest.raises(DatasetError, match="does not exist; run pmtiqa-data make-builtin"):
        load_dataset("builtin", tmp_path / "nothing")


def test_manifest_with_one_score_needs_a_range(tmp_path, write):
    write.manifest(tmp_path / "m", [["path", "score"], ["a.png", "3"], ["b.png", "3"]])
    with pytest.raises(DatasetError, match="the score range 3.0..3.0 is empty"):
        load_dataset("csv", tmp_path / "m")


def test_load_dataset_rejects_unknown_names_options_and_roots(livec, tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'tid2013'; the readers are bid, builtin, csiq"):
        load_dataset("tid2013", livec.root)
    with pytest.raises(DatasetError, match=r"livec has no option\(s\) \['score_column'\]"):
        load_dataset("livec", livec.root, score_column="MOS")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset("livec", livec.root / "Data" / "AllMOS_release.mat")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("csiq", tmp_path / "absent")


def test_bid_header_only_lists_no_images(bid, write):
    write.xlsx(bid.root / "DatabaseGrades.xlsx", [("Image", "MOS")])
    with pytest.raises(DatasetError, match="bid: the index under .* lists no images"):
        load_dataset("bid", bid.root)


def test_csv_with_byte_order_mark(kadid):
    """Spreadsheet-exported CSVs often start with a UTF-8 byte order mark."""
    path = kadid.root / "dmos.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_dataset("kadid", kadid.root).items) == kadid.count


def test_items_point_at_decodable_images(csiq):
    from pmtiqa_deploy.preprocess import decode_image

    dataset = load_dataset("csiq", csiq.root)
    assert all(decode_image(item.path).shape == (8, 8, 3) for item in dataset.items)
