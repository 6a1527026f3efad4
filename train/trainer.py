"""Progressive multi-task training of one round: a content-disjoint train/validation/test
split, the PMT-IQA loss under its weight schedule, ONE Adam optimizer for the whole run
with step decay, validation each epoch, the best-on-validation checkpoint (of the epochs
that trained the score), and the test metrics of that checkpoint. Optionally (the demo
preset) BatchNorm statistics are re-estimated for the current weights before each
evaluation (`recalibrate_batchnorm`), so the checkpoint, and the model exported from it,
carries statistics of its own weights.

A round is resumable and deterministic: its patches depend only on (seed, epoch)
(`patches.py`), its state is written atomically after each epoch (`state.py`), so a run
killed at any point and resumed ends with the same weights and metrics, bit for bit, as
one that was never interrupted (on the same machine and thread count).

Data-parallel training (torchrun, gloo on CPU, nccl on CUDA): every process draws the same
epoch plan and takes every world-th patch of each global batch; the loss is scaled so the
averaged gradient is the full batch's. BatchNorm statistics are per process (as in plain
DDP). Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pmtiqa_deploy.agreement import agreement
from pmtiqa_deploy.errors import BackendUnavailable, DatasetError
from pmtiqa_deploy.preprocess import normalize
from pmtiqa_deploy.spec import atomic_write_bytes
from pmtiqa_deploy.train.calibration import recalibrate_batchnorm
from pmtiqa_deploy.train.checkpoint import CheckpointInfo, library_versions, save_checkpoint
from pmtiqa_deploy.train.datasets import Dataset
from pmtiqa_deploy.train.model import ModelConfig, build_model
from pmtiqa_deploy.train.objective import SCHEDULES, learning_rate, loss_weights, pmt_loss
from pmtiqa_deploy.train.patches import (
    AUGMENTS,
    ImageStore,
    PatchSet,
    epoch_plan,
    grid_sample,
    shard_batches,
)
from pmtiqa_deploy.train.state import RoundState, has_state, load_state, save_state

EpochCallback = Callable[[int, dict[str, Any]], None]
# Patches per forward pass of the BatchNorm recalibration: large batches keep each batch's
# variance close to the population's, and a forward pass is cheap next to a training step.
RECALIBRATION_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result. Options that only change how fast it runs
    (device, workers, cache) are not here, so a run may resume on other hardware settings."""

    backbone: str = "resnet50"
    # "imagenet" (torchvision download), "random", or a path to a torchvision state dict.
    backbone_weights: str = "imagenet"
    epochs: int = 20
    # Patches per optimizer step; each patch is one crop of one image, with that image's
    # score (as in the authors' code, where the batch of 9..13 counts such samples).
    batch_size: int = 12
    lr: float = 2e-4
    weight_decay: float = 5e-4
    # The learning rate is divided by 1/lr_gamma every lr_step epochs.
    lr_step: int = 6
    lr_gamma: float = 0.1
    # M random crops per training image per epoch; N fixed crops per test image.
    train_crops: int = 25
    test_crops: int = 9
    # Patch side, for training and for the test grid. It travels in the checkpoint's
    # ModelConfig and PreprocessSpec, so export and the runtime cut the same crops. The MS
    # pooling scales with it (pool = crop_size / 32), so every branch keeps the paper's
    # 8x8, 4x4, 2x2, 1x1 grid and every layer keeps its size; 224 is the paper's.
    crop_size: int = 224
    # Before each evaluation, re-estimate the BatchNorm statistics over this many training
    # patches (`recalibrate_batchnorm`); 0 keeps the running averages of training.
    bn_recalibration: int = 0
    schedule: str = "progressive"
    # What each training crop may undergo (`patches.AUGMENTS`); "flip" is the paper's.
    augment: str = "flip"
    seed: int = 0
    # Repeats with fresh content-disjoint splits (split seed = seed + round).
    rounds: int = 1
    test_fraction: float = 0.2
    # Share of the training references held out for validation (model selection).
    val_fraction: float = 0.15
    # Scale the score head's learning rate by the training scores' standard deviation.
    # Adam moves each weight by about lr per step whatever its gradient, so a head that
    # must reach MOS units (std ~25 on 0..100) from random features would spend most of a
    # short run growing; this is the head learning in standardised units. The paper's
    # pretrained features do not need it.
    scale_head_lr: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        for name in ("epochs", "batch_size", "train_crops", "test_crops", "rounds", "lr_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (BatchNorm needs a batch)")
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError(f"crop_size must be a positive multiple of 32 (the MS module pools stage "
                             f"outputs to 8x8..1x1 grids with a crop_size/32 window), got {self.crop_size}")
        if self.bn_recalibration < 0:
            raise ValueError(f"bn_recalibration must not be negative, got {self.bn_recalibration}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay not negative")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise ValueError("test_fraction and val_fraction must lie strictly between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS = {
    # The authors' protocol (PMT-IQA.md): ResNet-50 from ImageNet, ~20 epochs, lr 2e-4.
    "paper": TrainConfig(),
    # The offline demo on the built-in dataset (384x288 images): no ImageNet weights exist
    # offline, so a ResNet-18 learns from scratch, sized to finish within 15 minutes on 2
    # CPU cores. Training from scratch is limited by optimizer steps, so:
    # - 96-pixel crops: a step costs a fifth of a 224 one (~95 instead of ~23 patches/s on
    #   2 cores), the MS grids stay 8x8..1x1, and blur, noise, blocking and banding are all
    #   visible at that scale; the 12 test crops tile the 384x288 image exactly (3 x 4).
    # - 6 epochs of 5 crops per image (750 training images in the default split: ~22k
    #   patches), lr/10 for the last 2 (step decay at about two thirds, as the paper's 20
    #   epochs with a step of 6 end). On a 2-core machine without AVX-512 an epoch takes
    #   about 2 minutes (7 epochs took 16 minutes there), and in 14-epoch runs the best
    #   validation epoch was the 4th.
    # - augment "dihedral+channels": five training photographs are few enough that the
    #   orientation and colours of a crop tell which photograph it is, and so its typical
    #   score; quarter turns and channel orders keep every label and remove that shortcut
    #   (in 14-epoch development runs, test SRCC 0.39 with flips alone and 0.63 with both;
    #   benchmarks/RESULTS.md).
    # - lr 3e-4: at 1e-3 the score head stalled (training L1 stuck near the scores' mean
    #   deviation) and at 5e-4 it learned more slowly, while 3e-4 kept improving, on a
    #   development split of the non-test sources alone (the test photos never looked at).
    # - batch 16: twice the steps of 32 at the same patches per second (measured at 128).
    # - scale_head_lr: the score head reaches MOS units in a short run (see TrainConfig).
    # - bn_recalibration: validation, and the exported checkpoint, use BatchNorm statistics
    #   of the current weights, not averages trailing them.
    "demo": TrainConfig(backbone="resnet18", backbone_weights="random", epochs=6, batch_size=16,
                        lr=3e-4, lr_step=4, train_crops=5, test_crops=12, crop_size=96,
                        bn_recalibration=1024, scale_head_lr=True, augment="dihedral+channels"),
}


