"""Full-reference fidelity metrics, written from their papers in NumPy and OpenCV, and the
pseudo-MOS that the built-in dataset (`builtin.py`) labels its images with.

Why our own: the built-in dataset must build offline from the `train` extra alone, and
scikit-image ships plain SSIM only. Each function follows its authors' reference code
(noted per function); inputs are 8-bit-range arrays (0..255), computed in float64.

- MS-SSIM (Wang, Simoncelli, Bovik, Asilomar 2003): SSIM with an 11x11 Gaussian window
  (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, valid filtering, over 5 dyadic scales
  (2x2 mean, then decimate) with the published exponents
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333): mean contrast-structure at scales 1..4
  times mean SSIM at scale 5. A negative mean term is clamped to 0.
- GMSD (Xue, Zhang, Mou, Bovik, IEEE TIP 2014): 2x2 mean and decimation, Prewitt
  gradients (kernels /3), similarity (2 m1 m2 + T) / (m1^2 + m2^2 + T) with T = 170,
  and the score is the standard deviation of that map (0 = identical, larger = worse).
- VIFp (Sheikh, Bovik, IEEE TIP 2006; the authors' pixel-domain `vifp_mscale`):
  4 scales with Gaussian windows N = 17, 9, 5, 3 (sigma N/5), decimation by 2 between
  scales, HVS noise variance 2; the ratio of the information the distorted image keeps
  to the information in the reference (1 = identical; above 1 for contrast enhancement).

Colour: the metrics are defined on grey images. They are applied to each channel of
full-range BT.601 YCbCr (JPEG's conversion, chroma kept at its +128 offset) and the
channel results are weighted 6:1:1 (Y:Cb:Cr), the weighting video-coding test conditions
use for PSNR and SSIM, so a colour-only change (desaturation) lowers the score less than
a luminance change of the same size, as in subjective studies.

Pseudo-MOS (0..100, higher is better), from the three metrics of the 6:1:1 mixture:
    q_msssim = MS-SSIM ** 4            # expands the top, where MS-SSIM saturates
    q_gmsd   = max(0, 1 - GMSD / 0.25)  # GMSD rarely exceeds 0.25 on real distortions
    q_vif    = min(1, VIFp)             # enhancement beyond the reference is not rewarded
    score    = 100 * (q_msssim + q_gmsd + q_vif) / 3
Each q is 1 for an undistorted image, so the reference scores 100; every step is
monotone, so the score ranks images as the mean quality of the three metrics does.
The constants were chosen once, by looking at the built-in distortions, so the five
levels of each distortion spread over the range; they are part of the dataset version.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
CHANNEL_WEIGHTS = (6.0 / 8.0, 1.0 / 8.0, 1.0 / 8.0)
MSSSIM_POWER = 4.0
GMSD_SCALE = 0.25


def ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (as JPEG) of an HxWx3 RGB image, float64 HxWx3, 0..255."""
    x = np.asarray(rgb, dtype=np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps (MATLAB's fspecial('gaussian') is its outer
    product)."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


def _filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only the positions where the window fits
    (MATLAB's filter2(..., 'valid'))."""
    r = (len(kernel) - 1) // 2
    out = cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
    return out[r:out.shape[0] - r, r:out.shape[1] - r]


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean then decimation by 2 (odd last row/column dropped)."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _grey(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {x.shape}")
    return x


def ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of two grey images (one MS-SSIM scale)."""
    x, y = _grey(x), _grey(y)
    k = _gaussian(11, 1.5)
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    mx, my = _filter_valid(x, k), _filter_valid(y, k)
    sxx = _filter_valid(x * x, k) - mx * mx
    syy = _filter_valid(y * y, k) - my * my
    sxy = _filter_valid(x * y, k) - mx * my
    cs = (2.0 * sxy + c2) / (sxx + syy + c2)
    lum = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Multi-scale SSIM of two grey images (1 = identical). The coarsest of the five
    scales must still hold the 11x11 window: images need at least 176 pixels a side."""
    x, y = _grey(x), _grey(y)
    if min(x.shape) < 11 * 2 ** (len(MSSSIM_WEIGHTS) - 1):
        raise ValueError(f"MS-SSIM needs images of at least 176 pixels a side, got {x.shape}")
    value = 1.0
    for j, weight in enumerate(MSSSIM_WEIGHTS):
        ssim, cs = ssim_terms(x, y)
        last = j == len(MSSSIM_WEIGHTS) - 1
        value *= max(ssim if last else cs, 0.0) ** weight
        if not last:
            x, y = _halve(x), _halve(y)
    return float(value)


_PREWITT = np.array([[1.0, 0.0, -1.0]] * 3) / 3.0


def gmsd(x: np.ndarray, y: np.ndarray) -> float:
    """Gradient magnitude similarity deviation of two grey images (0 = identical)."""
    x, y = _halve(_grey(x)), _halve(_grey(y))

    def magnitude(image: np.ndarray) -> np.ndarray:
        gx = cv2.filter2D(image, cv2.CV_64F, _PREWITT, borderType=cv2.BORDER_CONSTANT)
        gy = cv2.filter2D(image, cv2.CV_64F, _PREWITT.T, borderType=cv2.BORDER_CONSTANT)
        return np.sqrt(gx * gx + gy * gy)

    mx, my = magnitude(x), magnitude(y)
    gms = (2.0 * mx * my + 170.0) / (mx * mx + my * my + 170.0)
    return float(np.std(gms))


def vifp(x: np.ndarray, y: np.ndarray) -> float:
    """Pixel-domain visual information fidelity of `y` (distorted) against `x` (reference)."""
    ref, dist = _grey(x), _grey(y)
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(4):
        n = 2 ** (4 - scale) + 1
        win = _gaussian(n, n / 5.0)
        if scale > 0:
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        mu1, mu2 = _filter_valid(ref, win), _filter_valid(dist, win)
        s1 = np.maximum(_filter_valid(ref * ref, win) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, win) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, win) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1 = s1 < eps
        g[flat1] = 0.0
        sv[flat1] = s2[flat1]
        s1[flat1] = 0.0
        flat2 = s2 < eps
        g[flat2] = 0.0
        sv[flat2] = 0.0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0.0
        sv = np.maximum(sv, eps)
        num += float(np.sum(np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + s1 / sigma_nsq)))
    # A flat reference carries no information: identical images are still perfect.
    return num / den if den > 0 else 1.0


