"""Helpers for the native tests (fixtures in conftest.py): CMake builds of native/ in tmp
dirs, photos written as image files of every kind the decoder meets, the test model's
checkpoint and export, the Python runtime's scores, and running the ABI check driver.

Toolchain policy: without cmake, a C/C++ compiler, or the development files of OpenCV,
nlohmann-json or OpenSSL (libssl-dev), the tests skip with the reason printed; in CI (CI=true),
where .ci/run installs them, a missing toolchain fails instead, so a broken install cannot
pass quietly.

The model: a resnet18 PMT-IQA whose BatchNorm statistics come from the photos' crops
and whose regression head is rescaled (an exact affine map of every score) so the
photos' scores spread over 12..87 of a 0..100 range, away from the level boundaries at
the ends; exported with the real pipeline (pmtiqa_deploy.export.pipeline.export_model),
so the C++ side reads the very model.json and model.onnx that export writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "native"
IN_CI = os.environ.get("CI") == "true"
CROPS = 3  # a 1x3 grid on landscape images, 3x1 on portrait ones
# Lines in a failed CMake configure that mean a missing package rather than a bug.
MISSING_MARKERS = ("Could not find a package configuration file provided by \"OpenCV\"",
                   "Could not find a package configuration file provided by \"nlohmann_json\"",
                   "No CMAKE_CXX_COMPILER could be found", "No CMAKE_C_COMPILER could be found",
                   "Could NOT find OpenCV", "Could NOT find nlohmann_json", "Could NOT find OpenSSL")


def toolchain_missing(reason: str):
    """Skip, or in CI fail: .ci/run installs the native toolchain there."""
    message = (f"native toolchain missing: {reason}; install with: apt-get install -y "
               "--no-install-recommends cmake g++ libopencv-dev nlohmann-json3-dev libssl-dev")
    if IN_CI:
        pytest.fail(message + " (CI=true: the native library must be built)")
    pytest.skip(message)


def cmake_build(build_dir: Path, *options: str, targets: tuple[str, ...] = ()) -> Path:
    """Configure native/ into `build_dir` with `options` and build `targets` (all if
    empty); the logs of a failure are in the assertion message."""
    if shutil.which("cmake") is None:
        toolchain_missing("no cmake on PATH")
    configure = subprocess.run(
        ["cmake", "-S", str(NATIVE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", *options],
        capture_output=True, text=True)
    log = configure.stdout + configure.stderr
    if configure.returncode != 0:
        if any(marker in log for marker in MISSING_MARKERS):
            toolchain_missing(next(m for m in MISSING_MARKERS if m in log))
        pytest.fail(f"cmake configure failed:\n{log[-6000:]}")
    command = ["cmake", "--build", str(build_dir), "-j", str(min(2, os.cpu_count() or 1))]
    for target in targets:
        command += ["--target", target]
    build = subprocess.run(command, capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"cmake --build failed:\n{(build.stdout + build.stderr)[-8000:]}")
    (build_dir / "configure.log").write_text(log)
    return build_dir


def _photo_arrays() -> dict[str, np.ndarray]:
    from skimage import data as skimage_data

    photos = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
        image = getattr(skimage_data, name)()[..., :3]
        height, width = image.shape[:2]
        scale = 300 / max(height, width)
        photos[name] = np.ascontiguousarray(
            cv2_resize(image, round(width * scale), round(height * scale)))
    return photos


def cv2_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


# A minimal EXIF APP1 segment with Orientation = 6 (rotate 90 degrees clockwise).
EXIF_ROTATE_90 = (b"\xff\xe1\x00\x22Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00"
                  b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00")


def write_photos(folder: Path) -> list[Path]:
    """Image files of every kind the decoder handles: 8-bit RGB PNG (clean, blurred,
    noisy), a portrait, JPEG, JPEG with an EXIF rotation, BMP, gray PNG, 16-bit PNG,
    RGBA PNG, and an image smaller than a crop (scaled up)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = _photo_arrays()
    written = []

    def save(name: str, image: np.ndarray, params: tuple = ()) -> None:
        path = folder / name
        if image.ndim == 3 and image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
        assert cv2.imwrite(str(path), image, list(params)), path
        written.append(path)

    for name, image in photos.items():
        save(f"{name}_clean.png", image)
        save(f"{name}_blur.png", cv2.GaussianBlur(image, (0, 0), 2.0))
        save(f"{name}_noise.png",
             np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8))
    save("coffee_portrait.png", np.ascontiguousarray(np.transpose(photos["coffee"], (1, 0, 2))))
    save("chelsea.jpg", photos["chelsea"], (cv2.IMWRITE_JPEG_QUALITY, 85))
    save("rocket.bmp", photos["rocket"])
    save("astronaut_gray.png", cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2GRAY))
    low_bits = rng.integers(0, 256, photos["coffee"].shape, dtype=np.uint16)
    save("coffee_16bit.png", photos["coffee"].astype(np.uint16) * 256 + low_bits)  # decoded /257
    alpha = rng.integers(0, 256, photos["rocket"].shape[:2], dtype=np.uint8)
    save("rocket_alpha.png", np.dstack([photos["rocket"], alpha]))
    save("chelsea_small.png", cv2_resize(photos["chelsea"], 150, 100))
    jpeg = (folder / "chelsea.jpg").read_bytes()
    rotated = folder / "chelsea_exif_rotated.jpg"
    rotated.write_bytes(jpeg[:2] + EXIF_ROTATE_90 + jpeg[2:])
    written.append(rotated)
    return sorted(written)


