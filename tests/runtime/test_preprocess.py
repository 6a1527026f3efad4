"""The reference preprocessing: decoding awkward files, the resize policies, the crop grid
and normalisation. Every file is written by the test into tmp_path."""

import io
import struct

import cv2
import numpy as np
import pytest

from pmtiqa_deploy.errors import DecodeError
from pmtiqa_deploy.preprocess import (
    crop_boxes, crops_uint8, decode_image, grid_shape, normalize, preprocess_file,
    resize_image, resized_size)
from pmtiqa_deploy.spec import InputSpec, PreprocessSpec
from scoring_inputs import with_exif_orientation


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _jpeg(array_bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", array_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- decoding -------------------------------------------------------------------------

def test_path_and_bytes_decode_alike_and_rgb_order(tmp_path):
    bgr = np.zeros((40, 50, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30  # OpenCV writes B, G, R
    path = tmp_path / "plain.png"
    path.write_bytes(_png(bgr))
    rgb = decode_image(path)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [30, 20, 10]
    np.testing.assert_array_equal(decode_image(path.read_bytes()), rgb)
    np.testing.assert_array_equal(decode_image(str(path)), rgb)


def test_gray_is_replicated(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "gray.png"
    path.write_bytes(_png(gray))
    rgb = decode_image(path)
    assert rgb.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., :3] = (10, 20, 30)
    bgra[..., 3] = 0  # fully transparent: the colour is still what is scored
    path = tmp_path / "rgba.png"
    path.write_bytes(_png(bgra))
    rgb = decode_image(path)
    assert rgb.shape == (8, 8, 3)
    assert rgb[3, 3].tolist() == [30, 20, 10]


def test_16_bit_is_scaled_by_257_and_rounded(tmp_path):
    bgr16 = np.zeros((8, 8, 3), np.uint16)
    bgr16[..., 0] = 65535          # B -> 255
    bgr16[..., 1] = 257 * 100 + 129  # G: 100.502 -> 101
    bgr16[..., 2] = 128            # R: 0.498 -> 0
    path = tmp_path / "deep.png"
    path.write_bytes(_png(bgr16))
    rgb = decode_image(path)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 101, 255]
    gray16 = np.full((8, 8), 257 * 77, np.uint16)
    path.write_bytes(_png(gray16))
    assert decode_image(path)[5, 5].tolist() == [77, 77, 77]


def test_cmyk_jpeg_is_converted(tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG for this test")
    buffer = io.BytesIO()
    pil.new("RGB", (24, 16), (220, 30, 40)).convert("CMYK").save(buffer, "JPEG", quality=98)
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(buffer.getvalue())
    rgb = decode_image(path)
    assert rgb.shape == (16, 24, 3)
    assert np.abs(rgb[8, 12].astype(int) - [220, 30, 40]).max() <= 4


@pytest.mark.parametrize("orientation, shape, marked", [
    (1, (40, 60), (0, 0)),      # as stored
    (3, (40, 60), (-1, -1)),    # rotated 180
    (6, (60, 40), (0, -1)),     # rotated 90 clockwise: top-left goes to top-right
    (8, (60, 40), (-1, 0)),     # rotated 90 counter-clockwise: top-left goes to bottom-left
])
def test_exif_orientation_is_applied(tmp_path, orientation, shape, marked):
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[:12, :12] = (0, 0, 255)  # a red block in the stored top-left corner
    path = tmp_path / f"exif{orientation}.jpg"
    path.write_bytes(with_exif_orientation(_jpeg(bgr), orientation))
    rgb = decode_image(path)
    assert rgb.shape[:2] == shape
    y = 3 if marked[0] == 0 else rgb.shape[0] - 4
    x = 3 if marked[1] == 0 else rgb.shape[1] - 4
    assert rgb[y, x, 0] > 200 and rgb[y, x, 1] < 40
    assert rgb[rgb.shape[0] // 2, rgb.shape[1] // 2].max() < 40  # the rest stays black


def test_truncated_jpeg_is_rejected(tmp_path):
    data = _jpeg(_noise(120, 160))
    path = tmp_path / "cut.jpg"
    for size in (len(data) - 2, len(data) // 2, 40):
        path.write_bytes(data[:size])
        with pytest.raises(DecodeError, match="truncated"):
            decode_image(path)


def test_truncated_jpeg_with_a_thumbnail_eoi_is_still_rejected(tmp_path):
    # An APP1 segment holding a complete JPEG (as EXIF thumbnails do) carries its own
    # end-of-image marker; it must not make a truncated main image look complete.
    thumbnail = _jpeg(_noise(16, 16, seed=1))
    payload = b"Exif\0\0" + thumbnail
    main = _jpeg(_noise(200, 200, seed=2))
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + main[2:]
    app1_end = 2 + 2 + 2 + len(payload)
    for cut in (data[: app1_end + 1500], data[: len(data) - len(main) // 3]):
        with pytest.raises(DecodeError, match="truncated"):
            decode_image(cut)


def test_jpeg_with_trailing_data_decodes(tmp_path):
    # Phones append data after the end-of-image marker (motion photos append a video).
    image = _noise(64, 64)
    data = _jpeg(image)
    trailer = np.random.default_rng(3).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    np.testing.assert_array_equal(decode_image(data + trailer), decode_image(data))


def test_progressive_jpeg_decodes(tmp_path):
    data = cv2.imencode(".jpg", _noise(64, 80), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert decode_image(data).shape == (64, 80, 3)
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_empty_missing_and_text_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        decode_image(empty)
    with pytest.raises(DecodeError, match="cannot read"):
        decode_image(tmp_path / "absent.png")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_image(text)
    truncated_png = _png(_noise(64, 64))
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_image(truncated_png[: len(truncated_png) // 2])


def test_header_beyond_opencv_limits_is_a_decode_error():
    bmp = bytearray(cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    bmp[18:26] = struct.pack("<ii", 100000, 100000)  # claims 10^10 pixels
    with pytest.raises(DecodeError, match="not a readable image"):
        decode_image(bytes(bmp))


def test_one_pixel_image_decodes_but_is_too_small_to_score(tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(_png(np.full((1, 1, 3), 7, np.uint8)))
    assert decode_image(path).shape == (1, 1, 3)
    with pytest.raises(DecodeError, match="at least 32 pixels"):
        preprocess_file(path, PreprocessSpec(), InputSpec())


# --- resize policies ------------------------------------------------------------------

def test_resized_size_policies():
    none = PreprocessSpec()
    assert resized_size(480, 640, none) == (480, 640)
    assert resized_size(100, 300, none) == (224, 672)       # shorter side brought up to the crop
    assert resized_size(300, 100, none) == (672, 224)
    fixed = PreprocessSpec(resize="fixed", width=512, height=384)
    assert resized_size(1080, 1920, fixed) == (384, 512)
    assert resized_size(40, 40, fixed) == (384, 512)
    short = PreprocessSpec(resize="shorter_side", shorter_side=256)
    assert resized_size(768, 1024, short) == (256, 341)     # 1024 * 256 / 768 = 341.33
    assert resized_size(1024, 768, short) == (341, 256)
    assert resized_size(100, 100, short) == (256, 256)
    small = PreprocessSpec(resize="shorter_side", shorter_side=112)
    assert resized_size(400, 800, small) == (224, 448)      # 112 < 224: scaled up again
    with pytest.raises(DecodeError, match="31x500"):
        resized_size(500, 31, none)


def test_resize_keeps_the_array_when_the_size_is_unchanged():
    image = _noise(240, 320)
    assert resize_image(image, PreprocessSpec()) is image


def _linear_exact(image: np.ndarray, dst_h: int, dst_w: int) -> np.ndarray:
    """The integers KERNEL.md writes down for the GPU kernel (OpenCV's INTER_LINEAR_EXACT),
    in NumPy: per axis f = (d + 0.5) * (1 / (dst / src)) - 0.5 in float64, an 8-bit weight
    rounded half to even, edge pixels taken whole, then (w0 h0 + w1 h1 + 2^15) >> 16."""
    def axis(dst, src):
        scale = 1.0 / (np.float64(dst) / np.float64(src))
        f = scale * (np.arange(dst, dtype=np.float64) + 0.5) - 0.5
        lower = np.floor(f)
        w1 = np.rint((f - lower) * 256).astype(np.int64)
        edge_low, edge_high = (lower < 0) | (src == 1), lower >= src - 1
        i0 = np.where(edge_low, 0, np.where(edge_high, src - 1, lower)).astype(np.int64)
        w1 = np.where(edge_low | edge_high, 0, w1)
        return i0, np.minimum(i0 + 1, src - 1), 256 - w1, w1

    y0, y1, wy0, wy1 = axis(dst_h, image.shape[0])
    x0, x1, wx0, wx1 = axis(dst_w, image.shape[1])
    pixels = image.astype(np.int64)
    rows = pixels[:, x0] * wx0[None, :, None] + pixels[:, x1] * wx1[None, :, None]
    return ((rows[y0] * wy0[:, None, None] + rows[y1] * wy1[:, None, None] + (1 << 15)) >> 16).astype(np.uint8)


@pytest.mark.parametrize("src, spec", [
    ((300, 400), PreprocessSpec(resize="fixed", width=512, height=384)),       # up
    ((768, 1024), PreprocessSpec(resize="fixed", width=512, height=384)),      # down by exactly 2
    ((385, 513), PreprocessSpec(resize="fixed", width=512, height=384)),       # down by one pixel
    ((500, 333), PreprocessSpec(resize="shorter_side", shorter_side=256)),     # odd ratio
    ((1499, 2000), PreprocessSpec(resize="shorter_side", shorter_side=341)),   # down ~4.4x
    ((100, 150), PreprocessSpec()),                                            # crop upscale
    ((32, 1000), PreprocessSpec()),                                            # 7x up, wide
])
def test_resize_is_the_integer_formula_the_kernel_computes(src, spec):
    # The reference is OpenCV INTER_LINEAR_EXACT; the GPU kernel and the C++ library
    # compute KERNEL.md's integers. Equal bit for bit, whatever CPU OpenCV runs on.
    image = _noise(*src, seed=sum(src))
    resized = resize_image(image, spec)
    assert resized.shape[:2] == resized_size(*src, spec)
    np.testing.assert_array_equal(resized, _linear_exact(image, *resized.shape[:2]))


# --- crop grid ------------------------------------------------------------------------

def test_grid_shape_follows_orientation():
    assert grid_shape(9, 384, 512) == (3, 3)
    assert grid_shape(4, 384, 512) == (2, 2)
    assert grid_shape(6, 384, 512) == (2, 3)
    assert grid_shape(6, 512, 384) == (3, 2)
    assert grid_shape(5, 300, 900) == (1, 5)
    assert grid_shape(5, 900, 300) == (5, 1)
    assert grid_shape(1, 224, 224) == (1, 1)


def test_crop_boxes_span_edge_to_edge():
    boxes = crop_boxes(384, 512, 224, 9)
    assert boxes[0] == (0, 0) and boxes[-1] == (384 - 224, 512 - 224)
    assert boxes == [(y, x) for y in (0, 80, 160) for x in (0, 144, 288)]  # row-major
    six = crop_boxes(384, 512, 224, 6)
    assert six == [(y, x) for y in (0, 160) for x in (0, 144, 288)]
    # positions round half up: (301 - 224) / 2 = 38.5 -> 39
    assert crop_boxes(301, 224, 224, 3) == [(0, 0), (39, 0), (77, 0)]
    assert crop_boxes(300, 500, 224, 1) == [(38, 138)]  # a single crop is centred
    assert crop_boxes(224, 224, 224, 4) == [(0, 0)] * 4


@pytest.mark.parametrize("h, w, count", [(224, 224, 9), (225, 999, 5), (1000, 300, 7), (384, 512, 1)])
def test_every_crop_lies_inside_the_image(h, w, count):
    boxes = crop_boxes(h, w, 224, count)
    assert len(boxes) == count
    assert all(0 <= y <= h - 224 and 0 <= x <= w - 224 for y, x in boxes)


def test_crops_are_slices_of_the_resized_image():
    spec = PreprocessSpec(resize="fixed", width=512, height=384, crop_count=4)
    image = _noise(300, 400, seed=5)
    crops = crops_uint8(image, spec)
    assert crops.shape == (4, 224, 224, 3) and crops.dtype == np.uint8
    resized = resize_image(image, spec)
    for crop, (y, x) in zip(crops, crop_boxes(384, 512, 224, 4)):
        np.testing.assert_array_equal(crop, resized[y:y + 224, x:x + 224])


# --- normalisation and the whole chain ------------------------------------------------

def test_normalize_matches_the_definition():
    spec = PreprocessSpec()
    crops = _noise(2 * 224, 224, seed=6).reshape(2, 224, 224, 3)
    out = normalize(crops, spec)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    expected = (crops / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-5)
    half = normalize(crops, spec, "float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), out, atol=5e-3)


def test_preprocess_in_each_input_dtype_is_deterministic(tmp_path):
    spec = PreprocessSpec(crop_count=4)
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg(_noise(300, 420, seed=7)))
    float_in = preprocess_file(path, spec, InputSpec())
    assert float_in.shape == (4, 3, 224, 224) and float_in.dtype == np.float32
    np.testing.assert_array_equal(float_in, preprocess_file(path, spec, InputSpec()))
    half_in = preprocess_file(path, spec, InputSpec(dtype="float16"))
    assert half_in.dtype == np.float16
    raw = preprocess_file(path, spec, InputSpec(dtype="uint8", layout="BNHWC", normalize_in_graph=True))
    assert raw.shape == (4, 224, 224, 3) and raw.dtype == np.uint8
    np.testing.assert_array_equal(normalize(raw, spec), float_in)
