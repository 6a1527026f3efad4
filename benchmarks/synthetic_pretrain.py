"""An experiment toward the demo's quality target: a ResNet-18 pretrained offline, on
synthetic content, to name the built-in dataset's distortions, as a stand-in for the
ImageNet weights these machines cannot download.

    python benchmarks/synthetic_pretrain.py --weights PATH [--steps 420] [--json PATH]
    python benchmarks/train_demo.py -- --backbone-weights PATH --epochs 4 --lr-step 3

A demo network from scratch sees five photographs and learns their contents instead of
their distortions (benchmarks/RESULTS.md). Here it first sees content that is none of the
built-in photographs: dead-leaves images (occluding discs and ellipses with power-law
radii, the classic model of natural-image statistics) and scikit-image's grey photographs
(camera, coins, moon, brick, grass, gravel, text, page, clock, cell, microaneurysms, left
out of the built-in dataset because they have no colour), tinted with two random colours.
Each content is distorted with one of the built-in dataset's ten distortions at one of
its five levels, or left pristine, and the network names which of the 51 it was (the
synthetic pretraining of DB-CNN's S-CNN, Zhang et al. 2018). Crops are cut and transformed
as the demo's training crops are (`patches.random_crop`, `patches.transform_crop`: any
flip or quarter turn, any channel order). The weights are saved as a
torchvision-format state dict, which `pmtiqa-train --backbone-weights PATH` loads.

Deterministic for a seed (content i is drawn from default_rng([seed, i]); steps, not
seconds, bound the training). It prints the accuracy on a held-out synthetic set and
writes a JSON report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from pmtiqa_deploy.train.builtin import DISTORTIONS, distort
from pmtiqa_deploy.train.patches import random_crop, transform_crop

PATCH = 96
CONTENT = 2 * PATCH
GREY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel", "text", "page", "clock", "cell",
               "microaneurysms")
CLASSES = len(DISTORTIONS) * 5 + 1  # type x level, and pristine last


def dead_leaves(rng: np.random.Generator, size: int = CONTENT) -> np.ndarray:
    """Occluding discs and ellipses, radii with density ~ r^-3, colours around a palette."""
    base = rng.uniform(30, 220, 3)
    image = np.empty((size, size, 3), np.float32)
    image[:] = base
    count = int(rng.integers(1200, 2500))
    low, high = 2.0, size / 1.5
    radii = (low ** -2 - rng.random(count) * (low ** -2 - high ** -2)) ** -0.5
    for r in radii:
        colour = np.clip(base * rng.uniform(0.2, 1.4) + rng.normal(0, 35, 3), 0, 255).tolist()
        if rng.random() < 0.1:
            base = rng.uniform(30, 220, 3)
        cx, cy = (int(v) for v in rng.uniform(-r, size + r, 2))
        if rng.random() < 0.3:
            axes = (max(1, int(r)), max(1, int(r * rng.uniform(0.2, 1.0))))
            cv2.ellipse(image, (cx, cy), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            cv2.circle(image, (cx, cy), max(1, int(r)), colour, -1, cv2.LINE_AA)
    if rng.random() < 0.5:  # fine texture
        image += rng.normal(0, rng.uniform(0, 6), image.shape).astype(np.float32)
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    if rng.random() < 0.5:  # optics
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    return np.clip(image, 0, 255).astype(np.uint8)


_GREY: list[np.ndarray] = []


def grey_photos() -> list[np.ndarray]:
    if not _GREY:
        import skimage.data

        for name in GREY_PHOTOS:
            g = np.asarray(getattr(skimage.data, name)())
            if g.dtype != np.uint8:
                g = (255 * (g.astype(np.float64) / g.max())).astype(np.uint8)
            _GREY.append(g)
    return _GREY


def tinted_grey(rng: np.random.Generator, size: int = CONTENT) -> np.ndarray:
    """A window of a grey photograph, zoomed out up to 2x, mapped between two colours."""
    photos = grey_photos()
    grey = photos[int(rng.integers(len(photos)))]
    scale = rng.uniform(0.5, 1.0)
    if min(grey.shape) * scale >= size:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    if min(grey.shape) < size:
        grey = cv2.resize(grey, (max(grey.shape[1], size), max(grey.shape[0], size)))
    h, w = grey.shape
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    t = grey[y:y + size, x:x + size, None].astype(np.float32) / 255.0
    dark, light = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return np.clip(dark * (1 - t) + light * t, 0, 255).astype(np.uint8)


def example(seed: int, index: int, crops: int = 2) -> tuple[list[np.ndarray], int]:
    """Content `index`: its class and `crops` transformed patches of the distorted content."""
    rng = np.random.default_rng([seed, index])
    content = dead_leaves(rng) if rng.random() < 0.6 else tinted_grey(rng)
    label = int(rng.integers(0, CLASSES))
    image = content if label == CLASSES - 1 else distort(content, DISTORTIONS[label // 5], label % 5 + 1, rng)
    patches = []
    for _ in range(crops):
        patch = random_crop(image, rng.random(), rng.random(), PATCH)
        patches.append(np.ascontiguousarray(transform_crop(patch, int(rng.integers(8)), int(rng.integers(6)))))
    return patches, label


def _example(job: tuple[int, int]) -> tuple[list[np.ndarray], int]:
    return example(*job)


def make_set(seed: int, first: int, count: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """2 * count patches and labels of contents first..first+count-1."""
    from pmtiqa_deploy.progress import progress_bar

    x = np.empty((2 * count, PATCH, PATCH, 3), np.uint8)
    y = np.empty(2 * count, np.int64)
    with Pool(workers) as pool:
        jobs = [(seed, first + i) for i in range(count)]
        done = pool.imap(_example, jobs, chunksize=32)
        for i, (patches, label) in enumerate(progress_bar(done, total=count, desc="synthetic content", unit="image")):
            x[2 * i:2 * i + 2] = patches
            y[2 * i:2 * i + 2] = label
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="write the backbone state dict here (.pth)")
    parser.add_argument("--images", type=int, default=6000, help="synthetic training contents (2 patches each)")
    parser.add_argument("--steps", type=int, default=420, help="optimizer steps of 32 patches")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()

    import torch
    import torchvision
    from torch import nn

    from pmtiqa_deploy.preprocess import normalize
    from pmtiqa_deploy.spec import PreprocessSpec

    spec = PreprocessSpec(crop_size=PATCH)

    started = time.perf_counter()
    x, y = make_set(args.seed, 0, args.images, workers=2)
    held_x, held_y = make_set(args.seed, 10 ** 6, 500, workers=2)
    generated = time.perf_counter() - started

    torch.manual_seed(args.seed)
    net = torchvision.models.resnet18(weights=None, num_classes=CLASSES)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=1e-4)
    order = np.random.default_rng([args.seed, 1]).integers(0, len(y), (args.steps, 32))
    log = []
    net.train()
    train_started = time.perf_counter()
    for step, batch in enumerate(order, 1):
        inputs = torch.from_numpy(normalize(x[batch], spec))
        logits = net(inputs)
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            log.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - train_started})
            print(f"step {step}/{args.steps}: loss {loss.item():.3f}", flush=True)
    trained = time.perf_counter() - train_started

    net.eval()
    with torch.no_grad():
        predicted = torch.cat([net(torch.from_numpy(normalize(held_x[i:i + 100], spec))).argmax(1)
                               for i in range(0, len(held_y), 100)]).numpy()
    exact = float(np.mean(predicted == held_y))
    same_type = float(np.mean(predicted // 5 == held_y // 5))
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, args.weights)

    report = {"benchmark": "synthetic_pretrain", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "seed": args.seed, "images": args.images, "patches": int(len(y)), "steps": args.steps, "lr": args.lr,
              "generate_seconds": generated, "train_seconds": trained,
              "held_out_patches": int(len(held_y)), "held_out_accuracy": exact,
              "held_out_type_accuracy": same_type, "chance": 1 / CLASSES, "log": log,
              "weights": str(args.weights), "torch_threads": torch.get_num_threads()}
    print(f"\n{'generate s':>10} {'train s':>8} {'patches':>8} {'steps':>6} {'accuracy':>9} {'type acc':>9}")
    print(f"{generated:>10.0f} {trained:>8.0f} {len(y):>8} {args.steps:>6} {exact:>9.3f} {same_type:>9.3f}")
    print(f"(chance {1 / CLASSES:.3f} of {CLASSES} classes; weights: {args.weights})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