def make_checkpoint(folder: Path, photos: list[Path]) -> Path:
    import torch

    from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
    from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    torch.set_num_threads(2)
    torch.manual_seed(0)
    preprocess = PreprocessSpec(crop_count=CROPS)
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    crops = [crops_uint8(decode_image(p), preprocess) for p in photos]
    calibrate_untrained(model, np.concatenate([normalize(c, preprocess) for c in crops]), CROPS, 12.0, 87.0)
    info = CheckpointInfo(config=model.config, preprocess=preprocess,
                          score=ScoreSpec.from_levels(0.0, 100.0, model.config.num_levels, dataset="fixture"),
                          training={"dataset": "fixture", "note": "BN statistics from the photos, head rescaled"})
    return save_checkpoint(model, folder, info)


def export(checkpoint: Path, photos: list[Path], out: Path, input_dtype: str) -> Path:
    from pmtiqa_deploy.export.pipeline import ExportOptions, export_model

    parity = photos[0].parent
    options = ExportOptions(engine=False, fp16=False, batch_opt=4, batch_max=8, parity_images=parity,
                            threads=2, input_dtype=input_dtype)
    return export_model(checkpoint, out, options).directory


def python_scores(model_dir: Path, photos: list[Path]) -> dict[str, tuple[float, int]]:
    from pmtiqa_deploy.score import Scorer

    with Scorer.open(model_dir, "onnxruntime", threads=2) as scorer:
        rows = list(scorer.score_files(photos))
    assert all(row.error is None for row in rows), [row.error for row in rows if row.error]
    return {row.path: (row.score, row.level) for row in rows}


def newer_schema_copy(model_dir: Path, folder: Path) -> Path:
    """A copy of the model directory whose model.json has schema major 2."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").symlink_to(model_dir / "model.onnx")
    data = json.loads((model_dir / "model.json").read_text())
    data["schema_version"] = "2.0"
    (folder / "model.json").write_text(json.dumps(data))
    return folder


def engine_listed_copy(model_dir: Path, folder: Path) -> Path:
    """A copy of the model directory whose model.json also lists a TensorRT engine (a file
    that is not a plan: nothing may read it on a machine without a GPU)."""
    import dataclasses

    from pmtiqa_deploy.spec import Artifact, ModelSpec, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").symlink_to(model_dir / "model.onnx")
    (folder / "model.engine").write_bytes(b"not a TensorRT plan")
    engine = Artifact("model.engine", "tensorrt", "fp16", sha256_file(folder / "model.engine"),
                      tensorrt_version="11.4.0", compute_capability="9.0", version_compatible=True)
    spec = ModelSpec.load(model_dir)
    dataclasses.replace(spec, artifacts=spec.artifacts + (engine,)).save(folder)
    return folder


def tensorrt_options() -> list[str]:
    """CMake options that build the TensorRT backend against the vendored TensorRT 11.1
    headers and the lean runtime of the tensorrt-lean-cu13 wheel (the dev extra), and
    compile it against the 10.16 headers too. Empty where the wheel is missing (the
    build then says why it has no TensorRT backend); in CI the wheel must be there."""
    import importlib.util

    found = importlib.util.find_spec("tensorrt_lean_libs")
    library = Path(found.origin).parent / "libnvinfer_lean.so.11" if found and found.origin else None
    if library is None or not library.is_file():
        if IN_CI:
            pytest.fail("tensorrt-lean-cu13 (the dev extra) must be installed in CI: the TensorRT "
                        "backend is compiled and linked against its libnvinfer_lean.so.11")
        return []
    third_party = NATIVE / "third_party"
    return [f"-DTensorRT_INCLUDE_DIR={third_party / 'tensorrt-11.1' / 'include'}",
            f"-DTensorRT_LIBRARY={library}",
            f"-DPMTIQA_TENSORRT_CHECK_HEADERS={third_party / 'tensorrt-10.16' / 'include'}"]


def run_abi_check(driver: Path, model_dir: Path, scratch: Path, env: dict[str, str] | None = None) -> str:
    """Run native/tests/abi_check.c's driver; its output on failure. Without a CUDA device
    it also checks that a spec listing an engine opens as BACKEND_UNAVAILABLE with the
    TensorRT backend and falls back to the CPU with AUTO."""
    newer = newer_schema_copy(model_dir, scratch / "newer")
    work = scratch / "scratch"
    work.mkdir()
    from pmtiqa_deploy.export.tensorrt import gpu_compute_capability

    no_gpu = gpu_compute_capability() is None
    extra = [str(engine_listed_copy(model_dir, scratch / "engine"))] if no_gpu else []
    done = subprocess.run([str(driver), str(model_dir), str(newer), str(work), *extra], capture_output=True,
                          text=True, timeout=600, env=env)
    output = done.stdout + done.stderr
    print(output[-3000:])
    assert done.returncode == 0, output[-8000:]
    assert " 0 failed" in output and "ERROR: AddressSanitizer" not in output, output[-8000:]
    return output
