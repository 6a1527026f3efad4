"""The resumable state of a training round, written atomically after every epoch.

A state is two files in a folder:
    state-<epoch>.safetensors  every tensor: the model, Adam's moments and step counts,
                               torch's RNG states (CPU and CUDA)
    state.json                 everything else: the epoch reached, the best validation
                               SRCC and its epoch, the history of epoch records, the
                               optimizer's hyperparameters, Python's and NumPy's RNG
                               states, and the tensor file's name and sha256
The tensor file of each epoch has its own name and `state.json` is replaced last, so a
kill at any moment leaves the previous epoch's state whole. Nothing is pickled: safetensors
and JSON cannot run code when loaded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmtiqa_deploy.errors import CheckpointError
from pmtiqa_deploy.spec import atomic_write_bytes, sha256_file

STATE_FILE = "state.json"
STATE_FORMAT = "pmtiqa-train-state"


@dataclass
class RoundState:
    """Progress of one round: `epoch` epochs are complete."""

    epoch: int = 0
    best_srcc: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (Adam's `betas`), as the optimizer wrote them."""
    return tuple(value) if isinstance(value, list) else value


def save_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               state: RoundState, config_key: dict[str, Any]) -> None:
    """Write the state of `state.epoch` completed epochs; older tensor files are removed
    once the new JSON is in place."""
    from safetensors.torch import save as safetensors_bytes

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    optim_other: dict[str, dict[str, Any]] = {}
    for pid, entries in optim["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                optim_other.setdefault(str(pid), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    name = f"state-{state.epoch}.safetensors"
    atomic_write_bytes(directory / name, safetensors_bytes(tensors))
    py_state = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    document = {
        "format": STATE_FORMAT,
        "config": config_key,
        "tensors": {"file": name, "sha256": sha256_file(directory / name)},
        "epoch": state.epoch,
        "best_srcc": state.best_srcc if np.isfinite(state.best_srcc) else None,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "param_groups": optim["param_groups"],
        "optimizer_state": optim_other,
        "rng": {"python": [py_state[0], list(py_state[1]), py_state[2]], "numpy": np_state},
    }
    atomic_write_bytes(directory / STATE_FILE, (json.dumps(document) + "\n").encode())
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def has_state(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file()


def load_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               config_key: dict[str, Any]) -> RoundState:
    """Restore model, optimizer and RNG states; returns the round's progress. The state
    must come from a run with the same settings (`config_key`)."""
    from safetensors.torch import load_file

    path = directory / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the training state {path} ({exc}); start a new run "
                              "in a new --out folder") from None
    if document.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a pmtiqa training state")
    if document["config"] != config_key:
        changed = sorted(k for k in set(config_key) | set(document["config"])
                         if config_key.get(k) != document["config"].get(k))
        raise CheckpointError(f"{path} was written with different settings ({', '.join(changed)}); "
                              "resume with the original options or start a new --out folder")
    tensor_path = directory / document["tensors"]["file"]
    if not tensor_path.is_file() or sha256_file(tensor_path) != document["tensors"]["sha256"]:
        raise CheckpointError(f"{tensor_path} is missing or does not match {path}; the state is "
                              "damaged: start a new run in a new --out folder")
    tensors = load_file(str(tensor_path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = value
    for pid, entries in document["optimizer_state"].items():
        optim_state.setdefault(int(pid), {}).update(entries)
    groups = [{k: (v if k == "params" else _tuples(v)) for k, v in g.items()}
              for g in document["param_groups"]]
    optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    py = document["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = document["rng"]["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    best = document["best_srcc"]
    return RoundState(epoch=document["epoch"], best_srcc=float("-inf") if best is None else best,
                      best_epoch=document["best_epoch"], history=document["history"])
