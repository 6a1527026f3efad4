"""The reference preprocessing: the written definition in `PreprocessSpec`, in NumPy and
OpenCV. Training, the CPU runtime, the GPU kernel and in-graph normalisation are all
tested against these functions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from pmtiqa_deploy.decoder_log import DECODER_LOG
from pmtiqa_deploy.errors import DecodeError
from pmtiqa_deploy.spec import InputSpec, PreprocessSpec

# OpenCV applies EXIF orientation for every flag except IMREAD_UNCHANGED; COLOR gives
# three channels (gray replicated, alpha dropped, CMYK converted) and ANYDEPTH keeps
# 16-bit samples so we scale them ourselves instead of OpenCV truncating.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH


# After a scan's entropy-coded data, the next marker: 0xFF followed by anything but a
# stuffed zero, a restart marker (RST0..7) or another fill byte.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def is_complete_jpeg(data: bytes) -> bool:
    """Whether a JPEG stream reaches its end-of-image marker.

    Walks the marker segments (so the EOI of an EXIF thumbnail inside APP1 does not
    count) and skips entropy-coded scans. Bytes after EOI (phone trailers, the video of
    a motion photo) are allowed. Only running out of data counts as truncation; a stream
    whose structure is corrupt in some other way is left to the decoder to judge.
    """
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > end:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def read_image_file(path: str | os.PathLike) -> bytes:
    """An image file's bytes; DecodeError when it cannot be read (what decode_image says,
    so a client that sends the bytes elsewhere reports the same error)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(f"{path}: cannot read file ({exc.strerror})") from None


def decode_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode an image file (path or encoded bytes) to an HxWx3 uint8 RGB array."""
    name = "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        data = read_image_file(source)
    else:
        data = bytes(source)
    if not data:
        raise DecodeError(f"{name}: file is empty (0 bytes)")
    if data[:2] == b"\xff\xd8" and not is_complete_jpeg(data):
        # libjpeg returns a grey-filled image for a truncated file and only warns.
        raise DecodeError(f"{name}: JPEG is truncated (no end-of-image marker); re-copy the file")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        with DECODER_LOG.quiet():  # OpenCV's, libpng's and libjpeg's messages stay off stderr
            image = cv2.imdecode(buffer, _DECODE_FLAGS)
    except cv2.error as exc:
        # OpenCV raises (instead of returning None) for headers it refuses, such as
        # dimensions beyond its pixel limit.
        said = _said(lambda: cv2.imdecode(buffer, _DECODE_FLAGS))
        raise DecodeError(f"{name}: not a readable image ({exc.err or exc}{said}); the header "
                          "is corrupt or the image is larger than OpenCV's pixel limit") from None
    if image is None:
        said = _said(lambda: cv2.imdecode(buffer, _DECODE_FLAGS))
        raise DecodeError(f"{name}: not a readable image ("
                          + (f"corrupt data{said}" if said else "unknown format or corrupt data") + ")")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _said(decode) -> str:
    """"; the decoder said: ..." for a failed decode, from decoding it again alone."""
    said = DECODER_LOG.said_while(decode)
    return f"; the decoder said: {'; '.join(said)}" if said else ""


def resized_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The (height, width) the resize policy gives for an image of this size."""
    if min(height, width) < spec.min_side:
        raise DecodeError(
            f"image is {width}x{height}; quality needs at least {spec.min_side} pixels on the "
            "shorter side"
        )
    # PreprocessSpec guarantees the sizes each policy needs; these tests only narrow types.
    if spec.resize == "fixed" and spec.height and spec.width:
        height, width = spec.height, spec.width
    elif spec.resize == "shorter_side" and spec.shorter_side:
        scale = spec.shorter_side / min(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    if min(height, width) < spec.crop_size:
        scale = spec.crop_size / min(height, width)
        height = max(spec.crop_size, round(height * scale))
        width = max(spec.crop_size, round(width * scale))
    return height, width


def resize_image(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Apply the spec's resize policy.

    "bilinear" is OpenCV's bit-exact bilinear resize (INTER_LINEAR_EXACT: half-pixel
    centres, 8-bit fixed-point weights, the same integers on every CPU), not INTER_LINEAR,
    whose uint8 path varies with the SIMD/IPP code a build takes. The GPU kernel and the
    C++ library compute the same integers (pmtiqa_deploy/kernels/KERNEL.md).
    """
    height, width = resized_size(image.shape[0], image.shape[1], spec)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)


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
