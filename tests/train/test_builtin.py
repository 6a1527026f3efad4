"""The built-in dataset and the full-reference metrics that label it: metric correctness,
layout, determinism, caching, safe replacement, and scores that fall with distortion."""

import csv
import hashlib
import json
import time
from collections import defaultdict

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the train extra (scikit-image) is not installed")

from pmtiqa_deploy.errors import DatasetError  # noqa: E402
from pmtiqa_deploy.preprocess import decode_image  # noqa: E402
from pmtiqa_deploy.train import builtin  # noqa: E402
from pmtiqa_deploy.train.builtin import DISTORTIONS, SOURCES, make_builtin  # noqa: E402
from pmtiqa_deploy.train.fidelity import fidelity, gmsd, ms_ssim, ssim_terms, vifp, ycbcr  # noqa: E402

SMALL = ("chelsea", "hubble_deep_field_nw")
PHOTO = {s.name: s.photo for s in SOURCES}
SMALL_SIZE = (240, 176)
MANIFEST = {"name": "builtin", "score_min": 0.0, "score_max": 100.0, "higher_is_better": True,
            "units": "pseudo-MOS", "resize": "none", "width": None, "height": None}


def _small(path, seed=0, **kwargs):
    return make_builtin(path, seed=seed, progress=False, sources=SMALL, size=SMALL_SIZE, **kwargs)


