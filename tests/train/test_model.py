"""The PMT-IQA model exactly as released: shapes, branch sizes, parameter count, weights."""

import urllib.error

import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
torchvision = pytest.importorskip("torchvision")

from pmtiqa_deploy.errors import CheckpointError  # noqa: E402
from pmtiqa_deploy.train.model import PMTIQA, ModelConfig, build_model, load_backbone_weights  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return PMTIQA(ModelConfig()).eval()


@pytest.mark.parametrize("batch", [1, 7])
def test_output_shapes(resnet50, batch):
    with torch.no_grad():
        score, logits = resnet50(torch.randn(batch, 3, 224, 224))
    assert score.shape == (batch,)
    assert logits.shape == (batch, 10)


def test_branch_and_concat_sizes_match_the_release(resnet50):
    with torch.no_grad():
        stages = resnet50.stages(torch.randn(2, 3, 224, 224))
        *scales, concat = resnet50.features(torch.randn(2, 3, 224, 224))
    assert [tuple(s.shape[1:]) for s in stages] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert [tuple(s.shape) for s in scales] == [(2, 28)] * 4
    assert tuple(concat.shape) == (2, 112)
    # 1x1 convs 256->16, 512->32, 1024->64, none on layer4; 7x7/7 pooling leaves 8,4,2,1 grids.
    convs = [b.conv for b in resnet50.branches]
    assert [(c.in_channels, c.out_channels) for c in convs[:3]] == [(256, 16), (512, 32), (1024, 64)]
    assert all(c.bias is None for c in convs[:3])
    assert isinstance(convs[3], torch.nn.Identity)
    assert [b.fc.in_features for b in resnet50.branches] == [1024, 512, 256, 2048]
    assert [b.fc.out_features for b in resnet50.branches] == [28] * 4


def test_heads_match_the_release(resnet50):
    trunk = [m for m in resnet50.trunk if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in trunk] == [(112, 112), (112, 14)]
    assert (resnet50.regressor.in_features, resnet50.regressor.out_features) == (14, 1)
    cls = [m for m in resnet50.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in cls] == [(14, 14), (14, 10)]


def test_pinned_parameter_count(resnet50):
    # torchvision resnet50 without fc (23,508,032) + MS branches (193,648)
    # + trunk (14,238) + regression head (15) + classification head (360).
    assert sum(p.numel() for p in resnet50.parameters()) == 23_716_293


def test_light_backbones_follow_stage_channels():
    model = PMTIQA(ModelConfig(backbone="resnet18")).eval()
    convs = [b.conv for b in model.branches[:3]]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 4), (128, 8), (256, 16)]
    with torch.no_grad():
        *scales, concat = model.features(torch.randn(1, 3, 224, 224))
    assert tuple(concat.shape) == (1, 112)


def test_backbone_weights_from_a_torchvision_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(ModelConfig(backbone="resnet18"), path)
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)

    from safetensors.torch import save_file
    st = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(st))
    assert torch.equal(build_model(ModelConfig(backbone="resnet18"), st).layer1[0].conv1.weight,
                       reference.layer1[0].conv1.weight)


def test_backbone_weights_errors(tmp_path, monkeypatch):
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone_weights(model, tmp_path / "nope.pth")
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="not a torchvision resnet18"):
        load_backbone_weights(model, wrong)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    # The download itself, cut off as on an offline machine.
    from torchvision.models import _api as weights_api
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="--backbone-weights PATH") as info:
        load_backbone_weights(model, "imagenet")
    assert "random" in str(info.value)


def test_random_init_only_when_asked():
    with pytest.raises(TypeError):
        build_model(ModelConfig(backbone="resnet18"))  # no silent default
    assert isinstance(build_model(ModelConfig(backbone="resnet18"), "random"), PMTIQA)
