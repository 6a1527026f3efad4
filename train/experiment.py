"""An experiment, what `pmtiqa-train` runs: the dataset's images decoded once, an optional
Optuna search on the validation split, R rounds of training on fresh content-disjoint
splits, and the summary the paper reports (median test SRCC and PLCC over the rounds).

The run folder:
    run.json            the settings and the dataset; `--resume` must match them
    search/             the Optuna journal, one line per trial, best.json (with --search)
    round-<k>/          state/ (resumable), checkpoint/ (best on validation, with its
                        test metrics), metrics.jsonl (one record per epoch),
                        test_predictions.csv, test_scatter.png, result.json
    checkpoint/         the model to export: round 0's checkpoint (the other rounds
                        measure the spread; picking one on its test score would be
                        selection on the test set)
    summary.json        every round's metrics and the medians
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.errors import CheckpointError
from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec, _to_jsonable, atomic_write_bytes
from pmtiqa_deploy.train.datasets import Dataset
from pmtiqa_deploy.train.patches import ImageStore
from pmtiqa_deploy.train.trainer import (
    Cluster,
    EpochCallback,
    RoundResult,
    TrainConfig,
    split_dataset,
    train_round,
)

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


def preprocess_spec(dataset: Dataset, test_crops: int, crop_size: int = 224) -> PreprocessSpec:
    """The dataset's resize policy and the test-time crop grid: what the checkpoint and the
    exported model carry."""
    return PreprocessSpec(resize=dataset.resize, width=dataset.width, height=dataset.height,
                          crop_size=crop_size, crop_count=test_crops)


def run_experiment(dataset: Dataset, config: TrainConfig, out: str | Path, *, resume: bool = False,
                   device: str = "cpu", workers: int = 0, search_trials: int = 0,
                   cache_mb: int = 2048, progress: bool = True,
                   epoch_callback: EpochCallback | None = None) -> dict[str, Any]:
    """Train (and test) as `config` says, writing the run folder `out`; returns the summary."""
    cluster = Cluster.start(device)
    out = Path(out)
    started = time.perf_counter()
    run = {"format": "pmtiqa-run", "dataset": _describe(dataset), "config": config.to_dict(),
           "search_trials": search_trials, "processes": cluster.world}
    problem = _claim(out, run, resume) if cluster.main else None
    problem = cluster.share(problem)
    if problem:
        raise CheckpointError(problem)

    spec = preprocess_spec(dataset, config.test_crops, config.crop_size)
    store = ImageStore([item.path for item in dataset.items], spec, cache_bytes=cache_mb << 20)
    store.warm(range(len(store)), progress and cluster.main)
    search_best = None
    if search_trials:
        from pmtiqa_deploy.train.search import search

        split = split_dataset(dataset, config.seed, config.test_fraction, config.val_fraction)
        search_best = search(dataset, store, split, config, search_trials, out / "search",
                             cluster=cluster, workers=workers, progress=progress)
        config = dataclasses.replace(config, lr=search_best["lr"], batch_size=search_best["batch_size"])

    rounds: list[dict[str, Any]] = []
    for r in range(config.rounds):
        folder = out / f"round-{r}"
        if resume and (folder / "result.json").is_file():
            rounds.append(json.loads((folder / "result.json").read_text()))
            continue
        split = split_dataset(dataset, config.seed + r, config.test_fraction, config.val_fraction)
        if cluster.main and progress:
            print(f"round {r + 1}/{config.rounds}: {len(split.train)} train, {len(split.val)} "
                  f"validation, {len(split.test)} test images", flush=True)
        result = train_round(dataset, store, split, config, round_index=r, cluster=cluster, out=folder,
                             resume=resume, workers=workers, progress=progress,
                             epoch_callback=epoch_callback)
        record = _round_record(result)
        if cluster.main:
            _write_round(folder, dataset, split.test, result, record)
        rounds.append(record)

    tests = [r["test"] for r in rounds]
    summary = {
        "dataset": run["dataset"], "config": config.to_dict(), "search": search_best,
        "processes": cluster.world, "rounds": rounds,
        "median": {k: float(np.median([t[k] for t in tests])) for k in ("srcc", "plcc", "krcc")},
        "checkpoint": "checkpoint", "seconds": time.perf_counter() - started,
    }
    if cluster.main:
        _replace_tree(out / "round-0" / "checkpoint", out / "checkpoint")
        atomic_write_bytes(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    cluster.barrier()
    return summary


def _describe(dataset: Dataset) -> dict[str, Any]:
    return {"name": dataset.name, "root": str(dataset.root), "images": len(dataset.items),
            "references": len({item.reference for item in dataset.items}),
            "score": _to_jsonable(dataset.score), "resize": dataset.resize,
            "width": dataset.width, "height": dataset.height}


def _claim(out: Path, run: dict[str, Any], resume: bool) -> str | None:
    """Write run.json for a new run, or check it for a resumed one; the error text if not."""
    path = out / RUN_FILE
    if resume:
        if not path.is_file():
            return f"--resume: {out} holds no run ({RUN_FILE} is missing); start it without --resume"
        stored = json.loads(path.read_text())
        changed = sorted(k for k in set(stored) | set(run) if stored.get(k) != run.get(k))
        if changed:
            return (f"--resume: {out} was started with different {', '.join(changed)}; "
                    "resume with the original options or use a new --out folder")
        return None
    if path.exists():
        return (f"{out} already holds a run; pass --resume to continue it or choose a new --out folder")
    atomic_write_bytes(path, (json.dumps(run, indent=2) + "\n").encode())
    return None


def _round_record(result: RoundResult) -> dict[str, Any]:
    return {"round": result.round, "seed": result.seed, "best_epoch": result.best_epoch,
            "epochs": len(result.history), "val": result.val, "test": result.test,
            "train_seconds": sum(r["seconds"] for r in result.history)}


def _write_round(folder: Path, dataset: Dataset, test: tuple[int, ...], result: RoundResult,
                 record: dict[str, Any]) -> None:
    rows = ["path,reference,score,predicted"] + [
        f"{dataset.items[i].path},{dataset.items[i].reference or ''},{t:.6g},{p:.6g}"
        for i, t, p in zip(test, result.test_targets, result.test_predictions)]
    atomic_write_bytes(folder / "test_predictions.csv", ("\n".join(rows) + "\n").encode())
    title = (f"{dataset.name}, round {result.round}: test SRCC {result.test['srcc']:.3f}, "
             f"PLCC {result.test['plcc']:.3f}")
    scatter_plot(folder / "test_scatter.png", result.test_predictions, result.test_targets,
                 dataset.score, title)
    atomic_write_bytes(folder / "result.json", (json.dumps(record, indent=2) + "\n").encode())


def scatter_plot(path: Path, predicted, target, score: ScoreSpec, title: str) -> None:
    """Predicted against true score on the test split, with the identity line (Agg canvas,
    so no display and no global matplotlib backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(target, predicted, s=14, alpha=0.7)
    axes.plot([score.min, score.max], [score.min, score.max], color="grey", linewidth=1)
    better = "higher is better" if score.higher_is_better else "lower is better"
    axes.set_xlabel(f"true {score.units} ({better})")
    axes.set_ylabel(f"predicted {score.units}")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def _replace_tree(source: Path, target: Path) -> None:
    """Copy a folder over `target` by way of a temporary sibling and a rename."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, tmp / "copy")
        if target.exists():
            target.rename(tmp / "old")
        (tmp / "copy").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
