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

from collections.abc import Iterable

import numpy as np
import torch

from pmtiqa_deploy.train.model import PMTIQA


def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance for the current
    weights: reset them, run `batches` forward in training mode with cumulative averaging
    (momentum None: each batch counts equally), restore the layers' momentum. Returns the
    number of batches seen.

    Why: in eval mode BatchNorm normalises with exponential averages that trail the weights
    by about 1/momentum steps. When the weights still move fast (a short run from scratch
    at a high learning rate) those averages describe an older network, and the scores the
    exported model computes with them swing from epoch to epoch, whatever the weights
    learned. Statistics of the current weights are what the deployed model should carry
    (torch.optim.swa_utils.update_bn does the same for averaged weights). Training itself is
    unaffected: in training mode BatchNorm normalises with each batch's own statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                seen += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return seen


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
    """`recalibrate_batchnorm` on the crops (one batch) then `spread_scores` on the same normalised crops; returns
    the model (in eval mode) for chaining."""
    x = torch.as_tensor(np.ascontiguousarray(crops)) if isinstance(crops, np.ndarray) else crops
    recalibrate_batchnorm(model, [x])
    spread_scores(model, x, crops_per_image, low, high)
    return model
