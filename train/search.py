"""Hyperparameter search as the authors did it: Optuna trials over the learning rate
(1e-4..1e-3, log scale) and the batch size (9..13), each trial a full training judged on
the validation SRCC (never on the test part).

Trials are recorded in an Optuna journal file under the run folder, so a resumed run
keeps the trials already finished. Rank 0 asks Optuna for each trial's parameters and
shares them, so data-parallel processes train the same trial together.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pmtiqa_deploy.spec import atomic_write_bytes
from pmtiqa_deploy.train.datasets import Dataset
from pmtiqa_deploy.train.patches import ImageStore
from pmtiqa_deploy.train.trainer import Cluster, Split, TrainConfig, train_round

LR_RANGE = (1e-4, 1e-3)
BATCH_RANGE = (9, 13)
BEST_FILE = "best.json"


def search(dataset: Dataset, store: ImageStore, split: Split, config: TrainConfig, trials: int,
           out: Path, *, cluster: Cluster = Cluster(), workers: int = 0,
           progress: bool = True) -> dict[str, Any]:
    """Run the trials still missing in `out` (up to `trials` finished ones) and return the
    best: {"lr", "batch_size", "val_srcc", "trials"}. Written to out/best.json at the end;
    a finished search found there is returned as is."""
    if trials < 1:
        raise ValueError(f"the search needs at least one trial, got {trials}")
    best_path = out / BEST_FILE
    done = cluster.share(json.loads(best_path.read_text()) if cluster.main and best_path.is_file() else None)
    if done is not None and done.get("trials") == trials:
        return done

    study = _study(out, config.seed) if cluster.main else None
    while True:
        params = None
        if study is not None:
            if _completed(study) < trials:
                trial = study.ask()
                params = {"number": trial.number,
                          "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
                          "batch_size": trial.suggest_int("batch_size", *BATCH_RANGE)}
        params = cluster.share(params)
        if params is None:
            break
        trial_config = dataclasses.replace(config, lr=params["lr"], batch_size=params["batch_size"])
        if cluster.main and progress:
            print(f"search trial {params['number'] + 1}/{trials}: lr={params['lr']:.2e} "
                  f"batch={params['batch_size']}", flush=True)
        result = train_round(dataset, store, split, trial_config, cluster=cluster, out=None,
                             evaluate_test=False, workers=workers, progress=progress)
        if study is not None:
            srcc = result.val["srcc"]
            study.tell(params["number"], srcc if srcc == srcc else float("-inf"))
            _append(out / "trials.jsonl", {**params, "best_epoch": result.best_epoch, "val": result.val})

    best = None
    if study is not None:
        trial = study.best_trial
        best = {"lr": trial.params["lr"], "batch_size": trial.params["batch_size"],
                "val_srcc": trial.value, "trial": trial.number, "trials": trials}
        atomic_write_bytes(best_path, (json.dumps(best, indent=2) + "\n").encode())
    return cluster.share(best)


def _study(out: Path, seed: int):
    """The study in out/journal.log; trials a killed run left unfinished are marked failed."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(out / "journal.log")))
    study = optuna.create_study(study_name="pmtiqa", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return study


def _completed(study) -> int:
    import optuna

    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
