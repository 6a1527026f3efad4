"""The built-in IQA dataset: offline, seeded, made in seconds from the colour photographs
that scikit-image ships inside its package, so the demo, the tests and the benchmarks
need no download. Its dataset name is `builtin`.

Sources. The eight colour photographs of `skimage.data` that are real photos and present
without pooch: astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry,
motorcycle (stereo_motorcycle's left view), retina and rocket. The grey photographs
(camera, coins, moon...) are left out: colour distortions would do nothing to them, and
the synthetic images (colorwheel, logo, checkerboard) are not photographs. The stereo
twin `motorcycle_right` is the same scene, so it is not a source of its own.

Windows. Every image is a 384x288 window (width x height, 4:3; five 224 crops fit and
the metrics stay cheap). Each photograph gives the whole picture, scaled with area
interpolation just enough to cover the window (cut at its centre, or the astronaut's top
so her face stays whole), and, where the photograph is large enough to differ from that,
windows of its own pixels at scale 1 (two corners; the Hubble field's are the v1
windows; the retina's three lie inside the fundus disc). So content appears at the scale
the camera saw it and zoomed out, 23 windows in all: a learner from scratch sees smooth
surfaces that are sharp (the retina at full resolution) as well as dense detail. The
windows of one photograph share its name as the manifest's reference id, so a
content-disjoint split never puts two views of one photograph on both sides. (Version 1
gave the two Hubble windows separate ids: not content-disjoint.)

Distortions. Ten types at five levels each, from barely visible to severe (`DISTORTIONS`
lists their parameters); noise, impulse noise and the motion-blur direction are drawn
from a generator seeded by (seed, source, type, level), so any subset of sources builds
the same pixels as the full set.

Scores. Each distorted image is scored against its window with the full-reference
pseudo-MOS of `fidelity.py` (MS-SSIM, GMSD and VIFp, 0..100, higher is better). The
references are not items: they would all score 100 and teach nothing.

Layout (the generic CSV-manifest layout, so the CSV reader reads it):
    images/<window>/<distortion>_<level>.png   lossless, the very pixels that were scored
    references/<window>.png    the pristine window those images were scored against
    manifest.csv     path,score,reference sorted by path; reference is the photograph
    manifest.json    the score range and resize policy the CSV reader expects
    metrics.csv      each image's photograph, distortion, level, MS-SSIM, GMSD and VIFp
                     (provenance, not read by readers)
    builtin.json     provenance: version, seed, sources, distortions, metrics, content hash
The build goes into a hidden folder beside `out_dir` that is renamed into place when
complete, so an interrupted build never looks like a finished one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pmtiqa_deploy.errors import DatasetError
from pmtiqa_deploy.spec import sha256_file
from pmtiqa_deploy.train.fidelity import Fidelity, fidelity, ycbcr

# Bump when anything that changes the pixels or the scores changes.
BUILTIN_VERSION = 2
SIZE = (384, 288)
MANIFEST = {"name": "builtin", "score_min": 0.0, "score_max": 100.0, "higher_is_better": True,
            "units": "pseudo-MOS", "resize": "none", "width": None, "height": None}
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 3]


@dataclass(frozen=True)
class Source:
    """A window of a photograph: `skimage.data.<loader>()` (item `index` of a tuple),
    scaled by `scale` (None: just enough to cover the working size, the whole picture;
    1.0: the photograph's own pixels), cut at `anchor` (the window's position as a fraction
    of the free space, x then y). `photo` names the photograph: it is the items' reference
    id, so every window of one photograph lands on the same side of a split."""

    name: str
    photo: str
    loader: str
    index: int | None = None
    scale: float | None = None
    anchor: tuple[float, float] = (0.5, 0.5)


def _windows(photo: str, loader: str, *details: tuple[str, float | None, tuple[float, float]],
             index: int | None = None) -> tuple[Source, ...]:
    return tuple(Source(photo if not tag else f"{photo}_{tag}", photo, loader, index, scale, anchor)
                 for tag, scale, anchor in details)


_WHOLE: tuple[str, float | None, tuple[float, float]] = ("", None, (0.5, 0.5))
_NW: tuple[str, float | None, tuple[float, float]] = ("nw", 1.0, (0.0, 0.0))
_SE: tuple[str, float | None, tuple[float, float]] = ("se", 1.0, (1.0, 1.0))

SOURCES = (
    *_windows("astronaut", "astronaut", ("", None, (0.5, 0.0)), _NW, _SE),
    *_windows("chelsea", "chelsea", _WHOLE),
    *_windows("coffee", "coffee", _WHOLE, _NW, _SE),
    *_windows("hubble_deep_field", "hubble_deep_field", _WHOLE, ("nw", 1.0, (0.05, 0.05)),
              ("se", 1.0, (0.95, 0.95))),
    *_windows("immunohistochemistry", "immunohistochemistry", _WHOLE, _NW, _SE),
    *_windows("motorcycle", "stereo_motorcycle", _WHOLE, _NW, _SE, index=0),
    *_windows("retina", "retina", _WHOLE, ("c", 1.0, (0.5, 0.5)), ("w", 1.0, (0.25, 0.45)),
              ("e", 1.0, (0.75, 0.55))),
    *_windows("rocket", "rocket", _WHOLE, _NW, _SE),
)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _codec(image: np.ndarray, ext: str, params: list[int]) -> np.ndarray:
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise DatasetError(f"OpenCV cannot encode or decode {ext}; reinstall opencv-python-headless")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _gaussian_blur(image, sigma, rng):
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def _motion_blur(image, length, rng):
    """A straight line of `length` pixels at a random angle, splatted bilinearly."""
    angle = rng.uniform(0.0, np.pi)
    size = int(length) // 2 * 2 + 3
    kernel = np.zeros((size, size))
    c = (size - 1) / 2.0
    for t in np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 8 * int(length)):
        x, y = c + t * np.cos(angle), c + t * np.sin(angle)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    kernel /= kernel.sum()
    return _u8(cv2.filter2D(image.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT_101))


def _gaussian_noise(image, sigma, rng):
    return _u8(image + rng.normal(0.0, sigma, image.shape))


def _impulse_noise(image, density, rng):
    """Salt and pepper: a fraction `density` of pixels set to black or white."""
    out = image.copy()
    hit = rng.random(image.shape[:2]) < density
    salt = rng.random(image.shape[:2]) < 0.5
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def _jpeg(image, quality, rng):
    return _codec(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def _jpeg2000(image, rate, rng):
    """OpenJPEG through OpenCV; `rate` / 1000 is the compressed size as a fraction of
    24-bit RGB (rate 25 = 0.6 bits per pixel)."""
    return _codec(image, ".jp2", [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, int(rate)])


def _contrast(image, factor, rng):
    """Pull every channel toward the image's mean luma."""
    mean = float(ycbcr(image)[..., 0].mean())
    return _u8(mean + factor * (image.astype(np.float64) - mean))


