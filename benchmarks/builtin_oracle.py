"""What the built-in dataset's labels allow across content: predict each test image by the
mean pseudo-MOS of the same distortion type and level on the *training* photographs (an
oracle that is told the distortion, and sees no test pixels), on the split the demo
training uses. A model that recognised distortions perfectly and ignored content would
reach about this SRCC; the training demo's test SRCC is to be read against it.

    python benchmarks/builtin_oracle.py [--seed 0] [--json PATH]

The dataset is built first if it is not cached (about a minute).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from pmtiqa_deploy.agreement import agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the split seed (pmtiqa-train --seed) [0]")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from pmtiqa_deploy.train.builtin import default_dir, make_builtin
    from pmtiqa_deploy.train.datasets import load_dataset
    from pmtiqa_deploy.train.trainer import split_dataset

    root = make_builtin(default_dir(), progress=True)
    dataset = load_dataset("builtin", root)
    split = split_dataset(dataset, args.seed)
    with open(root / "metrics.csv", newline="") as handle:
        kind = {root / row["path"]: (row["distortion"], int(row["level"])) for row in csv.DictReader(handle)}

    def part(indices) -> list:
        return [dataset.items[i] for i in indices]

    seen: dict[tuple[str, int], list[float]] = defaultdict(list)
    for item in part(split.train):
        seen[kind[item.path]].append(item.score)
    table = {key: float(np.mean(scores)) for key, scores in seen.items()}

    report: dict = {"benchmark": "builtin_oracle", "dataset": str(root), "seed": args.seed,
                    "train_photos": sorted({i.reference for i in part(split.train)})}
    for name in ("val", "test"):
        items = part(getattr(split, name))
        truth = np.array([i.score for i in items])
        guess = np.array([table[kind[i.path]] for i in items])
        photos = sorted({i.reference for i in items})
        report[name] = {"pooled": agreement(guess, truth).to_dict(), "photos": {
            p: agreement(guess[mask], truth[mask]).to_dict()
            for p in photos for mask in [np.array([i.reference == p for i in items])]}}

    print(f"oracle: mean training-photo pseudo-MOS of the same distortion and level (seed {args.seed})")
    print(f"{'part':<6} {'photo':<24} {'images':>6} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7}")
    for name in ("val", "test"):
        rows = [("all", report[name]["pooled"]), *report[name]["photos"].items()]
        for photo, c in rows:
            print(f"{name:<6} {photo:<24} {c['count']:>6} {c['srcc']:>7.4f} {c['plcc']:>7.4f} {c['krcc']:>7.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
