"""Checkpoints: weights in safetensors (loading cannot run code, as pickle can) and a JSON
beside them that rebuilds the model with no guessing.

A checkpoint is a directory:
    model.safetensors   the state dict
    checkpoint.json     format version, model config, score spec (range, units, direction,
                        K, level width), preprocessing definition, training data, metrics,
                        library versions, and the weights file's sha256
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pmtiqa_deploy.errors import CheckpointError, SpecError
from pmtiqa_deploy.spec import (
    PreprocessSpec,
    ScoreSpec,
    _from_jsonable,
    _to_jsonable,
    atomic_write_bytes,
    sha256_file,
)
from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

FORMAT = "pmtiqa-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "checkpoint.json"


@dataclass(frozen=True)
class CheckpointInfo:
    """What travels with the weights."""

    config: ModelConfig
    score: ScoreSpec
    preprocess: PreprocessSpec
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    import torchvision

    from pmtiqa_deploy import __version__

    return {"pmtiqa_deploy": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent if path.name in (INFO_FILE, WEIGHTS_FILE) else path


def save_checkpoint(model: PMTIQA, path: str | os.PathLike, info: CheckpointInfo) -> Path:
    """Write the checkpoint directory; each file is replaced atomically, weights first,
    so a reader never sees a JSON that points at weights it does not describe."""
    from safetensors.torch import save as safetensors_bytes

    if info.config != model.config:
        raise CheckpointError("CheckpointInfo.config differs from the model's own config")
    if info.score.num_levels != model.config.num_levels:
        raise CheckpointError(
            f"score spec has {info.score.num_levels} levels but the model has {model.config.num_levels}")
    directory = _checkpoint_dir(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(state))
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(directory / WEIGHTS_FILE)},
        "config": model.config.to_dict(),
        "score": _to_jsonable(info.score),
        "preprocess": _to_jsonable(info.preprocess),
        "training": info.training,
        "metrics": info.metrics,
        "versions": info.versions or library_versions(),
    }
    atomic_write_bytes(directory / INFO_FILE, (json.dumps(document, indent=2) + "\n").encode())
    return directory


def read_checkpoint_info(path: str | os.PathLike) -> tuple[CheckpointInfo, dict[str, Any]]:
    """The checkpoint's JSON, validated; also returns the raw document."""
    directory = _checkpoint_dir(path)
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise CheckpointError(
            f"{info_path} is missing: a checkpoint is a directory holding {INFO_FILE} and "
            f"{WEIGHTS_FILE} (written by pmtiqa-train)")
    try:
        document = json.loads(info_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info_path} is not valid JSON ({exc}); it was truncated or edited") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{info_path} is not a pmtiqa checkpoint (format != {FORMAT!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{info_path} has format_version {document.get('format_version')!r}; this toolkit reads "
            f"{FORMAT_VERSION}: use the pmtiqa-deploy version that wrote it")
    try:
        info = CheckpointInfo(
            config=ModelConfig.from_dict(document["config"]),
            score=_from_jsonable(ScoreSpec, document["score"], "score"),
            preprocess=_from_jsonable(PreprocessSpec, document["preprocess"], "preprocess"),
            training=document.get("training", {}),
            metrics=document.get("metrics", {}),
            versions=document.get("versions", {}),
        )
    except KeyError as exc:
        raise CheckpointError(f"{info_path} lacks the key {exc.args[0]!r}") from None
    except (SpecError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{info_path}: {exc}") from None
    if info.score.num_levels != info.config.num_levels:
        raise CheckpointError(f"{info_path}: score has {info.score.num_levels} levels, model "
                              f"config {info.config.num_levels}")
    return info, document


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> tuple[PMTIQA, CheckpointInfo]:
    """Rebuild the model from a checkpoint directory (or either file in it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = _checkpoint_dir(path)
    info, document = read_checkpoint_info(directory)
    weights_path = directory / document["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; {INFO_FILE} refers to it")
    digest = sha256_file(weights_path)
    if digest != document["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights_path} does not match {INFO_FILE} (sha256 {digest[:12]}... expected "
            f"{document['weights']['sha256'][:12]}...): the weights were truncated or replaced")
    try:
        state = load_file(str(weights_path), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({exc})") from None
    model = PMTIQA(info.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights_path} does not fit the config in {INFO_FILE} "
            f"({info.config.backbone}, K={info.config.num_levels}): {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors "
            f"(first: {(missing + unexpected + wrong)[0]})")
    model.load_state_dict(state)
    model.eval()
    return model, info