def _saturation(image, factor, rng):
    """Scale chroma (Cb, Cr about 128) and keep luma."""
    ycc = ycbcr(image)
    y, cb, cr = ycc[..., 0], (ycc[..., 1] - 128) * factor, (ycc[..., 2] - 128) * factor
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return _u8(rgb)


def _pixelate(image, block, rng):
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / block)), max(1, round(h / block))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _quantisation(image, levels, rng):
    """Posterisation: each channel quantised uniformly to `levels` values spread over that
    channel's own range in this image (as a palette reduction would place them). Steps fixed
    on 0..255 instead leave a dark, low-contrast window (the retina at full resolution) with
    one or two values, and the metrics then score 3 levels above 5."""
    x = image.astype(np.float64)
    low, high = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    step = np.maximum(high - low, 1.0) / (levels - 1)
    return _u8(low + np.rint((x - low) / step) * step)


@dataclass(frozen=True)
class Distortion:
    name: str
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    parameter: str
    levels: tuple[float, ...]
    seeded: bool = False


DISTORTIONS = (
    Distortion("gaussian_blur", _gaussian_blur, "sigma (pixels)", (0.7, 1.3, 2.2, 3.6, 6.0)),
    Distortion("motion_blur", _motion_blur, "length (pixels), random angle",
               (3, 6, 10, 16, 26), seeded=True),
    Distortion("gaussian_noise", _gaussian_noise, "sigma (0..255)", (4, 8, 14, 24, 40), seeded=True),
    Distortion("impulse_noise", _impulse_noise, "density", (0.002, 0.008, 0.02, 0.05, 0.12),
               seeded=True),
    Distortion("jpeg", _jpeg, "quality", (80, 35, 15, 7, 3)),
    Distortion("jpeg2000", _jpeg2000, "rate x1000 (bits per pixel x 1000 / 24)",
               (120, 40, 16, 7, 3)),
    Distortion("contrast", _contrast, "contrast factor", (0.8, 0.64, 0.48, 0.33, 0.2)),
    Distortion("saturation", _saturation, "chroma factor", (0.7, 0.5, 0.3, 0.12, 0.0)),
    Distortion("pixelate", _pixelate, "block size (pixels)", (2, 3, 4, 6, 9)),
    Distortion("quantisation", _quantisation, "levels per channel over its range", (32, 16, 8, 5, 3)),
)


