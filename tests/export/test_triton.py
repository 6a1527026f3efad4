"""The Triton repository writer (export/triton.py): every config.pbtxt of every variant
parses into Triton's own ModelConfig protobuf (tritonclient's model_config definitions)
and agrees with the spec (names, dims, dtypes, batch), the ensemble's steps connect
tensors of matching types, and the files beside the configs are the spec's.

The models are real exports of the fixture checkpoint (tests/export/conftest.py). TensorRT's
builder cannot run here, so the tensorrt_plan variant is written from that export plus a
stand-in plan file listed in its spec the way pmtiqa-export lists an engine it built: the
writer only hashes and places the plan, and that is what this test covers."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the export extra (torch) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                   reason="the triton extra (tritonclient) is not installed")
from google.protobuf import text_format  # noqa: E402

from pmtiqa_deploy.errors import ExportError  # noqa: E402
from pmtiqa_deploy.export.cli import export_command  # noqa: E402
from pmtiqa_deploy.export.triton import CHECKSUMS, RepositoryOptions, write_repository  # noqa: E402
from pmtiqa_deploy.spec import Artifact, ModelSpec, sha256_file  # noqa: E402
from pmtiqa_deploy.triton import contract  # noqa: E402

MODELS = (contract.MODEL_NAME, contract.PREPROCESS_MODEL, contract.NETWORK_MODEL, contract.AGGREGATE_MODEL)
DTYPES = {"float32": model_config.TYPE_FP32, "float16": model_config.TYPE_FP16,
          "uint8": model_config.TYPE_UINT8}


def configs(repo: Path) -> dict[str, object]:
    """Every model's config.pbtxt, parsed strictly (an unknown field is an error)."""
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(MODELS)
    parsed = {}
    for name in MODELS:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config.ModelConfig())
        assert config.name == name and (repo / name / "1").is_dir()
        parsed[name] = config
    return parsed


def check_agrees_with_spec(repo: Path, spec: ModelSpec) -> dict[str, object]:
    parsed = configs(repo)
    crops = list(spec.input_shape(1)[1:])
    for config in parsed.values():
        assert config.max_batch_size == spec.input.batch_max
    network = parsed[contract.NETWORK_MODEL]
    [images] = network.input
    assert (images.name, images.data_type, list(images.dims)) == (spec.input.name, DTYPES[spec.input.dtype], crops)
    score, probs = network.output
    assert (score.name, score.data_type, list(score.dims), list(score.reshape.shape)) == (
        "score", model_config.TYPE_FP32, [1], [])
    assert (probs.name, list(probs.dims)) == ("level_probs", [spec.score.num_levels])
    assert list(network.dynamic_batching.preferred_batch_size) == sorted(
        {spec.input.batch_opt, spec.input.batch_max})
    preprocess = parsed[contract.PREPROCESS_MODEL]
    assert preprocess.backend == "python" and [i.name for i in preprocess.input] == [contract.IMAGE]
    assert [(o.name, o.data_type, list(o.dims)) for o in preprocess.output] == [
        (spec.input.name, DTYPES[spec.input.dtype], crops), (contract.PREPROCESS_ERROR, model_config.TYPE_STRING, [1])]
    ensemble = parsed[contract.MODEL_NAME]
    assert ensemble.platform == "ensemble"
    assert [(t.name, t.data_type) for t in ensemble.input] == [(contract.IMAGE, model_config.TYPE_STRING)]
    assert [(t.name, t.data_type) for t in ensemble.output] == [
        ("score", model_config.TYPE_FP32), ("level", model_config.TYPE_INT64), ("error", model_config.TYPE_STRING)]
    check_steps_connect(parsed)
    return parsed


def check_steps_connect(parsed: dict) -> None:
    """Each step reads tensors the ensemble's input or an earlier step produced, with the
    data type and dims the consuming model declares, and the ensemble's outputs are produced."""
    ensemble = parsed[contract.MODEL_NAME]
    known = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = parsed[step.model_name]
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        assert set(step.input_map) == set(inputs), step.model_name
        for name, tensor in step.input_map.items():
            assert known[tensor] == inputs[name], (step.model_name, name)
        for name, tensor in step.output_map.items():
            known[tensor] = outputs[name]
    for tensor in ensemble.output:
        assert known[tensor.name] == (tensor.data_type, list(tensor.dims)), tensor.name


def check_files(repo: Path, model_file: str) -> None:
    """The network's folder holds its file and a model.json listing exactly it; SHA256SUMS
    lists every file with its hash."""
    folder = repo / contract.NETWORK_MODEL / "1"
    spec = ModelSpec.load(folder)
    assert [a.file for a in spec.artifacts] == [model_file]
    spec.verify_artifact(folder, spec.artifacts[0])
    for name in (contract.PREPROCESS_MODEL, contract.AGGREGATE_MODEL):
        assert ModelSpec.load(repo / name / "1").artifacts == ()
        assert "from pmtiqa_deploy.triton.models import" in (repo / name / "1" / "model.py").read_text()
    listed = dict(line.split("  ")[::-1] for line in (repo / CHECKSUMS).read_text().splitlines())
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert sorted(listed) == [f for f in files if f != CHECKSUMS]
    assert all(hashlib.sha256((repo / f).read_bytes()).hexdigest() == h for f, h in listed.items())