@dataclass(frozen=True)
class Cluster:
    """This process's place in a data-parallel run (a single process is world 1)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str = "cpu") -> Cluster:
        """Join the process group that torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK),
        or a single process when there is none."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("--device cuda but PyTorch sees no CUDA GPU (a CPU-only torch "
                                     "build, or no driver); use --device cpu")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, device)
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", rank))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(rank, world, device)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def share(self, value: Any) -> Any:
        """Rank 0's `value`, on every process."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, values: list[Any]) -> list[list[Any]]:
        if self.world == 1:
            return [values]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, values)
        return out


@dataclass(frozen=True)
class Split:
    """Indices into `Dataset.items`; no reference (source content) is in two parts."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


def split_dataset(dataset: Dataset, seed: int, test_fraction: float = 0.2,
                  val_fraction: float = 0.15) -> Split:
    """The test part (by reference, `content_split`), then validation carved out of the
    rest by reference as well."""
    from pmtiqa_deploy.train.datasets import content_split

    where: dict[Any, list[int]] = {}
    for i, item in enumerate(dataset.items):
        where.setdefault(item, []).append(i)

    def indices(items) -> tuple[int, ...]:
        return tuple(sorted(where[item].pop() for item in items))

    rest, test = content_split(list(dataset.items), test_fraction=test_fraction, seed=seed)
    train, val = content_split(list(rest), test_fraction=val_fraction, seed=seed)
    split = Split(indices(train), indices(val), indices(test))
    empty = [name for name in ("train", "val", "test") if not getattr(split, name)]
    if empty:
        raise DatasetError(f"{dataset.name}: the {' and '.join(empty)} part of the split is empty "
                           f"({len(dataset.items)} images); a content-disjoint split needs at least "
                           "three distinct references")
    return split