def _photo(source: Source) -> np.ndarray:
    import skimage.data

    try:
        image = getattr(skimage.data, source.loader)()
    except (ModuleNotFoundError, OSError, ValueError) as exc:
        raise DatasetError(
            f"scikit-image's sample '{source.loader}' is not available offline ({exc}); "
            "reinstall scikit-image (the train extra)") from None
    image = np.asarray(image if source.index is None else image[source.index])
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise DatasetError(f"skimage.data.{source.loader} is not an 8-bit colour image")
    return np.ascontiguousarray(image[..., :3])


def _reference(source: Source, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The working-size reference and how it was cut from the photograph."""
    image = _photo(source)
    width, height = size
    h, w = image.shape[:2]
    scale = source.scale if source.scale is not None else max(width / w, height / h)
    if scale != 1.0:
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    sh, sw = image.shape[:2]
    if sw < width or sh < height:
        raise DatasetError(
            f"source {source.name} is {sw}x{sh}, smaller than the {width}x{height} window")
    x, y = round(source.anchor[0] * (sw - width)), round(source.anchor[1] * (sh - height))
    detail = {"name": source.name, "photo": source.photo, "skimage_data": source.loader, "index": source.index,
              "photo_size": [w, h], "scale": scale, "scaled_size": [sw, sh],
              "window": [x, y, width, height]}
    return np.ascontiguousarray(image[y:y + height, x:x + width]), detail


def load_source(source: Source, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The source photograph at the working size (width, height), HxWx3 uint8 RGB."""
    return _reference(source, size)[0]


def item_rng(seed: int, source: str, distortion: str, level: int) -> np.random.Generator:
    """The generator for one image, keyed by names so subsets build identical pixels."""
    key = zlib.crc32(f"{source}/{distortion}/{level}".encode())
    return np.random.default_rng([int(seed), key])


def distort(image: np.ndarray, distortion: Distortion, level: int,
            rng: np.random.Generator) -> np.ndarray:
    """Apply `distortion` at `level` (1..5) to an RGB uint8 image."""
    out = distortion.apply(image, distortion.levels[level - 1], rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    return np.ascontiguousarray(out)


def default_dir(seed: int = 0) -> Path:
    """Where the demo and benchmarks keep the built-in dataset: under $PMTIQA_CACHE, else
    $XDG_CACHE_HOME/pmtiqa-deploy, else ~/.cache/pmtiqa-deploy."""
    root = os.environ.get("PMTIQA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "pmtiqa-deploy")
    return Path(root) / f"builtin-v{BUILTIN_VERSION}-seed{seed}"


def make_builtin(out_dir: str | os.PathLike, seed: int = 0, force: bool = False, progress: bool = True,
                 *, sources: Iterable[str] | None = None, size: Sequence[int] = SIZE) -> Path:
    """Build the built-in dataset into `out_dir` and return it. A complete build of the same
    version, seed, sources and size already there is reused at once (force=True rebuilds).
    `sources` (names from SOURCES, default all) and `size` (width, height, default 384x288)
    exist for quick small builds; the dataset is the default call."""
    out = Path(out_dir)
    chosen = _select(sources)
    size = (int(size[0]), int(size[1]))
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if min(size) < 176:
        raise ValueError(f"size {size} is too small: MS-SSIM needs at least 176 pixels a side")
    key = {"version": BUILTIN_VERSION, "seed": int(seed), "sources": [s.name for s in chosen],
           "size": list(size)}
    if not force and _complete(out, key):
        return out
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _build(tmp, chosen, key, progress)
        _install(tmp, out, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _select(names: Iterable[str] | None) -> tuple[Source, ...]:
    if names is None:
        return SOURCES
    wanted = list(dict.fromkeys(names))
    known = {s.name: s for s in SOURCES}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown or no sources {unknown}; choose from {sorted(known)}")
    return tuple(s for s in SOURCES if s.name in wanted)


def _complete(out: Path, key: dict) -> bool:
    """True when `out` holds a finished build with this key and every listed file."""
    try:
        info = json.loads((out / "builtin.json").read_text())
        with open(out / "manifest.csv", newline="") as handle:
            paths = [row["path"] for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError):
        return False
    if not isinstance(info, dict) or any(info.get(k) != v for k, v in key.items()):
        return False
    return (out / "manifest.json").is_file() and len(paths) == info.get("images") and all(
        (out / p).is_file() for p in paths)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier built-in dataset."""
    if not out.exists():
        return
    if out.is_dir() and (not any(out.iterdir()) or (out / "builtin.json").is_file()):
        return
    try:
        if json.loads((out / "manifest.json").read_text()) == MANIFEST:
            return
    except (OSError, ValueError):
        pass
    raise DatasetError(
        f"{out} exists and is not a built-in dataset folder (no builtin.json or builtin "
        "manifest.json); pass a new or empty folder")


def _install(tmp: Path, out: Path, key: dict) -> None:
    """Move the finished build into place; whatever was there (checked replaceable) goes."""
    old = None
    if out.exists():
        _check_replaceable(out)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "dataset")
    try:
        os.rename(tmp, out)
    except OSError:
        # Another process installed the same build between our checks: use theirs.
        if not _complete(out, key):
            if old is not None and not out.exists():
                os.replace(old / "dataset", out)
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _build(root: Path, chosen: Sequence[Source], key: dict, progress: bool) -> None:
    from pmtiqa_deploy.progress import progress_bar

    seed, size = key["seed"], tuple(key["size"])
    digests: dict[str, str] = {}

    def save(rel: str, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), _PNG)
        if not ok:
            raise DatasetError(f"OpenCV could not encode {rel} as PNG")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data.tobytes())
        digests[rel] = hashlib.sha256(data.tobytes()).hexdigest()

    rows: list[tuple[str, Fidelity, str, str, int]] = []  # path, scores, photo, distortion, level
    details = []
    total = len(chosen) * len(DISTORTIONS) * 5
    with progress_bar(total=total, desc="builtin dataset", unit="image", enabled=progress) as bar:
        for source in chosen:
            reference, detail = _reference(source, size)
            details.append(detail)
            save(f"references/{source.name}.png", reference)
            for distortion in DISTORTIONS:
                for level in range(1, 6):
                    rng = item_rng(seed, source.name, distortion.name, level)
                    image = distort(reference, distortion, level, rng)
                    rel = f"images/{source.name}/{distortion.name}_{level}.png"
                    save(rel, image)
                    scored = fidelity(reference, image)
                    if not 0.0 <= scored.score <= 100.0:  # also catches NaN
                        raise DatasetError(f"{rel}: pseudo-MOS {scored.score} is outside 0..100")
                    rows.append((rel, scored, source.photo, distortion.name, level))
                    bar.update()
    rows.sort(key=lambda r: r[0])
    _write_text(root / "manifest.csv", digests, [["path", "score", "reference"]] + [
        [rel, f"{f.score:.4f}", ref] for rel, f, ref, _, _ in rows])
    _write_text(root / "metrics.csv", digests, [
        ["path", "reference", "distortion", "level", "ms_ssim", "gmsd", "vifp", "score"]] + [
        [rel, ref, name, str(level), f"{f.ms_ssim:.6f}", f"{f.gmsd:.6f}", f"{f.vifp:.6f}",
         f"{f.score:.4f}"] for rel, f, ref, name, level in rows])
    (root / "manifest.json").write_text(json.dumps(MANIFEST, indent=2) + "\n")
    digests["manifest.json"] = sha256_file(root / "manifest.json")
    content = hashlib.sha256("".join(f"{p}\t{d}\n" for p, d in sorted(digests.items())).encode())
    info = {"name": "builtin", **key, "images": len(rows), "levels": 5,
            "sources_detail": details,
            "distortions": [{"name": d.name, "parameter": d.parameter, "levels": list(d.levels),
                             "seeded": d.seeded} for d in DISTORTIONS],
            "score": {"units": "pseudo-MOS", "range": [0.0, 100.0], "higher_is_better": True,
                      "definition": _score_definition()},
            "versions": _versions(),
            "content_sha256": content.hexdigest()}
    # Written last: its presence (with every file it lists) marks the build complete.
    (root / "builtin.json").write_text(json.dumps(info, indent=2) + "\n")


def _write_text(path: Path, digests: dict[str, str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    data = buffer.getvalue().encode()
    path.write_bytes(data)
    digests[path.name] = hashlib.sha256(data).hexdigest()


def _score_definition() -> dict:
    from pmtiqa_deploy.train import fidelity as fid

    return {"metrics": "MS-SSIM, GMSD (T=170), VIFp (sigma_n^2=2) on full-range BT.601 YCbCr, "
                       "channels weighted 6:1:1",
            "formula": "100 * (MS-SSIM**p + max(0, 1 - GMSD/g) + min(1, VIFp)) / 3",
            "p": fid.MSSSIM_POWER, "g": fid.GMSD_SCALE,
            "msssim_weights": list(fid.MSSSIM_WEIGHTS), "channel_weights": list(fid.CHANNEL_WEIGHTS)}


def _versions() -> dict:
    from importlib.metadata import version

    return {"numpy": np.__version__, "opencv": cv2.__version__, "scikit-image": version("scikit-image")}
