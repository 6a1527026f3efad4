"""The C ABI (native/include/pmtiqa.h) on the CPU backend, held against the Python runtime
(the reference preprocessing + ONNX Runtime) on the same exported model.onnx: scores
within 1e-3 MOS and SRCC >= 0.9999 for files of every kind (through
examples/score_images) and raw buffers of every pixel format (through ctypes); the
spec is read as pmtiqa_deploy.spec reads it, case for case (tests/spec_cases.json); errors
are statuses with messages, per thread. Fixtures (the CMake build, photos, the export) are in conftest.py.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from native_abi import (BACKEND_CPU, BGR, BGRA, GRAY, INVALID_ARGUMENT, OK, RGB, RGBA, SPEC, Model,
                        Result, open_status, padded)
from native_support import python_scores, run_abi_check

TOLERANCE = 1e-3  # MOS points


def srcc(a, b) -> float:
    """Spearman's rank correlation (no ties in continuous scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def assert_levels_agree(c_rows, py_rows, level_width: float = 10.0) -> None:
    """Levels must match except for scores within the tolerance of a level boundary."""
    for (c_score, c_level), (py_score, py_level) in zip(c_rows, py_rows):
        near_boundary = abs(py_score / level_width - round(py_score / level_width)) * level_width < TOLERANCE
        assert c_level == py_level or near_boundary, (c_score, c_level, py_score, py_level)


