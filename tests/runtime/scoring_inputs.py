"""Files for the scoring, CLI and benchmark tests (imported by them, not a test module):
a folder of awkward image files, a model directory for the null backend, and a real
exported model (a small resnet18 checkpoint exported to ONNX once per session)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec, ScoreSpec

# name -> whether it should score (False: it should get an error row)
AWKWARD = {
    "a_photo.jpg": True, "b_photo.png": True, "c_zero_bytes.jpg": False,
    "d_truncated.jpg": False, "e_text.jpg": False, "f_one_pixel.png": False,
    "g_sixteen_bit.png": True, "h_rgba.png": True, "i_gray.png": True, "j_cmyk.jpg": True,
    "k_exif_rotated.jpg": True, "l_huge_8000x6000.jpg": True, "m_photo.jpg": True,
    "n_photo.png": True,
}


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (blurred noise, a gradient, a brightness and contrast that
    vary with the seed): photo-like statistics, different for every seed."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 3)
    noise /= noise.std()
    ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None] * (seed % 3 - 1)
    image = 128 + 10 * (seed % 7 - 3) + (15 + 8 * (seed % 5)) * noise + ramp
    return np.clip(image, 0, 255).astype(np.uint8)


def _encode(ext: str, array: np.ndarray, params: tuple = ()) -> bytes:
    ok, buf = cv2.imencode(ext, array, list(params))
    assert ok
    return buf.tobytes()


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 Exif segment holding only the Orientation tag (0x0112)."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    payload = b"Exif\0\0" + b"MM\0*\0\0\0\x08" + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG of the awkward folder")
    buffer = io.BytesIO()
    pil.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_awkward_folder(folder: Path) -> dict[str, bool]:
    """The files of AWKWARD under `folder` (and one non-image file that folder expansion
    must skip). Returns AWKWARD."""
    folder.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(photo(260, 300, 1), cv2.COLOR_RGB2BGR)
    jpeg = _encode(".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, 92))
    files = {
        "a_photo.jpg": jpeg,
        "b_photo.png": _encode(".png", cv2.cvtColor(photo(240, 320, 2), cv2.COLOR_RGB2BGR)),
        "c_zero_bytes.jpg": b"",
        "d_truncated.jpg": jpeg[: len(jpeg) // 2],
        "e_text.jpg": b"this is a text file, not a JPEG\n",
        "f_one_pixel.png": _encode(".png", np.full((1, 1, 3), 128, np.uint8)),
        "g_sixteen_bit.png": _encode(".png", (photo(250, 260, 3).astype(np.uint16) * 257)),
        "h_rgba.png": _encode(".png", np.dstack([photo(230, 240, 4), np.full((230, 240), 200, np.uint8)])),
        "i_gray.png": _encode(".png", photo(240, 250, 5)[..., 1]),
        "j_cmyk.jpg": _cmyk_jpeg(photo(240, 256, 6)),
        "k_exif_rotated.jpg": with_exif_orientation(
            _encode(".jpg", cv2.cvtColor(photo(230, 330, 7), cv2.COLOR_RGB2BGR)), 6),
        "l_huge_8000x6000.jpg": _encode(".jpg", cv2.resize(photo(300, 400, 8), (8000, 6000)),
                                        (cv2.IMWRITE_JPEG_QUALITY, 80)),
        "m_photo.jpg": _encode(".jpg", cv2.cvtColor(photo(256, 256, 9), cv2.COLOR_RGB2BGR)),
        "n_photo.png": _encode(".png", cv2.cvtColor(photo(300, 240, 10), cv2.COLOR_RGB2BGR)),
    }
    assert set(files) == set(AWKWARD)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image: folder expansion skips it\n")
    return AWKWARD


def null_model_dir(folder: Path, batch_max: int = 8, crop_count: int = 2) -> Path:
    """A model directory holding only model.json: what the null backend needs."""
    spec = ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10, dataset="test"),
                     preprocess=PreprocessSpec(crop_count=crop_count),
                     input=InputSpec(batch_min=1, batch_opt=min(4, batch_max), batch_max=batch_max),
                     backbone="resnet18")
    folder.mkdir(parents=True, exist_ok=True)
    spec.save(folder)
    return folder


_EXPORTS: dict[str, tuple[Path, Path]] = {}


def exported_model(tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, checkpoint_dir): a resnet18 PMT-IQA (2 crops, batch 1..8) whose scores
    spread over 10..90 on a few photos, exported to FP32 and FP16 ONNX (no engine).
    Built once per test session, whichever test module asks first; skips without the
    export extra."""
    if "resnet18" in _EXPORTS:
        return _EXPORTS["resnet18"]
    torch = pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
    pipeline = pytest.importorskip("pmtiqa_deploy.export.pipeline", reason="export is not available")
    from pmtiqa_deploy.preprocess import crops_uint8, normalize
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    root = tmp_path_factory.mktemp("scoring-export")
    photos = root / "photos"
    photos.mkdir()
    preprocess = PreprocessSpec(crop_count=2)
    images = [photo(240 + 8 * i, 300 - 6 * i, 20 + i) for i in range(6)]
    for i, image in enumerate(images):
        cv2.imwrite(str(photos / f"p{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    calibrate_untrained(model, np.concatenate([normalize(crops_uint8(i, preprocess), preprocess) for i in images]),
                        preprocess.crop_count)
    info = CheckpointInfo(config=model.config, preprocess=preprocess,
                          score=ScoreSpec.from_levels(0.0, 100.0, 10, dataset="test"))
    checkpoint = save_checkpoint(model, root / "checkpoint", info)
    options = pipeline.ExportOptions(engine=False, batch_opt=4, batch_max=8, parity_images=photos,
                                     threads=2)
    result = pipeline.export_model(checkpoint, root / "model", options)
    _EXPORTS["resnet18"] = (result.directory, Path(checkpoint))
    return _EXPORTS["resnet18"]
