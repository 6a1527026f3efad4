"""PMT-IQA (Pan et al., arXiv 2301.01182) as the authors released it.

A torchvision ResNet gives four stage outputs. The multi-scale (MS) module turns each
into a 28-d vector (1x1 conv, 7x7/7 average pooling that keeps a coarse grid, flatten,
linear) and concatenates them into h(x). The progressive multi-task (PMT) module puts a
shared trunk on h(x), then a regression head (the score) and a K-level classification
head (the easy task). `features` and `heads` are separate so export can name the four
scale outputs and their concatenation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from pmtiqa_deploy.errors import CheckpointError

# Output channels of layer1..layer4 for each supported backbone.
STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


@dataclass(frozen=True)
class ModelConfig:
    # resnet50 is the paper's; resnet18/34 trade accuracy for speed in light deployments.
    backbone: str = "resnet50"
    # Length of each scale's vector; the released model uses 28 (4 x 28 = 112-d h(x)).
    scale_dim: int = 28
    # Hidden width of the shared trunk's second layer (112 -> 112 -> 14 in the release).
    trunk_dim: int = 14
    # K, the number of coarse quality levels of the easy task (10 in the release).
    num_levels: int = 10
    # The branch convs shrink channels by this factor (256->16, 512->32, 1024->64).
    branch_reduction: int = 16
    # Kernel and stride of the branch average pooling; with 224 input it leaves grids of
    # 8x8, 4x4, 2x2 and 1x1, which is what ties the model to 224-pixel patches.
    pool: int = 7
    # Input patch side; the linear layers' sizes follow from it.
    crop_size: int = 224

    def __post_init__(self) -> None:
        if self.backbone not in STAGE_CHANNELS:
            raise ValueError(f"backbone must be one of {sorted(STAGE_CHANNELS)}, got {self.backbone!r}")
        if self.num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {self.num_levels}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise CheckpointError(f"model config has unknown key(s) {sorted(unknown)}")
        return cls(**data)


class ScaleBranch(nn.Module):
    """One stage of the MS module: [1x1 conv] -> avg pool (grid) -> flatten -> linear."""

    def __init__(self, channels: int, reduced: int | None, grid: int, out_dim: int, pool: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, reduced, 1, bias=False) if reduced else nn.Identity()
        self.pool = nn.AvgPool2d(pool, stride=pool)
        self.fc = nn.Linear((reduced or channels) * grid * grid, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class PMTIQA(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        resnet = getattr(torchvision.models, config.backbone)(weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4

        channels = STAGE_CHANNELS[config.backbone]
        side = config.crop_size // 4  # layer1's spatial size; each later stage halves it
        branches = []
        for stage, c in enumerate(channels):
            grid = (side >> stage) // config.pool
            reduced = None if stage == 3 else c // config.branch_reduction
            branches.append(ScaleBranch(c, reduced, grid, config.scale_dim, config.pool))
        self.branches = nn.ModuleList(branches)

        h = 4 * config.scale_dim
        self.trunk = nn.Sequential(
            nn.Linear(h, h), nn.LeakyReLU(), nn.Linear(h, config.trunk_dim), nn.LeakyReLU()
        )
        self.regressor = nn.Linear(config.trunk_dim, 1)
        self.classifier = nn.Sequential(
            nn.Linear(config.trunk_dim, config.trunk_dim), nn.LeakyReLU(),
            nn.Linear(config.trunk_dim, config.num_levels),
        )
        for module in [*self.branches.modules(), *self.trunk, self.regressor, *self.classifier]:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def stages(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's four stage outputs for a [B, 3, 224, 224] normalised batch."""
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return x1, x2, x3, self.layer4(x3)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(ms1, ms2, ms3, ms4, ms_concat): the four scale vectors and h(x)."""
        scales = tuple(branch(s) for branch, s in zip(self.branches, self.stages(x)))
        return (*scales, torch.cat(scales, dim=1))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [B], level logits [B, K]) from h(x)."""
        t = self.trunk(h)
        return self.regressor(t).squeeze(1), self.classifier(t)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(x)[-1])

    def backbone_modules(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _torchvision_key(key: str) -> str:
    """Map our backbone parameter names to torchvision's (stem.0 -> conv1, stem.1 -> bn1)."""
    return key.replace("stem.0.", "conv1.", 1).replace("stem.1.", "bn1.", 1)


def load_backbone_weights(model: PMTIQA, source: str | Path) -> str:
    """Initialise the backbone from ImageNet weights.

    `source` is "imagenet" (torchvision's download, when the network allows), "random"
    (keep the random init), or a path to a torchvision-format state dict (.pth/.pt via
    torch.load with weights_only, or .safetensors). Returns a description for the log.
    """
    name = model.config.backbone
    if str(source) == "random":
        return "random initialisation"
    if str(source) == "imagenet":
        weights_enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            state = weights_enum.get_state_dict(progress=False)
        except Exception as exc:  # URLError, SSL errors, HTTP errors: all mean "offline"
            raise CheckpointError(
                f"could not download torchvision's ImageNet weights for {name} ({exc}). "
                f"On an offline machine pass --backbone-weights PATH (a torchvision-format "
                f"{name} state dict, .pth or .safetensors), or --backbone-weights random to "
                "train from scratch"
            ) from None
        described = f"torchvision {weights_enum}"
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(
                f"backbone weights file {path} does not exist; pass a torchvision-format {name} "
                "state dict, 'imagenet' to download torchvision's, or 'random'"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        described = str(path)
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(("stem.", "layer"))}
    mapped = {k: state.get(_torchvision_key(k)) for k in ours}
    missing = [k for k, v in mapped.items() if v is None]
    wrong = [k for k, v in mapped.items() if v is not None and v.shape != ours[k].shape]
    # A deeper ResNet's dict holds every key of a shallower one: extra blocks betray it.
    known = {_torchvision_key(k) for k in ours}
    extra = sorted(k for k in state if k not in known and not k.startswith("fc."))
    if missing or wrong or extra:
        raise CheckpointError(
            f"{described} is not a torchvision {name} state dict: {len(missing)} missing, "
            f"{len(wrong)} mis-shaped and {len(extra)} unexpected backbone tensors "
            f"(first: {(missing + wrong + extra)[0]})"
        )
    model.load_state_dict(mapped, strict=False)
    return described


def build_model(config: ModelConfig, backbone_weights: str | Path) -> PMTIQA:
    """A new model; `backbone_weights` has no default so random init is always asked for."""
    model = PMTIQA(config)
    load_backbone_weights(model, backbone_weights)
    return model