def run_example(native_build: Path, model_dir: Path, files: list[Path], *args: str) -> dict[str, list[str]]:
    done = subprocess.run([str(native_build / "score_images"), *args, str(model_dir), *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.split("\t")[0]: line.split("\t")[1:] for line in done.stdout.splitlines()}


def test_example_scores_files_like_the_python_runtime(native_build, model_dir, photos, python_rows):
    rows = run_example(native_build, model_dir, photos, "--backend", "cpu", "--threads", "2", "--probs")
    assert sorted(rows) == sorted(map(str, photos))
    c_rows = [(float(rows[str(p)][0]), int(rows[str(p)][1])) for p in photos]
    py_rows = [python_rows[str(p)] for p in photos]
    c_scores, py_scores = np.array([r[0] for r in c_rows]), np.array([r[0] for r in py_rows])
    worst = float(np.max(np.abs(c_scores - py_scores)))
    print(f"{len(photos)} files: max |C - Python| = {worst:.2e} MOS, SRCC {srcc(c_scores, py_scores):.6f}, "
          f"scores {c_scores.min():.1f}..{c_scores.max():.1f}")
    assert worst <= TOLERANCE
    assert srcc(c_scores, py_scores) >= 0.9999
    assert np.ptp(py_scores) > 30, "the fixture model's scores should spread over the range"
    assert_levels_agree(c_rows, py_rows)
    for path in photos:
        probs = np.array([float(v) for v in rows[str(path)][2].split(",")])
        assert probs.shape == (10,) and abs(probs.sum() - 1.0) < 1e-4


def test_decoder_messages_stay_off_stderr_and_explain_failures(native_build, model_dir, photos, tmp_path):
    """What libpng and OpenCV print for a broken file never reaches the program's stderr;
    the failed file's error says what they said (as pmtiqa_deploy.decoder_log does)."""
    png = bytearray(next(p for p in photos if p.suffix == ".png").read_bytes())
    data = png.find(b"IDAT") + 8
    png[data:data + 32] = bytes(b ^ 0x5A for b in png[data:data + 32])
    broken = {"bad_data.png": bytes(png), "junk.png": b"\x89PNG\r\n\x1a\n" + b"x" * 100}
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
    files = [tmp_path / name for name in broken] + photos[:2]
    done = subprocess.run([str(native_build / "score_images"), str(model_dir), *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # some files failed
    assert len(done.stderr.splitlines()) == 1 and "backend" in done.stderr, done.stderr  # the model line only
    rows = {Path(line.split("\t")[0]).name: line.split("\t")[1:] for line in done.stdout.splitlines()}
    assert rows["bad_data.png"][0] == "error" and "the decoder said: libpng error: " in rows["bad_data.png"][1]
    assert rows["junk.png"][0] == "error" and "not a readable image" in rows["junk.png"][1]
    assert all(rows[p.name][0] != "error" for p in photos[:2])


def test_exif_rotation_and_decoding_follow_decode_image(native_build, model_dir, photos, python_rows):
    """The test files really exercise what they claim: the EXIF file decodes rotated, the
    16-bit, gray and alpha files decode to RGB; the C side agrees on each of them."""
    from pmtiqa_deploy.preprocess import decode_image

    by_name = {p.name: p for p in photos}
    plain, rotated = decode_image(by_name["chelsea.jpg"]), decode_image(by_name["chelsea_exif_rotated.jpg"])
    assert rotated.shape == (plain.shape[1], plain.shape[0], 3)
    rows = run_example(native_build, model_dir, [by_name["chelsea.jpg"], by_name["chelsea_exif_rotated.jpg"]])
    scores = [float(v[0]) for v in rows.values()]
    assert abs(scores[0] - scores[1]) > 1e-3, "a rotated image has other crops, so another score"
    for name in ("chelsea_exif_rotated.jpg", "coffee_16bit.png", "astronaut_gray.png", "rocket_alpha.png"):
        c_score = float(run_example(native_build, model_dir, [by_name[name]])[str(by_name[name])][0])
        assert abs(c_score - python_rows[str(by_name[name])][0]) <= TOLERANCE, name


def python_score(model_dir: Path, rgb: np.ndarray) -> float:
    from pmtiqa_deploy.score import Scorer

    with Scorer.open(model_dir, "onnxruntime", threads=2) as scorer:
        return float(scorer.score_crops([scorer.prepare(rgb)])[0][0])


def test_raw_buffers_in_every_pixel_format(library, model_dir, photos):
    from pmtiqa_deploy.preprocess import decode_image

    rgb = decode_image(next(p for p in photos if p.name == "coffee_noise.png"))
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    variants = {
        "RGB": (rgb, RGB), "BGR": (np.ascontiguousarray(rgb[..., ::-1]), BGR),
        "RGBA": (np.dstack([rgb, alpha]), RGBA), "BGRA": (np.dstack([rgb[..., ::-1], alpha]), BGRA),
        "RGB padded": (padded(rgb), RGB), "BGRA padded": (padded(np.dstack([rgb[..., ::-1], alpha]), 32), BGRA),
    }
    with Model(library, model_dir, backend=BACKEND_CPU, threads=2) as model:
        scores = {name: model.score(array, fmt)[0] for name, (array, fmt) in variants.items()}
        gray = np.ascontiguousarray(rgb[..., 1])
        gray_scores = [model.score(gray, GRAY)[0], model.score(padded(gray, 7), GRAY)[0]]
    assert len(set(scores.values())) == 1, f"the same pixels in another layout must score identically: {scores}"
    assert abs(scores["RGB"] - python_score(model_dir, rgb)) <= TOLERANCE
    assert gray_scores[0] == gray_scores[1]
    assert abs(gray_scores[0] - python_score(model_dir, np.repeat(gray[..., None], 3, axis=2))) <= TOLERANCE


def test_batches_score_as_single_images(library, model_dir, photos):
    from pmtiqa_deploy.preprocess import decode_image

    arrays = [decode_image(p) for p in photos[:3]]
    with Model(library, model_dir, backend=BACKEND_CPU) as model:
        singles = [model.score(a, RGB) for a in arrays]
        batch, probs = model.score_batch([(a, RGB) for a in arrays])
        empty = model.lib.pmtiqa_score_batch(model.handle, None, 0, None, None)
    assert batch == [(s[0], s[1]) for s in singles]
    assert np.array_equal(probs, np.stack([s[2] for s in singles]))
    assert empty == OK


def test_model_info_describes_the_spec(library, model_dir):
    with Model(library, model_dir) as model:
        info = model.info
        assert (info.backend, info.num_levels, info.crop_count, info.crop_size) == (BACKEND_CPU, 10, 3, 224)
        assert (info.score_min, info.score_max, info.higher_is_better) == (0.0, 100.0, 1)
        assert info.units == b"MOS" and info.model_file.endswith(b"/model.onnx") and info.max_batch == 1
    assert library.pmtiqa_abi_version() == 1 and library.pmtiqa_version() == b"0.1.0"
    assert library.pmtiqa_backend_available(BACKEND_CPU) == 1


@pytest.mark.slow
def test_uint8_graph_with_normalisation_inside_runs_on_opencv(native_build, model_dir_uint8, photos):
    """OpenCV 4.6 imports the graph's Mul-by-1/std on the wrong axis; the backend repairs it."""
    chosen = photos[::3]
    py = python_scores(model_dir_uint8, chosen)
    rows = run_example(native_build, model_dir_uint8, chosen)
    worst = max(abs(float(rows[str(p)][0]) - py[str(p)][0]) for p in chosen)
    assert worst <= TOLERANCE


CASES = json.loads((Path(__file__).parents[1] / "spec_cases.json").read_text())


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    """Each case of tests/spec_cases.json as model.json in a folder of its own."""
    import jsonpatch

    root = tmp_path_factory.mktemp("spec-cases")
    files = {}
    for number, case in enumerate(CASES["cases"]):
        folder = root / f"case{number}"
        folder.mkdir()
        text = case["text"] if "text" in case else json.dumps(jsonpatch.apply_patch(CASES["base"], case["patch"]))
        (folder / "model.json").write_text(text)
        files[case["case"]] = folder / "model.json"
    return files


@pytest.fixture(scope="module")
def cpp_reading(native_build, case_files) -> dict[str, dict]:
    """What the C++ reader makes of every case file (native/tests/spec_dump.cpp)."""
    done = subprocess.run([str(native_build / "pmtiqa_spec_dump"), *map(str, case_files.values())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {case: line for case, line in zip(case_files, lines)}


def _comparable(spec: dict) -> dict:
    """Output shapes as text (C++ keeps 10 and "B" alike as strings)."""
    return {**spec, "outputs": [{**o, "shape": [str(d) for d in o["shape"]]} for o in spec["outputs"]]}


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["case"] for c in CASES["cases"]])
def test_spec_cases_read_as_python_reads_them(library, case_files, cpp_reading, case):
    """The table tests/runtime/test_spec.py runs too: a rejected spec fails pmtiqa_open
    with PMTIQA_ERROR_SPEC and a message naming the file and the key; an accepted one
    reads to the very values Python reads, optional keys' defaults included."""
    from pmtiqa_deploy.spec import ModelSpec

    path = case_files[case["case"]]
    if case.get("accepted"):
        assert "spec" in cpp_reading[case["case"]], cpp_reading[case["case"]]
        assert cpp_reading[case["case"]]["spec"] == _comparable(ModelSpec.load(path).to_dict())
        return
    status, message = open_status(library, path.parent, backend=BACKEND_CPU)
    assert status == SPEC, (status, message)
    assert str(path) in message and all(word in message for word in case["rejected"]), message


def test_model_file_must_match_its_hash_unless_told_not_to_check(library, model_dir, tmp_path):
    """The hash is OpenSSL's SHA-256 (libcrypto's EVP interface), as hashlib's in Python."""
    folder = tmp_path / "tampered"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(model_dir / "model.onnx")
    data = json.loads((model_dir / "model.json").read_text())
    data["artifacts"][0]["sha256"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(data))
    status, message = open_status(library, folder, backend=BACKEND_CPU)
    assert status == SPEC and "does not match its spec" in message
    assert open_status(library, folder, backend=BACKEND_CPU, verify_hash=0) == (OK, "")


def test_last_error_is_per_thread(library, model_dir):
    with Model(library, model_dir, backend=BACKEND_CPU) as model:
        failed = model.lib.pmtiqa_score(model.handle, None, ctypes.byref(Result()), None)
        seen: dict[str, bytes] = {}

        def other_thread() -> None:
            seen["before"] = library.pmtiqa_last_error()
            library.pmtiqa_score(model.handle, None, None, None)
            seen["after"] = library.pmtiqa_last_error()

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert failed == INVALID_ARGUMENT and library.pmtiqa_last_error() == b"image is NULL"
        assert seen == {"before": b"", "after": b"image is NULL"}
        model.score(np.full((64, 64), 128, np.uint8), GRAY)
        assert library.pmtiqa_last_error() == b""


def test_bad_input_returns_statuses_never_crashes(native_build, model_dir, tmp_path):
    """The C driver's checks (native/tests/abi_check.c) in the ordinary build; the slow
    test in test_native_build.py runs them again under AddressSanitizer."""
    run_abi_check(native_build / "pmtiqa_abi_check", model_dir, tmp_path)
