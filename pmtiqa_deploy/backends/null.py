"""The null backend: no model file, no library, deterministic answers.

It exists so the scorer, the CLIs and the benchmark harness can be tested anywhere (the
idea is tinygrad's). It checks its input against the spec exactly like a real backend,
then derives each image's score from its pixels: the mean brightness of its crops, in
[0, 1], mapped linearly onto the spec's score range. Brighter is "better" when the spec
says higher is better. level_probs is a proper distribution (non-negative, sums to one)
peaked at the score's level. Same input, same output, on every machine.
"""

from __future__ import annotations

import os

import numpy as np

from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.spec import ModelSpec


class NullBackend(Backend):
    """Options: `sharpness` (how peaked level_probs is; higher is more one-hot)."""

    name = "null"

    def __init__(self, model_dir: str | os.PathLike | None = None, spec: ModelSpec | None = None,
                 *, precision: str = "fp32", sharpness: float = 4.0):
        super().__init__(model_dir, spec)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        self.precision = precision
        self.sharpness = float(sharpness)
        self.batches = 0  # batches run; lets harness tests see that work was done

    @classmethod
    def from_spec(cls, spec: ModelSpec, **options) -> NullBackend:
        """A null backend for a spec held in memory (no model directory at all)."""
        return cls(None, spec, **options)

    def brightness(self, images: np.ndarray) -> np.ndarray:
        """Per-crop mean pixel value in [0, 1], [B, N], undoing normalisation if the
        input is already normalised."""
        pre = self.spec.preprocess
        if self.spec.input.dtype == "uint8":  # [B, N, H, W, 3]
            return images.mean(axis=(2, 3, 4), dtype=np.float64) / 255.0
        # [B, N, 3, H, W] holds (x / 255 - mean) / std per channel: invert per channel.
        per_channel = images.mean(axis=(3, 4), dtype=np.float64)
        pixels = per_channel * np.asarray(pre.std) + np.asarray(pre.mean)
        return np.clip(pixels.mean(axis=2), 0.0, 1.0)

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        score_spec = self.spec.score
        bright = self.brightness(images)
        fraction = bright if score_spec.higher_is_better else 1.0 - bright
        crop_scores = score_spec.min + fraction * (score_spec.max - score_spec.min)
        # Each crop's distribution peaks at its level centre; crops are then averaged,
        # as the real graph averages its per-crop softmax.
        centres = score_spec.min + (np.arange(score_spec.num_levels) + 0.5) * score_spec.level_width
        distance = np.abs(crop_scores[..., None] - centres) / score_spec.level_width
        logits = -self.sharpness * distance
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        self.batches += 1
        return {"score": crop_scores.mean(axis=1).astype(np.float32),
                "level_probs": probs.mean(axis=1).astype(np.float32)}