@dataclass
class RoundResult:
    round: int
    seed: int
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float] | None
    history: list[dict[str, Any]]
    test_predictions: list[float] | None = None
    test_targets: list[float] | None = None


def predict(model: torch.nn.Module, store: ImageStore, indices: tuple[int, ...], cluster: Cluster,
            progress: bool = False, desc: str = "evaluate", images_per_batch: int = 8) -> np.ndarray:
    """Each image's score: the mean over its fixed grid of crops (`crops_uint8`), exactly
    what the exported model computes. Processes share the images and exchange results."""
    from pmtiqa_deploy.progress import progress_bar

    mine = list(indices[cluster.rank::cluster.world])
    spec = store.spec
    scores: list[float] = []
    model.eval()
    with torch.no_grad():
        chunks = [mine[i:i + images_per_batch] for i in range(0, len(mine), images_per_batch)]
        for chunk in progress_bar(chunks, desc=desc, unit="batch", leave=False, enabled=progress):
            crops = np.stack([normalize(store.test_crops(i), spec) for i in chunk])
            x = torch.from_numpy(crops.reshape(-1, *crops.shape[2:])).to(cluster.device)
            score, _ = model(x.contiguous(memory_format=torch.channels_last))
            scores.extend(score.view(len(chunk), -1).mean(dim=1).cpu().tolist())
    model.train()
    parts = cluster.gather(scores)
    out = np.empty(len(indices), dtype=np.float64)
    for rank, part in enumerate(parts):
        out[rank::cluster.world] = part
    return out


def grid_batches(store: ImageStore, images: list[int], crops: list[int], device: str = "cpu",
                 batch_size: int = RECALIBRATION_BATCH) -> Iterator[torch.Tensor]:
    """Crop `crops[k]` of the fixed test grid of store image `images[k]`, normalised, in
    batches of `batch_size` (the remainder, whose statistics would weigh as much as a
    full batch's, is left out unless it is all there is)."""
    count = len(images) if len(images) < batch_size else len(images) - len(images) % batch_size
    for start in range(0, count, batch_size):
        chunk = range(start, min(start + batch_size, count))
        patches = np.stack([store.test_crops(images[k])[crops[k]] for k in chunk])
        x = torch.from_numpy(normalize(patches, store.spec)).to(device)
        yield x.contiguous(memory_format=torch.channels_last)


def _metrics(predicted: np.ndarray, target: list[float]) -> dict[str, float]:
    a = agreement(predicted, target)
    return {"srcc": a.srcc, "plcc": a.plcc, "krcc": a.krcc, "count": a.count}


