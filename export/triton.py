"""An exported model directory -> a Triton Inference Server model repository that Triton
loads as it is (`pmtiqa-export ... --triton-repo DIR`).

    DIR/pmtiqa/config.pbtxt, 1/                 the ensemble: image bytes in; score, level, error out
    DIR/pmtiqa_preprocess/config.pbtxt, 1/model.py, 1/model.json
    DIR/pmtiqa_network/config.pbtxt, 1/<model file>, 1/model.json
    DIR/pmtiqa_aggregate/config.pbtxt, 1/model.py, 1/model.json
    DIR/SHA256SUMS                              every file's sha256 (`sha256sum -c SHA256SUMS`)

The network, by `RepositoryOptions.network`:
- "tensorrt": `tensorrt_plan` over the spec's engine (model.engine, a plain plan), on GPUs;
- "onnxruntime": `onnxruntime_onnx` over model.onnx (FP32), on GPUs with TensorRT offered as
  execution accelerator at FP16, or on CPUs (`device="cpu"`);
- "python": the CPU/test variant, a Python-backend model running the runtime's `Scorer` on
  ONNX Runtime (pmtiqa_deploy.triton.models.NetworkModel): what the tritonserver that
  nvidia-pytriton ships can run, as it has only the Python backend;
- "auto": "tensorrt" when the spec lists an engine, else "onnxruntime".
Every network has dynamic batching with the spec's optimal and largest batch as preferred
sizes, and max_batch_size from the spec. Preprocessing and aggregation are Python-backend
models whose model.py imports the installed runtime (contract: pmtiqa_deploy.triton).
Each version folder's model.json is the spec, listing exactly the model file beside it.

The repository is written into a staging folder and renamed into place; an existing
repository written by this function is replaced, any other existing folder is refused.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmtiqa_deploy.errors import ExportError
from pmtiqa_deploy.spec import SPEC_FILENAME, ModelSpec, sha256_file
from pmtiqa_deploy.triton import contract

NETWORKS = ("auto", "tensorrt", "onnxruntime", "python")
DEVICES = ("gpu", "cpu")
CHECKSUMS = "SHA256SUMS"
VERSION = "1"
MODEL_PY = '''"""pmtiqa {what} for Triton's Python backend, written by pmtiqa-export. The code is
the installed runtime's: pip install pmtiqa-deploy{extra} into the Python that Triton's
Python backend runs."""

from pmtiqa_deploy.triton.models import {cls} as TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """How the repository serves. device None: "gpu" for tensorrt/onnxruntime, "cpu" for
    python. instances: copies of the network per GPU (or on the CPU); preprocess_instances:
    copies of the preprocessing model, each decoding on `decode_workers` threads."""

    network: str = "auto"
    device: str | None = None
    instances: int = 1
    preprocess_instances: int = 2
    decode_workers: int = 4
    queue_delay_us: int = 2000
    workspace_mib: int = 4096  # for the TensorRT accelerator of onnxruntime_onnx

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ExportError(f"triton network must be one of {NETWORKS}, got {self.network!r}")
        if self.device is not None and self.device not in DEVICES:
            raise ExportError(f"triton device must be one of {DEVICES}, got {self.device!r}")
        if self.network == "tensorrt" and self.device == "cpu":
            raise ExportError("a TensorRT plan runs on GPUs only: choose --triton-network "
                              "onnxruntime for a CPU repository")
        if self.network == "python" and self.device == "gpu":
            raise ExportError("the python network is the CPU/test variant: choose --triton-network "
                              "tensorrt or onnxruntime for GPUs")
        if min(self.instances, self.preprocess_instances, self.decode_workers) < 1:
            raise ExportError("instance and worker counts must be at least 1")

    def resolve(self, spec: ModelSpec) -> tuple[str, str]:
        """(network, device) for this spec: "auto" and a missing device decided."""
        network = self.network
        if network == "auto":
            network = "tensorrt" if _engine(spec) is not None else "onnxruntime"
        return network, self.device or ("cpu" if network == "python" else "gpu")


def write_repository(model_dir: str | os.PathLike, repo_dir: str | os.PathLike,
                     options: RepositoryOptions = RepositoryOptions(),
                     log: Callable[[str], None] = lambda message: None) -> Path:
    """Write the repository for the exported model in `model_dir` (see the module
    docstring); returns the repository folder."""
    model_dir, repo = Path(model_dir), Path(repo_dir)
    spec = ModelSpec.load(model_dir)
    network, device = options.resolve(spec)
    if repo.exists() and not (repo / CHECKSUMS).is_file():
        if not repo.is_dir() or any(repo.iterdir()):
            raise ExportError(f"{repo} exists and is not a repository pmtiqa-export wrote; "
                              "give an empty or new folder")
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.triton-", dir=repo.parent))
    try:
        _network(staging, model_dir, spec, network, device, options)
        _python_model(staging / contract.PREPROCESS_MODEL, spec, "PreprocessModel", "preprocessing",
                      _preprocess_config(spec, options))
        _python_model(staging / contract.AGGREGATE_MODEL, spec, "AggregateModel", "aggregation",
                      _aggregate_config(spec, network))
        (staging / contract.MODEL_NAME / VERSION).mkdir(parents=True)
        _write(staging / contract.MODEL_NAME / "config.pbtxt", _ensemble_config(spec))
        _write(staging / CHECKSUMS, "".join(
            f"{sha256_file(path)}  {path.relative_to(staging).as_posix()}\n"
            for path in sorted(staging.rglob("*")) if path.is_file()))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's folder is private; a repository is shared
        if repo.exists():
            shutil.rmtree(repo)
        os.replace(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote the Triton repository {repo} (network: {_PLATFORMS[network]} on {device})")
    return repo


# --- the models -------------------------------------------------------------------------

_PLATFORMS = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx", "python": "python"}


def _engine(spec: ModelSpec):
    return next((a for a in spec.artifacts if a.format == "tensorrt"), None)


def _network(staging: Path, model_dir: Path, spec: ModelSpec, network: str, device: str,
             options: RepositoryOptions) -> None:
    folder = staging / contract.NETWORK_MODEL / VERSION
    folder.mkdir(parents=True)
    artifact = _engine(spec) if network == "tensorrt" else spec.artifact("onnx", "fp32")
    if artifact is None:
        raise ExportError(f"{model_dir} has no TensorRT engine (model.json lists none); build one "
                          "with pmtiqa-export on a GPU machine, or choose --triton-network onnxruntime")
    if network == "tensorrt" and spec.input.batch_min != 1:
        raise ExportError(f"Triton sends batches from 1 up, but the engine's smallest batch is "
                          f"{spec.input.batch_min}: re-export with --batch-min 1")
    _place(spec.verify_artifact(model_dir, artifact), folder / artifact.file)
    dataclasses.replace(spec, artifacts=(artifact,)).save(folder / SPEC_FILENAME)
    config: dict[str, Any] = {"name": contract.NETWORK_MODEL, "max_batch_size": spec.input.batch_max}
    if network == "python":
        config["backend"] = "python"
        _write(folder / "model.py", MODEL_PY.format(what="network (CPU/test variant)",
                                                    extra="[onnxruntime]", cls="NetworkModel"))
    else:
        config["platform"] = _PLATFORMS[network]
        config["default_model_filename"] = artifact.file
    levels = spec.score.num_levels
    config["input"] = [_tensor(spec.input.name, contract.TRITON_DTYPES[spec.input.dtype],
                               spec.input_shape(1)[1:])]
    config["output"] = [_tensor(contract.SCORE, "TYPE_FP32", (1,), reshape=True),
                        _tensor("level_probs", "TYPE_FP32", (levels,))]
    preferred = sorted({spec.input.batch_opt, spec.input.batch_max})
    config["dynamic_batching"] = {"preferred_batch_size": preferred,
                                  "max_queue_delay_microseconds": options.queue_delay_us}
    kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    config["instance_group"] = [{"kind": _Enum(kind), "count": options.instances}]
    if network == "onnxruntime" and device == "gpu":
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [{
            "name": "tensorrt",
            "parameters": _map({"precision_mode": "FP16",
                                "max_workspace_size_bytes": str(options.workspace_mib << 20)}),
        }]}}
    _write(folder.parent / "config.pbtxt", render(config))


def _python_model(folder: Path, spec: ModelSpec, cls: str, what: str, config: dict[str, Any]) -> None:
    (folder / VERSION).mkdir(parents=True)
    _write(folder / VERSION / "model.py", MODEL_PY.format(what=what, extra="", cls=cls))
    dataclasses.replace(spec, artifacts=()).save(folder / VERSION / SPEC_FILENAME)
    _write(folder / "config.pbtxt", render(config))


def _preprocess_config(spec: ModelSpec, options: RepositoryOptions) -> dict[str, Any]:
    return {
        "name": contract.PREPROCESS_MODEL, "backend": "python", "max_batch_size": spec.input.batch_max,
        "input": [_tensor(contract.IMAGE, "TYPE_STRING", (1,))],
        "output": [_tensor(spec.input.name, contract.TRITON_DTYPES[spec.input.dtype],
                           spec.input_shape(1)[1:]),
                   _tensor(contract.PREPROCESS_ERROR, "TYPE_STRING", (1,))],
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
        "instance_group": [{"kind": _Enum("KIND_CPU"), "count": options.preprocess_instances}],
        "parameters": _parameters({"workers": str(options.decode_workers)}),
    }


def _aggregate_config(spec: ModelSpec, network: str) -> dict[str, Any]:
    return {
        "name": contract.AGGREGATE_MODEL, "backend": "python", "max_batch_size": spec.input.batch_max,
        "input": [_tensor(contract.NETWORK_SCORE, "TYPE_FP32", (1,)),
                  _tensor(contract.PREPROCESS_ERROR, "TYPE_STRING", (1,))],
        "output": _served_outputs(),
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
        "instance_group": [{"kind": _Enum("KIND_CPU"), "count": 1}],
        "parameters": _parameters({"network": f"Triton {_PLATFORMS[network]}"}),
    }


def _ensemble_config(spec: ModelSpec) -> str:
    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
        return {"model_name": model, "model_version": -1,
                "input_map": _map(inputs), "output_map": _map(outputs)}

    crops, score = "crops", "network_score"
    config = {
        "name": contract.MODEL_NAME, "platform": "ensemble", "max_batch_size": spec.input.batch_max,
        "input": [_tensor(contract.IMAGE, "TYPE_STRING", (1,))],
        "output": _served_outputs(),
        "ensemble_scheduling": {"step": [
            step(contract.PREPROCESS_MODEL, {contract.IMAGE: contract.IMAGE},
                 {spec.input.name: crops, contract.PREPROCESS_ERROR: contract.PREPROCESS_ERROR}),
            step(contract.NETWORK_MODEL, {spec.input.name: crops}, {contract.SCORE: score}),
            step(contract.AGGREGATE_MODEL,
                 {contract.NETWORK_SCORE: score, contract.PREPROCESS_ERROR: contract.PREPROCESS_ERROR},
                 {name: name for name in contract.OUTPUTS}),
        ]},
    }
    return render(config)


def _served_outputs() -> list[dict[str, Any]]:
    return [_tensor(contract.SCORE, "TYPE_FP32", (1,)), _tensor(contract.LEVEL, "TYPE_INT64", (1,)),
            _tensor(contract.ERROR, "TYPE_STRING", (1,))]


# --- files and the protobuf text format --------------------------------------------------

class _Enum(str):
    """A protobuf enum value: written bare (KIND_GPU), not quoted."""


def _tensor(name: str, dtype: str, dims: tuple[int, ...], reshape: bool = False) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "data_type": _Enum(dtype), "dims": list(dims)}
    if reshape:  # the graph's output is [B]; Triton's batched dims need at least one
        tensor["reshape"] = {"shape": []}
    return tensor


def _map(values: dict[str, str]) -> list[dict[str, str]]:
    """A protobuf map<string, string> as its repeated key/value entries."""
    return [{"key": key, "value": value} for key, value in values.items()]


def _parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    """ModelConfig.parameters: map<string, ModelParameter>."""
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def render(message: dict[str, Any], indent: int = 0) -> str:
    """A message as protobuf text format: a list of messages repeats the field, a list
    of scalars is written [a, b], strings are quoted, `_Enum` values bare."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        items = value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{\n{render(item, indent + 1)}{pad}}}\n")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _place(source: Path, target: Path) -> None:
    """Hard-link the model file when the file system allows it (engines are large), else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
