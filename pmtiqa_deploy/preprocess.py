"""The reference preprocessing: the written definition in `PreprocessSpec`, in NumPy and
OpenCV. Training, the CPU runtime, the GPU kernel and in-graph normalisation are all
tested against these functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pmtiqa_deploy.errors import DecodeError
from pmtiqa_deploy.spec import InputSpec, PreprocessSpec

# OpenCV applies EXIF orientation for every flag except IMREAD_UNCHANGED; COLOR gives
# three channels (gray replicated, alpha dropped, CMYK converted) and ANYDEPTH keeps
# 16-bit samples so we scale them ourselves instead of OpenCV truncating.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


def decode_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode an image file (path or encoded bytes) to an HxWx3 uint8 RGB array."""
    name = "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise DecodeError(f"{name}: cannot read file ({exc.strerror})") from None
    else:
        data = bytes(source)
    if not data:
        raise DecodeError(f"{name}: file is empty (0 bytes)")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        # libjpeg returns a grey-filled image for a truncated file and only warns.
        raise DecodeError(f"{name}: JPEG is truncated (no end-of-image marker); re-copy the file")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAGS)
    if image is None:
        raise DecodeError(f"{name}: not a readable image (unknown format or corrupt data)")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resized_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The (height, width) the resize policy gives for an image of this size."""
    if min(height, width) < spec.min_side:
        raise DecodeError(
            f"image is {width}x{height}; quality needs at least {spec.min_side} pixels on the "
            "shorter side"
        )
    if spec.resize == "fixed":
        height, width = spec.height, spec.width
    elif spec.resize == "shorter_side":
        scale = spec.shorter_side / min(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if min(height, width) < spec.crop_size:
        scale = spec.crop_size / min(height, width)
        height = max(spec.crop_size, round(height * scale))
        width = max(spec.crop_size, round(width * scale))
    return height, width


def resize_image(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Apply the spec's resize policy (bilinear, half-pixel centres)."""
    height, width = resized_size(image.shape[0], image.shape[1], spec)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def grid_shape(count: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the crop grid: the most square factorisation of `count`,
    with more columns than rows on landscape images and the reverse on portrait ones."""
    rows = max(r for r in range(1, int(count**0.5) + 1) if count % r == 0)
    cols = count // rows
    return (rows, cols) if width >= height else (cols, rows)


def crop_boxes(height: int, width: int, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left (y, x) corners of the fixed crop grid, row-major.

    Positions are spread evenly from edge to edge: along an axis with k crops the i-th
    starts at round(i * (extent - size) / (k - 1)); a single crop is centred.
    """
    rows, cols = grid_shape(count, height, width)

    def starts(extent: int, k: int) -> list[int]:
        if k == 1:
            return [(extent - size) // 2]
        return [int(np.floor(i * (extent - size) / (k - 1) + 0.5)) for i in range(k)]

    return [(y, x) for y in starts(height, rows) for x in starts(width, cols)]


def crops_uint8(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize and cut the crop grid: [N, size, size, 3] uint8 RGB."""
    image = resize_image(image, spec)
    size = spec.crop_size
    boxes = crop_boxes(image.shape[0], image.shape[1], size, spec.crop_count)
    return np.stack([image[y:y + size, x:x + size] for y, x in boxes])


def normalize(crops: np.ndarray, spec: PreprocessSpec, dtype: str = "float32") -> np.ndarray:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] normalised floats."""
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    out = (crops.astype(np.float32) - mean) * scale
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(dtype, copy=False)


def preprocess(image: np.ndarray, spec: PreprocessSpec, input_spec: InputSpec) -> np.ndarray:
    """One decoded RGB image -> its crops in the graph input's dtype and layout
    ([N, 3, H, W] float or [N, H, W, 3] uint8); stack these for a batch."""
    crops = crops_uint8(image, spec)
    if input_spec.dtype == "uint8":
        return np.ascontiguousarray(crops)
    return normalize(crops, spec, input_spec.dtype)


def preprocess_file(path: str | os.PathLike, spec: PreprocessSpec, input_spec: InputSpec) -> np.ndarray:
    return preprocess(decode_image(path), spec, input_spec)
