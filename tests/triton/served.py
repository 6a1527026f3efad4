"""What the serving tests share (imported by them, not a test module): the tiny test model
and its input files, and the checks every server must pass through the one client:
rows equal to local `pmtiqa-score`, a broken image answered with its own error while the
rest of its request is scored, and a bounded burst of concurrent requests all answered."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from pmtiqa_deploy.cli import score_command

CROP, CROPS = 64, 2


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """Blurred noise over a diagonal ramp: photo-like, different for every seed."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 3)).astype(np.float32), (0, 0), 2 + seed % 3)
    ramp = np.add.outer(np.arange(height), np.arange(width))[..., None] * (seed % 4) * 0.3
    return np.clip(90 + 10 * seed + noise + ramp, 0, 255).astype(np.uint8)


def write_photos(folder: Path) -> Path:
    """Six small PNGs (for the model's BatchNorm statistics and the parity check)."""
    for seed in range(6):
        image = _image(96 + 8 * seed, 128 - 6 * seed, seed)
        cv2.imwrite(str(folder / f"photo{seed}.png"), image)
    return folder


def write_inputs(folder: Path, photos: Path) -> list[Path]:
    """The files to score: the photos as JPEG and PNG, a BMP whose last bytes are zeros
    (a server that drops trailing zero bytes breaks it), and files that cannot be scored:
    corrupt, empty, truncated, too small, and one that does not exist."""
    paths = []
    for index, photo in enumerate(sorted(photos.glob("*.png"))):
        image = cv2.imread(str(photo))
        target = folder / f"{index:02d}_{photo.stem}{'.jpg' if index % 2 else '.png'}"
        cv2.imwrite(str(target), image)
        paths.append(target)
    dark = np.zeros((80, 90, 3), np.uint8)
    dark[:20] = _image(20, 90, 7)
    ok, bmp = cv2.imencode(".bmp", dark)
    assert ok and bmp.tobytes().endswith(b"\0\0")
    broken = {"10_dark_tail.bmp": bmp.tobytes(), "11_corrupt.jpg": b"\xff\xd8 not really a JPEG",
              "12_empty.png": b"", "14_tiny.png": cv2.imencode(".png", dark[:8, :8])[1].tobytes()}
    jpeg = paths[1].read_bytes()
    broken["13_truncated.jpg"] = jpeg[: len(jpeg) // 2]
    for name, data in sorted(broken.items()):
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    paths.insert(3, folder / "09_missing.jpg")  # never written: a read error mid-list
    return paths


def make_checkpoint(folder: Path, photos: Path) -> Path:
    """A resnet18 PMT-IQA on 64-pixel crops whose scores spread over the range on the photos
    (BatchNorm statistics from their crops, the head rescaled; train/calibration.py)."""
    import torch

    from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
    from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(2)
    preprocess = PreprocessSpec(crop_size=CROP, crop_count=CROPS)
    model = PMTIQA(ModelConfig(backbone="resnet18", crop_size=CROP, pool=2))
    crops = [normalize(crops_uint8(decode_image(p), preprocess), preprocess)
             for p in sorted(photos.glob("*.png"))]
    calibrate_untrained(model, np.concatenate(crops), CROPS)
    info = CheckpointInfo(config=model.config, preprocess=preprocess,
                          score=ScoreSpec.from_levels(0.0, 100.0, 10, dataset="serving-test"))
    return save_checkpoint(model, folder, info)


def score(*args) -> tuple[int, list[dict]]:
    """pmtiqa-score in-process: its exit code and rows (JSON lines)."""
    result = CliRunner().invoke(score_command, [*map(str, args), "--format", "jsonl", "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()]


def check_same_as_local(url: str, model_dir: Path, inputs: list[Path]) -> None:
    """The same rows (paths, errors, levels; scores within 1e-5) and exit code as local
    scoring on ONNX Runtime FP32, requests of 3 images, 2 in flight."""
    local_code, local = score(*inputs, "--model", model_dir)
    served_code, served = score(*inputs, "--server", url, "--batch", 3, "--workers", 2)
    assert local_code == served_code == 1  # some inputs cannot be scored
    assert [r["path"] for r in served] == [r["path"] for r in local] == [str(p) for p in inputs]
    assert [r["error"] for r in served] == [r["error"] for r in local]
    assert sum(r["error"] is None for r in local) == 7
    assert [r["level"] for r in served] == [r["level"] for r in local]
    pairs = [(a["score"], b["score"]) for a, b in zip(served, local) if b["error"] is None]
    assert max(abs(a - b) for a, b in pairs) <= 1e-5
    assert len({b for _, b in pairs}) == len(pairs)  # distinct scores: order mix-ups would show


def check_broken_image_alone(url: str, inputs: list[Path]) -> None:
    """One request with a corrupt file between two photos: the corrupt one gets its error,
    the photos the scores they get when sent alone."""
    from pmtiqa_deploy.triton.client import ServerScorer

    first, second = inputs[0].read_bytes(), inputs[1].read_bytes()
    with ServerScorer.open(url) as client:
        mixed = client.infer([first, b"\x89PNG\r\n\x1a\n broken", second])
        alone = [client.infer([data]) for data in (first, second)]
    errors = [text.decode() for text in mixed["error"].reshape(-1)]
    assert errors[0] == errors[2] == "" and errors[1].startswith("not a readable image")
    assert np.isnan(mixed["score"][1, 0]) and mixed["level"][1, 0] == -1
    assert abs(mixed["score"][0, 0] - alone[0]["score"][0, 0]) <= 1e-5
    assert abs(mixed["score"][2, 0] - alone[1]["score"][0, 0]) <= 1e-5


def check_burst(url: str, inputs: list[Path]) -> None:
    """8 concurrent clients x 3 requests of 2 images, bounded at 60 s: every request answered,
    every image scored."""
    from pmtiqa_deploy.triton.bench import measure
    from pmtiqa_deploy.triton.client import ServerScorer

    images = [path.read_bytes() for path in inputs[:3]]
    with ServerScorer.open(url) as client:
        row = measure(client, images, concurrency=8, batch=2, iterations=3, time_limit=60)
    assert row.status == "ok" and row.requests == 24 and row.images == 48 and row.error_rows == 0
    assert 0 < row.p50_ms <= row.p99_ms
