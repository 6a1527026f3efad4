"""Dataset readers: the public IQA datasets in their shipped layouts, the generic CSV
manifest, and the built-in dataset. Every reader returns a `Dataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pmtiqa_deploy.spec import ScoreSpec


@dataclass(frozen=True)
class Item:
    """One labelled image. `reference` names its source content (for content-disjoint
    splits); `split` is the dataset's own split label when it ships one."""

    path: Path
    score: float
    reference: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    items: tuple[Item, ...]
    score: ScoreSpec
    # Resize policy before cropping (PMT-IQA.md): "none", or "fixed" with width/height.
    resize: str = "none"
    width: int | None = None
    height: int | None = None