def _sync_buffers(model: torch.nn.Module, cluster: Cluster) -> None:
    """Give every process rank 0's BatchNorm statistics before evaluating."""
    if cluster.world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _train_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, patches: PatchSet,
                 config: TrainConfig, epoch: int, cluster: Cluster, workers: int,
                 progress: bool) -> dict[str, float]:
    from pmtiqa_deploy.progress import progress_bar

    batches = shard_batches(len(patches), config.batch_size, cluster.rank, cluster.world)
    if not batches:
        raise DatasetError(f"one epoch has {len(patches)} training patches, fewer than one batch of "
                           f"{config.batch_size}; lower --batch-size or raise --train-crops")
    loader = torch.utils.data.DataLoader(patches, batch_sampler=batches, num_workers=workers,
                                         pin_memory=cluster.device.startswith("cuda"))
    weights = loss_weights(epoch, config.epochs, config.schedule)
    lr = learning_rate(epoch, config.lr, config.lr_step, config.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    net.train()
    totals = np.zeros(3)
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", leave=False,
                       enabled=progress and cluster.main)
    for x, y, levels in bar:
        x = x.to(cluster.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        score, logits = net(x)
        parts = pmt_loss(score, logits, y.to(cluster.device), levels.to(cluster.device), weights,
                         denominator=config.batch_size / cluster.world)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        totals += [parts.total.item(), parts.l1_term.item(), parts.ce_term.item()]
        bar.set_postfix(loss=f"{totals[0] / (bar.n + 1):.3f}")
    totals /= len(batches)
    return {"lr": lr, "l1_weight": weights[0], "l2_weight": weights[1], "loss": totals[0],
            "l1": totals[1], "cross_entropy": totals[2], "steps": len(batches)}


def train_round(dataset: Dataset, store: ImageStore, split: Split, config: TrainConfig, *,
                round_index: int = 0, cluster: Cluster = Cluster(), out: Path | None = None,
                resume: bool = False, evaluate_test: bool = True, workers: int = 0,
                progress: bool = True, epoch_callback: EpochCallback | None = None) -> RoundResult:
    """Train one round and return its metrics. With `out`, rank 0 writes the round's
    files there (state/, checkpoint/, metrics.jsonl); `resume` continues from state/.
    `epoch_callback(epoch, record)` runs after each epoch's state is written."""
    seed = config.seed + round_index
    torch.manual_seed(seed)
    if store.spec.crop_size != config.crop_size:
        raise ValueError(f"the image store cuts {store.spec.crop_size}-pixel crops but the config asks for "
                         f"{config.crop_size}; build it with experiment.preprocess_spec")
    model_config = ModelConfig(backbone=config.backbone, num_levels=dataset.score.num_levels,
                               crop_size=config.crop_size, pool=config.crop_size // 32)
    model = build_model(model_config, config.backbone_weights)
    train_scores = [dataset.items[i].score for i in split.train]
    with torch.no_grad():
        # L1 on MOS units: start the score at the middle of the training scores instead of
        # spending the first thousands of Adam steps walking the bias there from zero.
        model.regressor.bias.fill_(float(np.median(train_scores)))
    model.to(cluster.device, memory_format=torch.channels_last)
    head = {id(p) for p in model.regressor.parameters()}
    head_scale = float(np.std(train_scores)) if config.scale_head_lr else 1.0
    optimizer = torch.optim.Adam(
        [{"params": [p for p in model.parameters() if id(p) not in head], "lr_scale": 1.0},
         {"params": list(model.regressor.parameters()), "lr_scale": max(head_scale, 1e-6)}],
        lr=config.lr, weight_decay=config.weight_decay)
    key = {"config": config.to_dict(), "round": round_index, "dataset": dataset.name,
           "images": len(dataset.items), "world": cluster.world}
    state = RoundState()
    if resume and out is not None and has_state(out / "state"):
        state = load_state(out / "state", model, optimizer, key)
    net: torch.nn.Module = model
    if cluster.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    targets = lambda part: [dataset.items[i].score for i in part]  # noqa: E731
    best_weights: dict[str, torch.Tensor] | None = None
    recalibration = grid_sample(len(split.train), store.spec.crop_count, config.bn_recalibration, seed)

    for epoch in range(state.epoch, config.epochs):
        started = time.perf_counter()
        plan = epoch_plan(len(split.train), config.train_crops, seed, epoch, config.augment)
        patches = PatchSet(store, split.train, train_scores, dataset.score, plan)
        record: dict[str, Any] = {"round": round_index, "epoch": epoch}
        record.update(_train_epoch(net, optimizer, patches, config, epoch, cluster, workers, progress))
        if recalibration:
            images = [split.train[i] for i, _ in recalibration]
            crops = [c for _, c in recalibration]
            recalibrate_batchnorm(model, grid_batches(store, images, crops, cluster.device))
        _sync_buffers(model, cluster)
        val = _metrics(predict(model, store, split.val, cluster), targets(split.val))
        srcc = val["srcc"] if math.isfinite(val["srcc"]) else -math.inf
        # A progressive run's first epoch gives the score no loss (l1 = 0): its head is still
        # the initial one, shrunk by weight decay to a near-constant whose ranks are noise, so
        # that epoch is validated and logged but never becomes the checkpoint.
        if record["l1_weight"] > 0 and (state.best_epoch < 0 or srcc > state.best_srcc):
            state.best_srcc, state.best_epoch = srcc, epoch
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None and cluster.main:
                _save(model, out / "checkpoint", dataset, store, split, config, round_index, cluster,
                      {"val": val, "best_epoch": epoch})
        record.update(val=val, best_epoch=state.best_epoch, seconds=time.perf_counter() - started)
        state.history.append(record)
        state.epoch = epoch + 1
        if out is not None and cluster.main:
            save_state(out / "state", model, optimizer, state, key)
            _write_jsonl(out / "metrics.jsonl", state.history)
        if progress and cluster.main:
            from tqdm import tqdm

            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.3f} (L1 {record['l1']:.3f}, "
                       f"CE {record['cross_entropy']:.3f}, weights {record['l1_weight']:.2f}/"
                       f"{record['l2_weight']:.2f}), val SRCC {val['srcc']:.4f} PLCC {val['plcc']:.4f}, "
                       f"best epoch {state.best_epoch + 1 or '-'}, {record['seconds']:.0f} s")
        cluster.barrier()
        if epoch_callback is not None:
            epoch_callback(epoch, record)

    if best_weights is None:  # resumed after the best epoch: its weights are on disk
        from safetensors.torch import load_file

        assert out is not None, "only a run with a folder can be resumed"
        best_weights = load_file(str(out / "checkpoint" / "model.safetensors"))
    model.load_state_dict(best_weights)
    val = state.history[state.best_epoch]["val"]
    result = RoundResult(round_index, seed, state.best_epoch, val, None, state.history)
    if evaluate_test:
        predicted = predict(model, store, split.test, cluster, progress and cluster.main, "test")
        result.test = _metrics(predicted, targets(split.test))
        result.test_predictions, result.test_targets = predicted.tolist(), targets(split.test)
        if out is not None and cluster.main:
            _save(model, out / "checkpoint", dataset, store, split, config, round_index, cluster,
                  {"val": val, "test": result.test, "best_epoch": state.best_epoch})
    cluster.barrier()
    return result


def _save(model, directory: Path, dataset: Dataset, store: ImageStore, split: Split,
          config: TrainConfig, round_index: int, cluster: Cluster, metrics: dict[str, Any]) -> None:
    references = lambda part: sorted({str(dataset.items[i].reference) for i in part})  # noqa: E731
    training = {
        "dataset": dataset.name, "root": str(dataset.root), "images": len(dataset.items),
        "train_images": len(split.train), "val_images": len(split.val), "test_images": len(split.test),
        "val_references": references(split.val), "test_references": references(split.test),
        "round": round_index, "seed": config.seed + round_index, "processes": cluster.world,
        "config": config.to_dict(),
    }
    info = CheckpointInfo(config=model.config, score=dataset.score, preprocess=store.spec,
                          training=training, metrics=metrics, versions=library_versions())
    save_checkpoint(model, directory, info)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
    atomic_write_bytes(path, text.encode())
