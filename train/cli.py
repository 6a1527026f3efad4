"""`pmtiqa-train`: progressive multi-task training of PMT-IQA on a dataset folder.

A thin click command over `experiment.run_experiment`. torch and the training modules are
imported inside the command, so `--help` is instant and torch-free.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

PRESET_NAMES = ("paper", "demo")

# Options that override a field of the preset's TrainConfig, by field name.


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--dataset", "dataset_name", required=True,
              help="Dataset reader: builtin, csv (generic manifest), livec, koniq, kadid, bid, live, csiq, spaq.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="The dataset folder as shipped. Optional for builtin: it is built (in seconds, "
                   "offline) in the cache folder ($PMTIQA_CACHE, else ~/.cache/pmtiqa-deploy).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoint/, summary.json, round-<k>/ with metrics.jsonl, state/ "
                   "and the test scatter plot.")
@click.option("--preset", type=click.Choice(PRESET_NAMES),
              help="Defaults for every training option: 'paper' (ResNet-50 from ImageNet, 20 "
                   "epochs, the authors' protocol) or 'demo' (ResNet-18 from scratch on 96-pixel "
                   "crops, sized for 15 minutes on 2 CPU cores). Default: demo for builtin, paper "
                   "otherwise.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per round.")
@click.option("--batch-size", type=click.IntRange(min=2), help="Training patches per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Initial learning rate (Adam).")
@click.option("--lr-step", type=click.IntRange(min=1), help="Divide the learning rate by 10 every this many epochs.")
@click.option("--train-crops", type=click.IntRange(min=1),
              help="M: random crops (transformed as --augment says) per training image per epoch.")
@click.option("--test-crops", type=click.IntRange(min=1),
              help="N: fixed grid crops per test image (the exported model's crop count).")
@click.option("--crop-size", type=click.IntRange(min=32),
              help="Patch side for training and the test grid (a multiple of 32; the paper's 224). "
                   "It travels in the checkpoint and the exported spec.")
@click.option("--bn-recalibration", type=click.IntRange(min=0),
              help="Re-estimate BatchNorm statistics over this many training patches (fixed grid "
                   "crops) before each evaluation, so the checkpoint carries statistics of its own "
                   "weights; 0 keeps training's running averages.")
@click.option("--schedule", type=click.Choice(("progressive", "fixed")),
              help="Loss weights: progressive l1=t/(T-1), l2=1-l1 (the paper), or fixed 0.5/0.5 (ablation).")
@click.option("--augment", type=click.Choice(("flip", "dihedral", "dihedral+channels")),
              help="Training-crop transforms: random left-right flips (the paper), any flip or "
                   "quarter turn, or those with the RGB channels in any order (the demo preset).")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Repeat on fresh content-disjoint 80/20 splits; the summary reports medians.")
@click.option("--seed", type=int, help="Seed of splits, initialisation and patches (round k uses seed+k).")
@click.option("--backbone", type=click.Choice(("resnet50", "resnet34", "resnet18")), help="Backbone network.")
@click.option("--backbone-weights",
              help="'imagenet' (torchvision download; needs the network), 'random', or PATH to a "
                   "torchvision-format state dict (.pth/.safetensors) for offline machines.")
@click.option("--scale-head-lr/--no-scale-head-lr", default=None,
              help="Scale the score head's learning rate by the training scores' std (helps from "
                   "random init; the demo preset does, the paper preset does not).")
@click.option("--search", "search_trials", type=click.IntRange(min=0), default=0,
              help="Optuna trials over lr (1e-4..1e-3) and batch size (9..13) on the validation "
                   "split before the final training; 0 skips the search.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last completed epoch.")
@click.option("--device", type=click.Choice(("cpu", "cuda")), default="cpu", help="Where to train.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Data-loading worker processes.")
@click.option("--cache-mb", type=click.IntRange(min=0), default=2048,
              help="Memory for decoded images; beyond it images are decoded again when used.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
def train_command(dataset_name, root, out, preset, search_trials, resume, device, workers, cache_mb,
                  quiet, **overrides):
    """Train PMT-IQA and test it on held-out content.

    Data-parallel training: torchrun --nproc-per-node P -m pmtiqa_deploy.train.cli ...
    (gloo on CPU, nccl on CUDA; only rank 0 writes).
    """
    from pmtiqa_deploy.errors import PmtIqaError

    try:
        summary = _run(dataset_name, root, out, preset, search_trials, resume, device, workers,
                       cache_mb, not quiet, overrides)
    except PmtIqaError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if summary is not None:
        median = summary["median"]
        click.echo(f"test SRCC {median['srcc']:.4f}  PLCC {median['plcc']:.4f}  KRCC {median['krcc']:.4f}"
                   f" (median of {len(summary['rounds'])} round(s)); checkpoint: {out / 'checkpoint'}")


def _run(dataset_name, root, out, preset, search_trials, resume, device, workers, cache_mb,
         progress, overrides):
    from pmtiqa_deploy.train.experiment import run_experiment
    from pmtiqa_deploy.train.trainer import PRESETS

    dataset = load(dataset_name, root, progress)
    preset = preset or ("demo" if dataset_name == "builtin" else "paper")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    config = dataclasses.replace(PRESETS[preset], **chosen)
    rank = int(os.environ.get("RANK", "0"))
    if progress and rank == 0:
        click.echo(f"{dataset.name}: {len(dataset.items)} images; preset {preset}: "
                   f"{json.dumps(config.to_dict())}")
    summary = run_experiment(dataset, config, out, resume=resume, device=device, workers=workers,
                             search_trials=search_trials, cache_mb=cache_mb, progress=progress)
    return summary if rank == 0 else None


def load(dataset_name: str, root: Path | None, progress: bool = True):
    """The dataset; `builtin` is built first where it is missing (default: the cache folder)."""
    from pmtiqa_deploy.train.datasets import load_dataset

    if dataset_name == "builtin":
        from pmtiqa_deploy.train.builtin import default_dir, make_builtin

        root = make_builtin(root or default_dir(), progress=progress)
    elif root is None:
        raise click.UsageError(f"--root is required for --dataset {dataset_name} (only builtin has a "
                               "default folder)")
    return load_dataset(dataset_name, root)


if __name__ == "__main__":  # torchrun --nproc-per-node P -m pmtiqa_deploy.train.cli ...
    train_command()
