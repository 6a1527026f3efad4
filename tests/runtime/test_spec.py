"""The spec contract: quality levels, strict loading, round trips."""

import json

import numpy as np
import pytest

from pmtiqa_deploy.errors import SpecError
from pmtiqa_deploy.spec import (
    SCHEMA_VERSION, Artifact, InputSpec, ModelSpec, PreprocessSpec, ScoreSpec)


def test_levels_at_both_ends_and_outside():
    spec = ScoreSpec.from_levels(0.0, 100.0, 10)
    assert spec.level(0.0) == 0
    assert spec.level(9.999) == 0
    assert spec.level(10.0) == 1
    assert spec.level(99.99) == 9
    assert spec.level(100.0) == 9  # the top of the range clamps, as round(MOS/10) would overflow
    assert spec.level(-5.0) == 0
    assert spec.level(250.0) == 9
    assert spec.level(np.array([-1.0, 55.0, 101.0])).tolist() == [0, 5, 9]


def test_levels_with_width_from_the_doc():
    # BID: MOS 0..5 in levels of 0.5 -> K = 10, and int(MOS / 0.5) overflows at 5.0.
    bid = ScoreSpec(min=0.0, max=5.0, num_levels=10, level_width=0.5)
    assert [bid.level(v) for v in (0.0, 0.49, 0.5, 4.99, 5.0)] == [0, 0, 1, 9, 9]
    # K = ceil((max - min) / w) even when w does not divide the range.
    assert ScoreSpec(min=1.0, max=5.0, num_levels=3, level_width=1.5).level(4.9) == 2
    with pytest.raises(SpecError, match="num_levels"):
        ScoreSpec(min=0.0, max=100.0, num_levels=8, level_width=10.0)


def _spec():
    return ModelSpec(
        score=ScoreSpec.from_levels(0.0, 100.0, 10, units="pseudo-MOS", dataset="builtin"),
        preprocess=PreprocessSpec(resize="fixed", width=512, height=384, crop_count=4),
        input=InputSpec(dtype="uint8", layout="BNHWC", normalize_in_graph=True,
                        batch_min=1, batch_opt=4, batch_max=16),
        checkpoint_sha256="ab" * 32,
        artifacts=(Artifact("model.onnx", "onnx", "fp32", "cd" * 32, opset=17),),
        producer={"torch": "2.14.1"},
    )


def test_round_trip(tmp_path):
    spec = _spec()
    path = spec.save(tmp_path)
    assert path.name == "model.json"
    loaded = ModelSpec.load(tmp_path)
    assert loaded == spec
    assert loaded.input_shape(3) == (3, 4, 224, 224, 3)
    assert [o.name for o in loaded.outputs] == ["score", "level_probs"]
    assert loaded.artifact("onnx", "fp32").opset == 17


def test_unknown_key_is_rejected(tmp_path):
    data = _spec().to_dict()
    data["preprocess"]["sharpen"] = True
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match=r"spec.preprocess: unknown key\(s\) \['sharpen'\]"):
        ModelSpec.load(tmp_path)


def test_newer_major_version_is_rejected(tmp_path):
    data = _spec().to_dict()
    data["schema_version"] = "2.0"
    data["new_thing"] = 1  # the version check comes first, so the message is about the version
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match="newer than this toolkit"):
        ModelSpec.load(tmp_path)


def test_wrong_types_and_missing_keys(tmp_path):
    data = _spec().to_dict()
    data["input"]["batch_max"] = "16"
    with pytest.raises(SpecError, match="spec.input.batch_max: expected int"):
        ModelSpec.from_dict(data)
    data = _spec().to_dict()
    del data["score"]
    with pytest.raises(SpecError, match=r"missing key\(s\) \['score'\]"):
        ModelSpec.from_dict(data)
    with pytest.raises(SpecError, match="not valid JSON"):
        (tmp_path / "model.json").write_text('{"schema_version": "1.0", ')
        ModelSpec.load(tmp_path)
    with pytest.raises(SpecError, match="no spec at"):
        ModelSpec.load(tmp_path / "missing")


@pytest.mark.parametrize("kwargs", [
    dict(resize="fixed", width=512),
    dict(resize="none", width=512, height=384),
    dict(resize="shorter_side"),
    dict(colour_order="BGR"),
    dict(interpolation="bicubic"),
    dict(crop_count=0),
])
def test_invalid_preprocess_combinations(kwargs):
    with pytest.raises(SpecError):
        PreprocessSpec(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(dtype="uint8"),  # uint8 needs BNHWC and in-graph normalisation
    dict(dtype="float32", layout="BNHWC"),
    dict(dtype="float32", normalize_in_graph=True),
    dict(batch_min=4, batch_opt=2),
    dict(dtype="int8"),
])
def test_invalid_input_combinations(kwargs):
    with pytest.raises(SpecError):
        InputSpec(**kwargs)


def test_verify_artifact(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"onnx bytes")
    from pmtiqa_deploy.spec import sha256_file
    artifact = Artifact("model.onnx", "onnx", "fp32", sha256_file(tmp_path / "model.onnx"))
    spec = ModelSpec(score=ScoreSpec.from_levels(0, 100, 10), artifacts=(artifact,))
    assert spec.verify_artifact(tmp_path, artifact) == tmp_path / "model.onnx"
    (tmp_path / "model.onnx").write_bytes(b"onnx by")
    with pytest.raises(SpecError, match="does not match its spec"):
        spec.verify_artifact(tmp_path, artifact)
    with pytest.raises(SpecError, match="no tensorrt fp16 artifact"):
        spec.artifact("tensorrt", "fp16")


def test_schema_version_constant():
    assert SCHEMA_VERSION.split(".")[0] == "1"


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from pmtiqa_deploy.spec import atomic_write_bytes

    target = tmp_path / "model.json"
    atomic_write_bytes(target, b"{}")
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old
    assert target.read_bytes() == b"{}"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
