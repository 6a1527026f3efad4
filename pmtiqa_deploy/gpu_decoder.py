"""JPEG decoding on the GPU with NVIDIA's nvImageCodec (nvJPEG underneath): encoded bytes
in, RGB uint8 images in GPU memory out, ready for the preprocessing kernel.

At thousands of images per second the CPU's JPEG decoder, not the GPU, bounds scoring
(benchmarks/gpu_check.py measures where); decoding on the GPU moves that work there.
The images are not bit-identical to the reference decoder's (libjpeg via OpenCV): IDCT
and chroma upsampling differ in the last bits, so a score can move slightly. The GPU
check records by how much on real photographs. EXIF orientation is applied, as the
reference decoder does; gray JPEGs come out as RGB.

nvImageCodec imports on a machine without a GPU but needs a CUDA device to create a
decoder: `GpuDecoder` checks the device first and says which of the two is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pmtiqa_deploy import device as cuda
from pmtiqa_deploy.errors import BackendUnavailable

INSTALL_HINT = "pip install 'pmtiqa-deploy[gpu-decode]' (nvidia-nvimgcodec-cu13 with nvJPEG)"


def _import_nvimgcodec() -> Any:
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise BackendUnavailable(f"GPU decoding needs nvImageCodec, which is not installed "
                                 f"({exc.name or exc}): {INSTALL_HINT}") from None
    return nvimgcodec


class GpuDecoder:
    """One nvImageCodec decoder on GPU `device`. `decode(blobs, stream)` returns one image
    per blob (an nvImageCodec image in GPU memory, HxWx3 RGB uint8, with
    `__cuda_array_interface__`), or None where the GPU decoder could not read it."""

    def __init__(self, device: int = 0):
        nvimgcodec = _import_nvimgcodec()
        self.gpu = cuda.cuda_device(device)  # BackendUnavailable without a driver or GPU
        self._codec = nvimgcodec
        try:
            self._decoder = nvimgcodec.Decoder(device_id=device)
        except RuntimeError as exc:  # nvImageCodec reports CUDA failures as RuntimeError
            raise BackendUnavailable(f"nvImageCodec could not create a decoder on {self.gpu.name} "
                                     f"({exc})") from None
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=True,
                                               color_spec=nvimgcodec.ColorSpec.SRGB,
                                               allow_any_depth=False,
                                               sample_format=nvimgcodec.SampleFormat.I_RGB)

    def decode(self, blobs: Sequence[bytes], stream: Any) -> list[Any]:
        """Decode a batch on `stream` (the images are ready in stream order)."""
        if self._decoder is None:
            raise RuntimeError("the GpuDecoder is closed")
        images: list[Any] = [None] * len(blobs)
        parsed = []
        for i, blob in enumerate(blobs):
            try:
                parsed.append((i, self._codec.CodeStream(bytes(blob))))
            except RuntimeError:  # a header nvImageCodec cannot parse: the CPU decoder judges it
                continue
        if parsed:
            decoded = self._decoder.decode([s for _, s in parsed], params=self._params,
                                           cuda_stream=0 if stream is None else int(stream))
            for (i, _), image in zip(parsed, decoded):
                images[i] = image
        return images

    def close(self) -> None:
        self._decoder = None

    def __enter__(self) -> GpuDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
