"""Training and test patches, cut from the reference preprocessing.

Every image goes through `pmtiqa_deploy.preprocess` exactly as the exported model's
runtime will see it: `decode_image`, `resize_image` (the dataset's resize policy) and
`normalize`. Training differs only in *where* the crops are (random positions) and in
label-preserving transforms of each crop (`AUGMENTS`: the paper's random horizontal flips,
or for small datasets any of the eight flips and quarter turns, optionally with the RGB
channels in any order); testing uses the fixed grid of `crops_uint8`, the very crops the
exported model and the runtime score.

Randomness is a pure function of (seed, epoch): the epoch's plan (which image, where,
which transform, in which order) is drawn from `numpy.random.default_rng([seed, epoch])`,
so a resumed run, a run with data-loading workers and every data-parallel process see
the same patches in the same order, whatever happened before. The sample of grid crops
that BatchNorm recalibration uses (`grid_sample`) is drawn once per seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize, resize_image
from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec


class ImageStore:
    """The decoded and resized (uint8 RGB) images of a list of files.

    Decoding a PNG or JPEG costs more than a training step's crop, so each image is
    decoded once and kept in memory while the total stays under `cache_bytes`; images
    beyond the budget (large datasets) are decoded again whenever they are needed.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], spec: PreprocessSpec,
                 cache_bytes: int = 2 << 30):
        self.paths = list(paths)
        self.spec = spec
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[int, np.ndarray] = {}
        self._used = 0

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """Image `index` after decoding and the spec's resize."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image = resize_image(decode_image(self.paths[index]), self.spec)
        if self._used + image.nbytes <= self.cache_bytes:
            image.setflags(write=False)
            self._cache[index] = image
            self._used += image.nbytes
        return image

    def warm(self, indices: Sequence[int], progress: bool = True) -> None:
        """Decode (and cache, within the budget) the given images up front, with a bar."""
        from pmtiqa_deploy.progress import progress_bar

        todo = [i for i in indices if i not in self._cache]
        for i in progress_bar(todo, desc="decode images", unit="image", enabled=progress and bool(todo)):
            self.image(i)
            if self._used >= self.cache_bytes:
                break

    def test_crops(self, index: int) -> np.ndarray:
        """The fixed crop grid of image `index`: [N, size, size, 3] uint8, exactly
        `crops_uint8(decode_image(path), spec)` (the resize is idempotent on an image
        that already has the spec's size)."""
        return crops_uint8(self.image(index), self.spec)


# What a training crop may undergo, each choice equally likely:
# - "flip": mirrored left-right or not (the paper's augmentation);
# - "dihedral": any of the 8 symmetries of the square (flips and quarter turns);
# - "dihedral+channels": those, and the RGB channels in any of their 6 orders.
# All of them keep the label of the synthetic distortions: blur, noise, blocking, ringing,
# banding, contrast and chroma loss look the same turned or recoloured. They matter when a
# network learns from a handful of contents (the built-in demo), where orientation and
# colour are otherwise cues to *which photograph* a crop shows, and so to its typical score.
AUGMENTS = ("flip", "dihedral", "dihedral+channels")
_CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@dataclass(frozen=True)
class CropPlan:
    """One epoch's training patches, in training order: patch k is cut from
    `image[k]` at fractional position (`fy[k]`, `fx[k]`), then transformed by symmetry
    `symmetry[k]` (see `transform_crop`) with its channels in order `channels[k]`."""

    image: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    symmetry: np.ndarray
    channels: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])


def epoch_plan(num_images: int, crops_per_image: int, seed: int, epoch: int,
               augment: str = "flip") -> CropPlan:
    """M random crops of each of `num_images` images, shuffled; depends only on
    (seed, epoch, augment)."""
    if num_images < 1 or crops_per_image < 1:
        raise ValueError("an epoch needs at least one image and one crop per image")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    count = num_images * crops_per_image
    image = np.repeat(np.arange(num_images), crops_per_image)
    fy, fx = rng.random(count), rng.random(count)
    symmetry = rng.integers(0, 2 if augment == "flip" else 8, count)
    channels = rng.integers(0, 6, count) if augment == "dihedral+channels" else np.zeros(count, np.int64)
    order = rng.permutation(count)
    return CropPlan(image[order], fy[order], fx[order], symmetry[order], channels[order])


def grid_sample(num_images: int, crops_per_image: int, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` distinct (image, grid crop) pairs of `num_images` images with
    `crops_per_image` fixed test-grid crops each (all of them, shuffled, when there are
    fewer), drawn once per seed: the patches BatchNorm recalibration runs over, the same
    at every epoch so that epochs are compared on equal terms."""
    total = num_images * crops_per_image
    if count <= 0 or total == 0:
        return []
    order = np.random.default_rng([int(seed), 0, 1]).permutation(total)[:count]
    return [(int(k) // crops_per_image, int(k) % crops_per_image) for k in order]


def random_crop(image: np.ndarray, fy: float, fx: float, size: int) -> np.ndarray:
    """The size x size window at fractional position (fy, fx) of the free space. Every
    position 0..H-size (and 0..W-size) is equally likely."""
    height, width = image.shape[:2]
    y = min(int(fy * (height - size + 1)), height - size)
    x = min(int(fx * (width - size + 1)), width - size)
    return image[y:y + size, x:x + size]


def transform_crop(crop: np.ndarray, symmetry: int, channels: int = 0) -> np.ndarray:
    """`crop` (H x W x 3) under symmetry 0..7 of the square (bit 0 mirrors left-right,
    bit 1 mirrors top-bottom, bit 2 transposes; 0 is the identity, 1 the paper's flip)
    with its channels in order `channels` (0..5; 0 keeps RGB)."""
    if symmetry & 1:
        crop = crop[:, ::-1]
    if symmetry & 2:
        crop = crop[::-1]
    if symmetry & 4:
        crop = crop.transpose(1, 0, 2)
    if channels:
        crop = crop[..., _CHANNEL_ORDERS[channels]]
    return crop


class PatchSet(torch.utils.data.Dataset):
    """Map-style dataset over one epoch's plan: patch k -> (normalised [3, H, W] float32,
    score, quality level). `images[i]` is the store index of the plan's image i."""

    def __init__(self, store: ImageStore, images: Sequence[int], scores: Sequence[float],
                 score_spec: ScoreSpec, plan: CropPlan):
        self.store = store
        self.images = list(images)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.levels = np.asarray(score_spec.level(self.scores), dtype=np.int64)
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = int(self.plan.image[k])
        crop = random_crop(self.store.image(self.images[i]), float(self.plan.fy[k]),
                           float(self.plan.fx[k]), self.store.spec.crop_size)
        crop = transform_crop(crop, int(self.plan.symmetry[k]), int(self.plan.channels[k]))
        x = normalize(np.ascontiguousarray(crop)[None], self.store.spec)[0]
        return torch.from_numpy(x), torch.tensor(self.scores[i]), torch.tensor(self.levels[i])


def shard_batches(count: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This process's share of each global batch of `batch_size` consecutive patches.

    The last incomplete batch is dropped (BatchNorm needs company, and every step then
    has the same size). Process `rank` of `world` takes every world-th patch of each
    batch, so together the processes cover exactly the single-process batches.
    """
    if batch_size < world:
        raise ValueError(f"batch size {batch_size} is smaller than the {world} training processes")
    steps = count // batch_size
    return [list(range(s * batch_size + rank, (s + 1) * batch_size, world)) for s in range(steps)]
