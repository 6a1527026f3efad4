"""The spec contract: quality levels, strict loading, round trips, and the shared table of
spec cases (tests/spec_cases.json, which tests/native runs against the C ABI too)."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pmtiqa_deploy.errors import SpecError
from pmtiqa_deploy.spec import (
    SCHEMA_VERSION, Artifact, InputSpec, ModelSpec, OutputSpec, PreprocessSpec, ScoreSpec, spec_defaults)

CASES = json.loads((Path(__file__).parents[1] / "spec_cases.json").read_text())


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
    with pytest.raises(SpecError, match=r"spec: missing key\(s\) \['score'\] \(schema 1.0 requires"):
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


def _write_case(case: dict, folder: Path) -> Path:
    """The case's model.json in `folder` (the table's base document, patched)."""
    import jsonpatch

    folder.mkdir()
    text = case["text"] if "text" in case else json.dumps(
        jsonpatch.apply_patch(CASES["base"], case["patch"]))
    (folder / "model.json").write_text(text)
    return folder / "model.json"


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["case"] for c in CASES["cases"]])
def test_spec_cases(case, tmp_path):
    """One row of the table shared with the C ABI's tests: accepted, or refused with an
    error naming the file and the key."""
    path = _write_case(case, tmp_path / "variant")
    if case.get("accepted"):
        ModelSpec.load(path)
        return
    with pytest.raises(SpecError) as caught:
        ModelSpec.load(path)
    message = str(caught.value)
    assert str(path) in message and all(word in message for word in case["rejected"]), message


def _key_paths(node, pointer="", pattern=""):
    """(JSON pointer, spec_defaults.json-style path) of every key; a list's first item
    stands for all its items."""
    for key, value in node.items():
        here, name = f"{pointer}/{key}", f"{pattern}.{key}".lstrip(".")
        yield here, name
        if isinstance(value, dict) and key != "producer":  # producer's keys are free-form
            yield from _key_paths(value, here, name)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            yield from _key_paths(value[0], f"{here}/0", f"{name}[]")


def test_the_table_leaves_out_every_key_once_and_only_optional_keys_load():
    """Every key of the schema has its `without` case, accepted exactly when
    spec_defaults.json lists the key; the base document is a complete, valid spec."""
    base = CASES["base"]
    assert ModelSpec.from_dict(base).to_dict() == base
    assert set(base) == {f.name for f in dataclasses.fields(ModelSpec)}
    removals = {c["patch"][0]["path"]: c for c in CASES["cases"]
                if "patch" in c and len(c["patch"]) == 1 and c["patch"][0]["op"] == "remove"}
    paths = dict(_key_paths(base))
    assert set(removals) == set(paths)
    optional = spec_defaults()
    assert {paths[p] for p, c in removals.items() if c.get("accepted")} == set(optional)
    assert all(key in paths.values() for key in optional)


@pytest.mark.parametrize("key", sorted(spec_defaults()))
def test_an_optional_key_left_out_loads_as_its_listed_default(key):
    """The one list of optional keys and defaults is what the loader uses, and it agrees
    with the dataclass defaults used when a spec is built in code."""
    default = spec_defaults()[key]
    data = copy.deepcopy(CASES["base"])
    parent, _, name = key.rpartition(".")
    holders = [data] if not parent else (
        data[parent.removesuffix("[]")] if parent.endswith("[]") else [data[parent]])
    for holder in holders:
        del holder[name]
    loaded = ModelSpec.from_dict(data).to_dict()
    found = [loaded] if not parent else (
        loaded[parent.removesuffix("[]")] if parent.endswith("[]") else [loaded[parent]])
    assert all(holder[name] == default for holder in found)
    kind = {"score": ScoreSpec, "outputs[]": OutputSpec, "artifacts[]": Artifact, "": ModelSpec}[parent]
    field = next(f for f in dataclasses.fields(kind) if f.name == name)
    built = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    assert built == default


def test_save_into_a_missing_folder_is_refused(tmp_path):
    spec = _spec()
    with pytest.raises(SpecError, match=r"folder .*missing does not exist; create it first"):
        spec.save(tmp_path / "missing" / "model.json")
    with pytest.raises(SpecError, match=r"not an existing folder \(create it first\) nor a .json file path"):
        spec.save(tmp_path / "models")
    assert list(tmp_path.iterdir()) == []
    assert spec.save(tmp_path / "spec.json") == tmp_path / "spec.json"
def test_int8_artifacts_carry_their_quantization(tmp_path):
    from pmtiqa_deploy.spec import Quantization

    quantization = Quantization(
        method="onnxruntime quantize_static, QDQ, MinMax calibration", activations="uint8 per-tensor asymmetric",
        weights="int8 per-channel symmetric", calibration="50 training images", calibration_images=50,
        quantized_convolutions=23, convolutions=23, fp32_nodes=("/heads/Gemm",), fp32_op_types=("Gemm",))
    int8 = Artifact("model.int8.onnx", "onnx", "int8", "ab" * 32, opset=17, quantization=quantization)
    spec = ModelSpec(score=ScoreSpec.from_levels(0, 100, 10), artifacts=(int8,))
    spec.save(tmp_path)
    assert ModelSpec.load(tmp_path).artifact("onnx", "int8").quantization == quantization
    with pytest.raises(SpecError, match="exactly when its precision is int8"):
        Artifact("model.int8.onnx", "onnx", "int8", "ab" * 32)
    with pytest.raises(SpecError, match="exactly when its precision is int8"):
        Artifact("model.onnx", "onnx", "fp32", "ab" * 32, quantization=quantization)
    with pytest.raises(SpecError, match="precision must be one of"):
        Artifact("model.onnx", "onnx", "int4", "ab" * 32)