@dataclass(frozen=True)
class Fidelity:
    """The three metrics of a distorted image against its reference (6:1:1 YCbCr
    mixture) and the pseudo-MOS made from them."""

    ms_ssim: float
    gmsd: float
    vifp: float

    @property
    def score(self) -> float:
        q_msssim = max(self.ms_ssim, 0.0) ** MSSSIM_POWER
        q_gmsd = max(0.0, 1.0 - self.gmsd / GMSD_SCALE)
        q_vif = min(max(self.vifp, 0.0), 1.0)
        return 100.0 * (q_msssim + q_gmsd + q_vif) / 3.0


def fidelity(reference: np.ndarray, distorted: np.ndarray) -> Fidelity:
    """MS-SSIM, GMSD and VIFp of a distorted RGB uint8 image against its reference, each
    the 6:1:1 weighted mean over Y, Cb and Cr."""
    if reference.shape != distorted.shape or reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError(
            f"reference and distorted must be HxWx3 of one shape, got {reference.shape} "
            f"and {distorted.shape}")
    ref, dist = ycbcr(reference), ycbcr(distorted)
    values = np.zeros(3)
    for c, weight in enumerate(CHANNEL_WEIGHTS):
        a, b = np.ascontiguousarray(ref[..., c]), np.ascontiguousarray(dist[..., c])
        values += weight * np.array([ms_ssim(a, b), gmsd(a, b), vifp(a, b)])
    return Fidelity(ms_ssim=float(values[0]), gmsd=float(values[1]), vifp=float(values[2]))
