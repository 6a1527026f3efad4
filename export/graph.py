"""The module that is exported: PMT-IQA wrapped so one graph scores whole images.

`ExportGraph` takes the crops of a batch of images and returns one score per image:

    images [B, N, 3, H, W] float (normalised)   or   [B, N, H, W, 3] uint8 RGB
      -> Cast to float32 (uint8 and float16 inputs)
      -> Reshape to B*N crops: [-1, 3, H, W], or [-1, H, W, 3] then (uint8 only) Sub mean*255,
         Mul 1/(std*255), Transpose to channels-first (constant shapes: the batch stays dynamic)
      -> backbone, the four scale branches ms1..ms4, Concat -> ms_concat, heads
      -> score [B] = mean over the N crops of the regression head (the score spec's units)
      -> level_probs [B, K] = mean over the N crops of the softmax of the level logits

The in-graph normalisation performs the very float32 operations of
`pmtiqa_deploy.preprocess.normalize` in the same order with the same constants, so a
uint8 graph sees bit-identical crops to a float graph fed by the reference preprocessing.

Every reshape uses constant shapes with a -1 batch, so the graph needs no Shape/Gather
arithmetic (which OpenCV's DNN importer and TensorRT both handle worse than constants).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pmtiqa_deploy.spec import InputSpec, OutputSpec, PreprocessSpec, default_outputs
from pmtiqa_deploy.train.model import PMTIQA

# Names of the four scale vectors and their concatenation h(x) in the exported graph.
SCALE_NAMES = ("ms1", "ms2", "ms3", "ms4")
CONCAT_NAME = "ms_concat"
DEBUG_NAMES = (*SCALE_NAMES, CONCAT_NAME)
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "level_probs")


def normalisation_constants(preprocess: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """(mean * 255, 1 / (std * 255)) in float32, computed exactly as the reference does."""
    mean = np.asarray(preprocess.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(preprocess.std, dtype=np.float32) * 255.0)
    return mean.astype(np.float32), scale.astype(np.float32)


class Normalize(nn.Module):
    """[B, N, H, W, 3] uint8 -> [B*N, 3, H, W] float32: (x - mean*255) * 1/(std*255)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, preprocess: PreprocessSpec):
        super().__init__()
        mean, scale = normalisation_constants(preprocess)
        self.size = preprocess.crop_size
        self.register_buffer("mean", torch.from_numpy(mean), persistent=False)
        self.register_buffer("scale", torch.from_numpy(scale), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # Cast first: TensorRT takes uint8 tensors only into a cast, not into a reshape.
        x = crops.to(torch.float32).reshape(-1, self.size, self.size, 3)
        return ((x - self.mean) * self.scale).permute(0, 3, 1, 2)


class ExportGraph(nn.Module):
    """PMT-IQA over the crops of a batch of images; see the module docstring.

    With `debug_outputs` the graph also returns ms1..ms4 [B*N, d] and ms_concat
    [B*N, 4d] (per crop, in crop order), so ONNX tools and TensorRT show the values
    at the concat; the export always names them, whether or not they are outputs.
    """

    def __init__(self, model: PMTIQA, preprocess: PreprocessSpec, input_spec: InputSpec):
        super().__init__()
        if preprocess.crop_size != model.config.crop_size:
            raise ValueError(f"the preprocessing cuts {preprocess.crop_size}-pixel crops but the "
                             f"model takes {model.config.crop_size}")
        self.model = model.eval()
        self.crops = preprocess.crop_count
        self.size = preprocess.crop_size
        self.levels = model.config.num_levels
        self.input_dtype = input_spec.dtype
        self.normalize = Normalize(preprocess) if input_spec.normalize_in_graph else None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = self.size
        if self.normalize is not None:
            x = self.normalize(images)
        else:
            if self.input_dtype != "float32":
                images = images.to(torch.float32)
            x = images.reshape(-1, 3, size, size)
        *scales, h = self.model.features(x)
        score, logits = self.model.heads(h)
        score = score.reshape(-1, self.crops).mean(dim=1)
        probs = torch.softmax(logits, dim=-1).reshape(-1, self.crops, self.levels).mean(dim=1)
        return (score, probs, *scales, h)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input of the graph's dtype and layout, for tracing."""
        generator = torch.Generator().manual_seed(0)
        if self.input_dtype == "uint8":
            shape = (batch, self.crops, self.size, self.size, 3)
            return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        x = torch.randn((batch, self.crops, 3, self.size, self.size), generator=generator)
        return x.to(getattr(torch, self.input_dtype))


def graph_outputs(num_levels: int, scale_dim: int, debug_outputs: bool) -> tuple[OutputSpec, ...]:
    """The outputs the spec lists: score and level_probs, plus the debug values if asked."""
    outputs = default_outputs(num_levels)
    if not debug_outputs:
        return outputs
    debug = tuple(OutputSpec(name, "float32", ("B*N", scale_dim),
                             f"scale {name[-1]} vector of each crop (debug output)")
                  for name in SCALE_NAMES)
    concat = OutputSpec(CONCAT_NAME, "float32", ("B*N", 4 * scale_dim),
                        "h(x), the concatenation of ms1..ms4, of each crop (debug output)")
    return (*outputs, *debug, concat)
