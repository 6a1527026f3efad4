"""The PMT-IQA objective: the two-task loss, the progressive weight schedule that moves
the loss from the easy task (quality level) to the hard one (score), and the step decay
of the learning rate.

    loss = l1(t) * L1(score, y) + l2(t) * CrossEntropy(level_logits, level(y))

Progressive (the paper's PMT module, as the authors' code computes it): at epoch t of T,
l1 = t / (T - 1) and l2 = 1 - l1, so the first epoch is pure classification and the last
pure regression. Fixed (the paper's ablation baseline): l1 = l2 = 0.5 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pmtiqa_deploy.spec import ScoreSpec

SCHEDULES = ("progressive", "fixed")


def loss_weights(epoch: int, epochs: int, schedule: str = "progressive") -> tuple[float, float]:
    """(l1, l2): the weights of the regression and the classification loss at `epoch`
    (0-based) of `epochs`. A one-epoch progressive run is pure regression (t/(T-1) is
    undefined there; the last epoch of every progressive run is pure regression)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    if schedule == "fixed":
        return 0.5, 0.5
    l1 = 1.0 if epochs == 1 else epoch / (epochs - 1)
    return l1, 1.0 - l1


def learning_rate(epoch: int, base: float, step: int, gamma: float = 0.1) -> float:
    """Step decay: `base` divided by 1/gamma (10 by default) every `step` epochs."""
    if step < 1:
        raise ValueError(f"the learning-rate step must be at least one epoch, got {step}")
    return base * gamma ** (epoch // step)


@dataclass(frozen=True)
class LossParts:
    """The weighted total (for backward) and the two raw terms (for the log)."""

    total: torch.Tensor
    l1_term: torch.Tensor
    ce_term: torch.Tensor


def pmt_loss(score: torch.Tensor, level_logits: torch.Tensor, target: torch.Tensor,
             levels: torch.Tensor, weights: tuple[float, float], denominator: float | None = None) -> LossParts:
    """The PMT-IQA loss of a batch. `levels` are the targets' quality levels
    (`ScoreSpec.level`). Terms are summed over the batch and divided by `denominator`
    (default: the batch size, i.e. the mean); data-parallel training passes the global
    batch size so that the averaged gradient is exactly the full batch's."""
    denominator = float(score.shape[0]) if denominator is None else float(denominator)
    l1_term = F.l1_loss(score, target, reduction="sum") / denominator
    ce_term = F.cross_entropy(level_logits, levels, reduction="sum") / denominator
    return LossParts(weights[0] * l1_term + weights[1] * ce_term, l1_term, ce_term)


def level_targets(scores, spec: ScoreSpec) -> torch.Tensor:
    """The quality level of each score as a long tensor (clamped to 0..K-1 by the spec)."""
    import numpy as np

    return torch.from_numpy(np.atleast_1d(np.asarray(spec.level(scores), dtype=np.int64)))