def test_onnxruntime_gpu_repository_offers_tensorrt_fp16(exported, tmp_path):
    repo = write_repository(exported.directory, tmp_path / "repo")  # auto: no engine -> onnxruntime
    network = check_agrees_with_spec(repo, exported.spec)[contract.NETWORK_MODEL]
    assert network.platform == "onnxruntime_onnx" and network.default_model_filename == "model.onnx"
    assert [g.kind for g in network.instance_group] == [model_config.ModelInstanceGroup.KIND_GPU]
    [accelerator] = network.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    check_files(repo, "model.onnx")


def test_onnxruntime_cpu_repository_has_no_gpu_accelerator(exported_uint8, tmp_path):
    repo = write_repository(exported_uint8.directory, tmp_path / "repo",
                            RepositoryOptions(network="onnxruntime", device="cpu", instances=2))
    network = check_agrees_with_spec(repo, exported_uint8.spec)[contract.NETWORK_MODEL]
    assert network.input[0].data_type == model_config.TYPE_UINT8  # uint8 crops, normalised in the graph
    assert [(g.kind, g.count) for g in network.instance_group] == [(model_config.ModelInstanceGroup.KIND_CPU, 2)]
    assert not network.HasField("optimization")


def test_python_network_repository_is_the_cpu_test_variant(exported, tmp_path):
    repo = write_repository(exported.directory, tmp_path / "repo", RepositoryOptions(network="python"))
    network = check_agrees_with_spec(repo, exported.spec)[contract.NETWORK_MODEL]
    assert network.backend == "python" and network.platform == ""
    assert [g.kind for g in network.instance_group] == [model_config.ModelInstanceGroup.KIND_CPU]
    assert "NetworkModel" in (repo / contract.NETWORK_MODEL / "1" / "model.py").read_text()
    check_files(repo, "model.onnx")


@pytest.fixture
def with_engine(exported, tmp_path) -> Path:
    """The export plus a stand-in plan listed as pmtiqa-export lists an engine it built."""
    folder = shutil.copytree(exported.directory, tmp_path / "model")
    (folder / "model.engine").write_bytes(b"stand-in for a TensorRT plan; this test never loads it")
    engine = Artifact("model.engine", "tensorrt", "fp16", sha256_file(folder / "model.engine"),
                      tensorrt_version="10.13.0", compute_capability="9.0")
    spec = ModelSpec.load(folder)
    dataclasses.replace(spec, artifacts=spec.artifacts + (engine,)).save(folder)
    return folder


def test_tensorrt_plan_repository(with_engine, tmp_path):
    repo = write_repository(with_engine, tmp_path / "repo")  # auto: the spec lists an engine
    network = check_agrees_with_spec(repo, ModelSpec.load(with_engine))[contract.NETWORK_MODEL]
    assert network.platform == "tensorrt_plan" and network.default_model_filename == "model.engine"
    assert [g.kind for g in network.instance_group] == [model_config.ModelInstanceGroup.KIND_GPU]
    check_files(repo, "model.engine")


def test_a_tampered_model_file_is_refused(with_engine, tmp_path):
    (with_engine / "model.engine").write_bytes(b"something else")
    with pytest.raises(Exception, match="does not match its spec"):
        write_repository(with_engine, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_options_that_cannot_work_are_rejected(exported, tmp_path):
    with pytest.raises(ExportError, match="GPUs only"):
        RepositoryOptions(network="tensorrt", device="cpu")
    with pytest.raises(ExportError, match="CPU/test variant"):
        RepositoryOptions(network="python", device="gpu")
    with pytest.raises(ExportError, match="no TensorRT engine"):
        write_repository(exported.directory, tmp_path / "repo", RepositoryOptions(network="tensorrt"))


def test_rewrites_its_own_repository_and_refuses_other_folders(exported, tmp_path):
    repo = write_repository(exported.directory, tmp_path / "repo", RepositoryOptions(network="python"))
    write_repository(exported.directory, repo)
    assert configs(repo)[contract.NETWORK_MODEL].platform == "onnxruntime_onnx"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not a repository")
    with pytest.raises(ExportError, match="not a repository"):
        write_repository(exported.directory, other)
    assert (other / "keep.txt").read_text() == "not a repository"


def test_cli_rejects_triton_options_without_a_repository_or_engine(checkpoint, photos, tmp_path):
    runner = CliRunner()
    for args, message in ((["--triton-network", "python"], "go(es) with --triton-repo"),
                          (["--triton-repo", tmp_path / "r", "--triton-network", "tensorrt", "--no-engine"],
                           "needs the engine"),
                          (["--triton-repo", tmp_path / "r", "--triton-network", "python",
                            "--triton-device", "gpu"], "CPU/test variant")):
        result = runner.invoke(export_command, [str(checkpoint), "-o", str(tmp_path / "m"),
                                                *map(str, args)])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m").exists()
