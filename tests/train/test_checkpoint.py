"""Checkpoints: safetensors + JSON, bit-exact round trip, clear errors."""

import json

import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
pytest.importorskip("safetensors")

from pmtiqa_deploy.errors import CheckpointError  # noqa: E402
from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec  # noqa: E402
from pmtiqa_deploy.train.checkpoint import (  # noqa: E402
    CheckpointInfo, load_checkpoint, read_checkpoint_info, save_checkpoint)
from pmtiqa_deploy.train.model import PMTIQA, ModelConfig  # noqa: E402


def _info(config, **score):
    return CheckpointInfo(
        config=config,
        score=ScoreSpec.from_levels(0.0, 100.0, config.num_levels, units="MOS", dataset="builtin", **score),
        preprocess=PreprocessSpec(crop_count=5),
        training={"dataset": "builtin", "epochs": 3},
        metrics={"test_srcc": 0.9},
    )


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    config = ModelConfig(backbone="resnet18")
    model = PMTIQA(config)
    # Non-trivial BN statistics so the round trip covers buffers too.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    directory = save_checkpoint(model, tmp_path / "ckpt", _info(config))
    return model, directory


def test_round_trip_is_bit_exact(saved):
    model, directory = saved
    loaded, info = load_checkpoint(directory)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert info.config == model.config
    assert info.score.max == 100.0 and info.score.higher_is_better
    assert info.preprocess.crop_count == 5
    assert info.metrics == {"test_srcc": 0.9}
    assert {"torch", "torchvision", "pmtiqa_deploy"} <= set(info.versions)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


def test_either_file_path_opens_the_checkpoint(saved):
    _, directory = saved
    assert read_checkpoint_info(directory / "checkpoint.json")[0].config.backbone == "resnet18"
    assert load_checkpoint(directory / "model.safetensors")[1].config.backbone == "resnet18"


def test_truncated_weights(saved):
    _, directory = saved
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        load_checkpoint(directory)


def test_truncated_weights_with_matching_hash_is_still_caught(saved):
    _, directory = saved
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    doc = json.loads((directory / "checkpoint.json").read_text())
    from pmtiqa_deploy.spec import sha256_file
    doc["weights"]["sha256"] = sha256_file(weights)
    (directory / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(directory)


def test_truncated_json(saved):
    _, directory = saved
    info = directory / "checkpoint.json"
    info.write_text(info.read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory)


def test_missing_files(saved, tmp_path):
    _, directory = saved
    with pytest.raises(CheckpointError, match="checkpoint.json is missing"):
        load_checkpoint(tmp_path / "elsewhere")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(directory)


def test_weights_that_do_not_fit_the_config(saved):
    _, directory = saved
    doc = json.loads((directory / "checkpoint.json").read_text())
    doc["config"]["backbone"] = "resnet50"
    (directory / "checkpoint.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not fit the config"):
        load_checkpoint(directory)


def test_mismatched_levels_and_unknown_config_keys(saved):
    _, directory = saved
    path = directory / "checkpoint.json"
    original = path.read_text()
    doc = json.loads(original)
    doc["score"]["num_levels"], doc["score"]["level_width"] = 5, 20.0
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="levels"):
        load_checkpoint(directory)
    doc = json.loads(original)
    doc["config"]["dropout"] = 0.5
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="unknown key"):
        load_checkpoint(directory)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a pmtiqa checkpoint"):
        load_checkpoint(tmp_path)


def test_save_refuses_inconsistent_info(tmp_path):
    model = PMTIQA(ModelConfig(backbone="resnet18"))
    with pytest.raises(CheckpointError):
        save_checkpoint(model, tmp_path, _info(ModelConfig(backbone="resnet34")))