def _rows(root):
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _rows_metrics(root):
    with open(root / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _files(root):
    """Every file under root (relative path -> sha256)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _level_means(rows):
    means = defaultdict(list)
    for row in rows:
        name, level = row["path"].rsplit("/", 1)[1][: -len(".png")].rsplit("_", 1)
        means[(name, int(level))].append(float(row["score"]))
    return {key: float(np.mean(v)) for key, v in means.items()}


def _assert_monotonic(rows):
    means = _level_means(rows)
    for d in DISTORTIONS:
        curve = [means[(d.name, level)] for level in range(1, 6)]
        assert all(a > b for a, b in zip(curve, curve[1:])), (d.name, curve)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _small(tmp_path_factory.mktemp("builtin") / "small")


@pytest.fixture(scope="module")
def photo():
    return builtin.load_source(next(s for s in SOURCES if s.name == "chelsea"), SMALL_SIZE)


# --- metrics -------------------------------------------------------------------------------

def test_identical_images_are_perfect(photo):
    f = fidelity(photo, photo)
    assert f.ms_ssim == pytest.approx(1.0) and f.gmsd == pytest.approx(0.0, abs=1e-12)
    assert f.vifp == pytest.approx(1.0) and f.score == pytest.approx(100.0)


def test_ssim_building_block_matches_scikit_image(photo):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    x = ycbcr(photo)[..., 0]
    y = np.clip(x + rng.normal(0, 12, x.shape), 0, 255)
    expected = structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert ssim_terms(x, y)[0] == pytest.approx(expected, abs=1e-9)


def test_metrics_match_piq(photo):
    torch = pytest.importorskip("torch")
    piq = pytest.importorskip("piq", reason="piq (an independent implementation) is not installed")
    x = ycbcr(photo)[..., 0]
    y = ycbcr(builtin.distort(photo, DISTORTIONS[0], 3, np.random.default_rng(0)))[..., 0]

    def t(a):
        return torch.from_numpy(a)[None, None]

    expected = piq.multi_scale_ssim(t(x), t(y), data_range=255.0).item()
    assert ms_ssim(x, y) == pytest.approx(expected, abs=1e-6)
    assert gmsd(x, y) == pytest.approx(piq.gmsd(t(x) / 255, t(y) / 255, data_range=1.0).item(), abs=1e-6)
    # piq takes the distorted image first for VIF.
    assert vifp(x, y) == pytest.approx(piq.vif_p(t(y), t(x), data_range=255.0).item(), abs=1e-6)


def test_every_metric_worsens_with_more_noise(photo):
    rng = np.random.default_rng(1)
    x = ycbcr(photo)[..., 0]
    noise = rng.normal(0, 1, x.shape)
    values = [(ms_ssim(x, x + s * noise), gmsd(x, x + s * noise), vifp(x, x + s * noise))
              for s in (2, 8, 32)]
    for a, b in zip(values, values[1:]):
        assert b[0] < a[0] and b[1] > a[1] and b[2] < a[2]


def test_vifp_exceeds_one_for_contrast_enhancement(photo):
    # A property the VIF paper states: a contrast stretch adds information.
    x = 64 + ycbcr(photo)[..., 0] / 2
    assert vifp(x, 128 + 1.3 * (x - 128)) > 1.0


def test_fidelity_rejects_mismatched_shapes(photo):
    with pytest.raises(ValueError, match="one shape"):
        fidelity(photo, photo[:-1])


# --- the dataset ---------------------------------------------------------------------------

def test_layout_counts_and_manifest(small):
    assert json.loads((small / "manifest.json").read_text()) == MANIFEST
    with open(small / "manifest.csv", newline="") as handle:
        assert handle.readline() == "path,score,reference\n"
    rows = _rows(small)
    assert len(rows) == len(SMALL) * len(DISTORTIONS) * 5
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert sorted(p.name for p in (small / "references").iterdir()) == sorted(f"{s}.png" for s in SMALL)
    for row in rows:
        source = row["path"].split("/")[1]
        assert row["path"].startswith("images/") and source in SMALL and row["reference"] == PHOTO[source]
        assert 0.0 <= float(row["score"]) <= 100.0
        assert (small / row["path"]).is_file()
    info = json.loads((small / "builtin.json").read_text())
    assert info["version"] == builtin.BUILTIN_VERSION and info["seed"] == 0
    assert info["sources"] == list(SMALL) and info["images"] == len(rows)
    assert len(_rows_metrics(small)) == len(rows)


def test_content_hash_covers_every_file(small):
    digests = {p: d for p, d in _files(small).items() if p != "builtin.json"}
    content = hashlib.sha256("".join(f"{p}\t{d}\n" for p, d in sorted(digests.items())).encode())
    assert json.loads((small / "builtin.json").read_text())["content_sha256"] == content.hexdigest()


def test_scores_are_of_the_saved_pixels(small):
    rows = _rows(small)
    for row in rows[::17]:
        reference = decode_image(small / "references" / f"{row['path'].split('/')[1]}.png")
        image = decode_image(small / row["path"])
        assert image.shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3)
        assert fidelity(reference, image).score == pytest.approx(float(row["score"]), abs=1e-4)


def test_scores_fall_with_level_in_a_small_build(small):
    _assert_monotonic(_rows(small))


def test_same_seed_is_byte_identical_and_seed_changes_only_random_types(small, tmp_path):
    again = _small(tmp_path / "again")
    assert _files(again) == _files(small)
    other = _files(_small(tmp_path / "seed1", seed=1))
    base = _files(small)
    for d in DISTORTIONS:
        for source in SMALL:
            for level in range(1, 6):
                rel = f"images/{source}/{d.name}_{level}.png"
                assert (other[rel] != base[rel]) == d.seeded, rel
    assert all(other[f"references/{s}.png"] == base[f"references/{s}.png"] for s in SMALL)


def test_cache_hit_builds_nothing_and_rewrites_nothing(small, monkeypatch):
    """A complete dataset is reused as it is: no photograph is loaded, distorted or scored
    again (each would raise here), and no file is touched."""
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*")}

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit rebuilt part of the dataset")

    for name in ("_build", "load_source", "distort", "fidelity"):
        monkeypatch.setattr(builtin, name, refuse)
    assert _small(small) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*")} == before


def test_force_and_a_new_seed_rebuild(tmp_path):
    root = _small(tmp_path / "ds")
    first = _files(root)
    stamp = (root / "builtin.json").stat().st_mtime_ns
    _small(root, force=True)
    assert _files(root) == first and (root / "builtin.json").stat().st_mtime_ns != stamp
    _small(root, seed=3)
    assert json.loads((root / "builtin.json").read_text())["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ds"], "no temporary folders left behind"


def test_an_incomplete_dataset_is_rebuilt(tmp_path):
    root = _small(tmp_path / "ds")
    first = _files(root)
    (root / "images" / "chelsea" / "jpeg_3.png").unlink()
    _small(root)
    assert _files(root) == first
    (root / "builtin.json").unlink()
    _small(root)
    assert _files(root) == first


def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = []

    def interrupted(reference, image):
        calls.append(1)
        if len(calls) > 30:
            raise KeyboardInterrupt
        return fidelity(reference, image)

    monkeypatch.setattr(builtin, "fidelity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _small(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert len(_rows(_small(tmp_path / "ds"))) == len(SMALL) * len(DISTORTIONS) * 5


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a built-in dataset"):
        _small(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_an_existing_empty_folder_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(_rows(_small(tmp_path / "empty"))) == len(SMALL) * len(DISTORTIONS) * 5


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        make_builtin(tmp_path / "x", sources=["lena"], progress=False)
    with pytest.raises(ValueError, match="too small"):
        make_builtin(tmp_path / "x", size=(128, 128), progress=False)
    with pytest.raises(ValueError, match="non-negative"):
        make_builtin(tmp_path / "x", seed=-1, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_full_default_build(tmp_path):
    start = time.perf_counter()
    root = make_builtin(tmp_path / "builtin", progress=False)
    print(f"full built-in dataset: {time.perf_counter() - start:.1f} s")
    rows = _rows(root)
    assert len(SOURCES) >= 8 and len(DISTORTIONS) >= 8
    assert len(rows) == len(SOURCES) * len(DISTORTIONS) * 5
    # One reference id per photograph: its windows share it, so splits keep them together.
    assert {r["reference"] for r in rows} == {s.photo for s in SOURCES}
    assert len({s.photo for s in SOURCES}) >= 8 and len({s.name for s in SOURCES}) == len(SOURCES)
    assert PHOTO["hubble_deep_field_nw"] == PHOTO["hubble_deep_field_se"] == "hubble_deep_field"
    scores = np.array([float(r["score"]) for r in rows])
    assert scores.min() >= 0.0 and scores.max() <= 100.0 and scores.std() > 15
    _assert_monotonic(rows)
    for source in SOURCES:  # each source on its own, too
        means = _level_means([r for r in rows if r["path"].split("/")[1] == source.name])
        for d in DISTORTIONS:
            curve = [means[(d.name, level)] for level in range(1, 6)]
            assert all(a > b for a, b in zip(curve, curve[1:])), (source.name, d.name, curve)
    # A subset builds the very same pixels and scores as the full set.
    part = make_builtin(tmp_path / "part", progress=False, sources=["rocket"])
    full = _files(root)
    assert all(full[p] == d for p, d in _files(part).items() if p.startswith(("images/", "references/")))
    assert _rows(part) == [r for r in rows if r["path"].startswith("images/rocket/")]
