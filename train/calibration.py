"""Untrained models that still behave like trained ones where it matters for timing and
parity: BatchNorm statistics measured on real crops, and a score head rescaled so the
scores spread over most of the 0..100 range.

A freshly initialised PMT-IQA has BatchNorm running statistics of (0, 1), which do not
match its activations, and a score head whose outputs barely move between images. Such a
model agrees with itself under any export, so parity checks and SRCC against PyTorch
would be vacuous. Calibrated, it ranks images and spreads their scores like a trained
model (same graph, same shapes, same speed), which is what export tests, the native
tests and the CPU benchmark need when no trained checkpoint is at hand.
"""

from __future__ import annotations

import numpy as np
import torch

from pmtiqa_deploy.train.model import PMTIQA


def recompute_batchnorm(model: PMTIQA, x: torch.Tensor) -> None:
    """Replace every BatchNorm's running statistics with those of `x` (normalised crops,
    [B, 3, H, W]) in one cumulative-average forward pass. Leaves the model in eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the exact statistics
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def spread_scores(model: PMTIQA, x: torch.Tensor, crops_per_image: int,
                  low: float = 10.0, high: float = 90.0) -> None:
    """Rescale the regression head so that the images of `x` (crops grouped by image,
    `crops_per_image` each) score from `low` to `high`, in the order the model ranks them."""
    model.eval()
    with torch.no_grad():
        scores = model(x)[0].reshape(-1, crops_per_image).mean(dim=1)
        lo, hi = float(scores.min()), float(scores.max())
        scale = (high - low) / max(hi - lo, 1e-6)
        model.regressor.weight.mul_(scale)
        model.regressor.bias.mul_(scale).add_(low - scale * lo)


def calibrate_untrained(model: PMTIQA, crops: np.ndarray | torch.Tensor, crops_per_image: int,
                        low: float = 10.0, high: float = 90.0) -> PMTIQA:
    """`recompute_batchnorm` then `spread_scores` on the same normalised crops; returns
    the model (in eval mode) for chaining."""
    x = torch.as_tensor(np.ascontiguousarray(crops)) if isinstance(crops, np.ndarray) else crops
    recompute_batchnorm(model, x)
    spread_scores(model, x, crops_per_image, low, high)
    return model
