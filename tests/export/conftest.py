"""Fixtures for the export tests: real photographs, a fixture checkpoint whose scores
spread over the range, and exports of it (CPU, no TensorRT).

The photographs are skimage's colour photos (they ship inside the package, no download)
cut to small sizes and degraded at a few levels, written as PNG into tmp dirs.

The fixture model. A randomly initialised PMT-IQA gives nearly the same score to every
image, which makes SRCC meaningless. So the fixture (1) sets the BatchNorm statistics
from the photos' own crops (a train-mode pass with cumulative averages, as the first
steps of training would) so activations are well scaled, then (2) rescales the
regression head (weight and bias, an exact affine map of every score) so the photos'
scores span 10..90 on the 0..100 score range. Ranks come from the untouched network;
only their spread is set, as training would set it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec

# torch, onnx, onnxruntime and scikit-image come with the export extra; the test modules
# that need them skip without them (importorskip at their top), so nothing heavy is
# imported here at module level.

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
CROPS = 2


def _degrade(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), 2.5)
    if kind == "noise":
        return np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    return image


def write_photos(folder: Path) -> Path:
    """18 PNGs: six photographs, each clean, blurred and noisy, at about 256x240."""
    from skimage import data as skimage_data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        image = getattr(skimage_data, name)()[..., :3]
        h, w = image.shape[:2]
        scale = 256 / min(h, w)
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        image = image[:240, :288]
        for kind in ("clean", "blur", "noise"):
            out = _degrade(image, kind, rng)
            cv2.imwrite(str(folder / f"{name}_{kind}.png"), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    return folder


def fixture_model(backbone: str, photos: Path, preprocess: PreprocessSpec, seed: int = 0):
    """A PMT-IQA whose scores on `photos` spread over 10..90 (see the module docstring)."""
    import torch

    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    model = PMTIQA(ModelConfig(backbone=backbone))
    crops = [crops_uint8(decode_image(p), preprocess) for p in sorted(photos.glob("*.png"))]
    return calibrate_untrained(model, np.concatenate([normalize(c, preprocess) for c in crops]),
                               preprocess.crop_count)


def make_checkpoint(folder: Path, backbone: str, photos: Path, crops: int = CROPS) -> Path:
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint

    preprocess = PreprocessSpec(crop_count=crops)
    model = fixture_model(backbone, photos, preprocess)
    info = CheckpointInfo(
        config=model.config,
        score=ScoreSpec.from_levels(0.0, 100.0, model.config.num_levels, units="MOS", dataset="fixture"),
        preprocess=preprocess,
        training={"dataset": "fixture", "note": "BN statistics from the photos, head rescaled"},
    )
    return save_checkpoint(model, folder, info)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, photos) -> Path:
    """A resnet18 fixture checkpoint, score range 0..100, two crops per image."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet18", "resnet18", photos)


def options(photos: Path, **changes):
    from pmtiqa_deploy.export.pipeline import ExportOptions

    base = ExportOptions(engine=False, batch_opt=4, batch_max=8, parity_images=photos, threads=2)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="session")
def make_options():
    """ExportOptions for the fixture photos with some fields changed."""
    return options


@pytest.fixture(scope="session")
def exported(tmp_path_factory, checkpoint, photos):
    """The float32-input export (FP32 + FP16 ONNX, no engine) of the fixture checkpoint."""
    from pmtiqa_deploy.export.pipeline import export_model

    return export_model(checkpoint, tmp_path_factory.mktemp("export") / "float", options(photos))


@pytest.fixture(scope="session")
def exported_uint8(tmp_path_factory, checkpoint, photos):
    """The uint8-input export, with the debug outputs."""
    from pmtiqa_deploy.export.pipeline import export_model

    return export_model(checkpoint, tmp_path_factory.mktemp("export") / "uint8",
                        options(photos, input_dtype="uint8", debug_outputs=True))


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory) -> Path:
    """A folder for the built-in dataset (built by the first test that asks for it)."""
    return tmp_path_factory.mktemp("builtin") / "builtin"
