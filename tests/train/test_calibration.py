"""The calibration of untrained models that export, native and benchmark fixtures use."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")

from pmtiqa_deploy.train.calibration import calibrate_untrained, recalibrate_batchnorm  # noqa: E402
from pmtiqa_deploy.train.model import PMTIQA, ModelConfig  # noqa: E402


@pytest.fixture(scope="module")
def crops():
    torch.manual_seed(0)
    base = torch.randn(6, 1, 3, 224, 224)
    # Six "images" of two crops each, different in contrast so the model can tell them apart.
    return (base * torch.linspace(0.2, 2.0, 6).view(6, 1, 1, 1, 1)).expand(6, 2, 3, 224, 224).reshape(12, 3, 224, 224)


def test_batchnorm_statistics_are_those_of_the_crops(crops):
    torch.manual_seed(0)
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    assert recalibrate_batchnorm(model, [crops]) == 1
    model.eval()
    conv1, bn1 = model.stem[0], model.stem[1]
    assert not model.training
    with torch.no_grad():
        first = conv1(crops)
    assert torch.allclose(bn1.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn1.running_var, first.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)


def test_scores_spread_over_the_asked_range(crops):
    torch.manual_seed(0)
    model = calibrate_untrained(PMTIQA(ModelConfig(backbone="resnet18")), crops.numpy(), 2, 10, 90)
    with torch.no_grad():
        scores = model(crops)[0].reshape(6, 2).mean(dim=1).numpy()
    assert scores.min() == pytest.approx(10.0, abs=1e-3)
    assert scores.max() == pytest.approx(90.0, abs=1e-3)
    assert len(np.unique(np.round(scores, 3))) == 6
