"""PyTorch reference backend: the trained checkpoint itself, run with the exported graph's
semantics, so every other backend can be compared with it.

The exported graph takes the crops of a batch, [B, N, 3, H, W] normalised floats (or
[B, N, H, W, 3] uint8 with normalisation inside), runs the model on all B*N crops, and
averages over the N crops of each image: the scores, and the softmax of the level logits.
`CropAveraging` is that computation in PyTorch. Options: device "cpu" or "cuda",
precision "fp32" or "fp16" (CUDA only: the model and input in half), and cuda_graph
(capture one CUDA graph per batch size and replay it: the GPU baseline for the benchmark).
On CUDA it takes device input (Backend's protocol): GPU preprocessing writes the crops
into a persistent input tensor on torch's current stream, and `infer_device` runs the
model on it (through the graph captured on that very tensor with cuda_graph).

This is the only runtime module that imports torch; the backend table imports it only
when the "torch" backend is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.errors import BackendUnavailable, InputError, SpecError
from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec, sha256_file
from pmtiqa_deploy.train.checkpoint import WEIGHTS_FILE, load_checkpoint, read_checkpoint_info


class CropAveraging(nn.Module):
    """[B, N, ...] crops -> (score [B], level_probs [B, K]), as the exported graph computes."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, model: nn.Module, input_spec: InputSpec, preprocess: PreprocessSpec):
        super().__init__()
        self.model = model
        self.uint8_input = input_spec.dtype == "uint8"
        # The same float32 constants as pmtiqa_deploy.preprocess.normalize.
        mean = np.asarray(preprocess.mean, dtype=np.float32) * np.float32(255.0)
        scale = np.float32(1.0) / (np.asarray(preprocess.std, dtype=np.float32) * np.float32(255.0))
        self.register_buffer("mean", torch.from_numpy(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, crops = images.shape[0], images.shape[1]
        x = images.flatten(0, 1)
        if self.uint8_input:  # [B*N, H, W, 3] uint8 -> normalised [B*N, 3, H, W]
            x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.scale
        x = x.to(self.mean.dtype)
        score, logits = self.model(x)
        probs = torch.softmax(logits.float(), dim=-1)
        return (score.float().view(batch, crops).mean(dim=1),
                probs.view(batch, crops, -1).mean(dim=1))


def _checkpoint_dir(checkpoint: str | os.PathLike | None, spec: ModelSpec,
                    model_dir: Path | None) -> Path:
    if checkpoint is None:
        recorded = spec.producer.get("checkpoint")
        if not recorded:
            raise SpecError("the torch backend needs checkpoint=PATH: the checkpoint directory the "
                            "model was exported from (model.json does not record one)")
        path = Path(recorded)
        if not path.is_absolute() and model_dir is not None:
            path = model_dir / path
        if not path.is_dir():
            raise SpecError(f"model.json records checkpoint {recorded}, which is not a directory "
                            "here; pass checkpoint=PATH")
        return path
    return Path(checkpoint)


class TorchBackend(Backend):
    """The checkpoint in PyTorch. `model_dir` (model.json) may be None when `spec` is given;
    `TorchBackend.from_checkpoint` builds the spec from the checkpoint alone."""

    name = "torch"

    def __init__(self, model_dir: str | os.PathLike | None = None, spec: ModelSpec | None = None, *,
                 checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                 precision: str = "fp32", cuda_graph: bool = False):
        super().__init__(model_dir, spec)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        if device == "cpu" and (precision == "fp16" or cuda_graph):
            raise ValueError("the torch backend runs fp16 and CUDA graphs only with device='cuda'")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__} sees no CUDA device; use "
                                     "device='cpu' or install a CUDA build of torch")
        self.device, self.precision, self.cuda_graph = torch.device(device), precision, cuda_graph
        self.checkpoint = _checkpoint_dir(checkpoint, self.spec, self.model_dir)
        self._check_checkpoint()
        model, info = load_checkpoint(self.checkpoint, map_location="cpu")
        if info.config.crop_size != self.spec.preprocess.crop_size:
            raise SpecError(f"checkpoint {self.checkpoint} takes {info.config.crop_size}-pixel crops, "
                            f"the spec {self.spec.preprocess.crop_size}")
        if info.config.num_levels != self.spec.score.num_levels:
            raise SpecError(f"checkpoint {self.checkpoint} has {info.config.num_levels} levels, "
                            f"the spec {self.spec.score.num_levels}")
        graph = CropAveraging(model, self.spec.input, self.spec.preprocess).eval()
        if precision == "fp16":
            graph = graph.half()
        self.graph: CropAveraging | None = graph.to(self.device)
        self._graphs: dict[object, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.device_input = self.device.type == "cuda"
        self._device_in: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, input: InputSpec | None = None,
                        **options) -> TorchBackend:
        """A backend for a checkpoint that was never exported: the spec comes from its
        checkpoint.json (score and preprocessing) and `input` (default float32 BNCHW)."""
        info, document = read_checkpoint_info(checkpoint)
        spec = ModelSpec(score=info.score, preprocess=info.preprocess, input=input or InputSpec(),
                         backbone=info.config.backbone,
                         checkpoint_sha256=document["weights"]["sha256"],
                         producer={"checkpoint": str(Path(checkpoint).resolve())})
        return cls(None, spec, checkpoint=checkpoint, **options)

    def _check_checkpoint(self) -> None:
        """The checkpoint must be the one the spec was exported from (its weights' sha256)."""
        expected = self.spec.checkpoint_sha256
        weights = self.checkpoint / WEIGHTS_FILE
        if expected and weights.is_file() and sha256_file(weights) != expected:
            raise SpecError(f"{weights} is not the checkpoint model.json was exported from "
                            f"(sha256 differs from {expected[:12]}...); pass the right checkpoint")

    def _module(self) -> CropAveraging:
        if self.graph is None:
            raise RuntimeError(f"{self.name} backend for {self.checkpoint} is closed")
        return self.graph

    def _to_device(self, images: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if tensor.is_floating_point() and self.precision == "fp16":
            tensor = tensor.half()
        return tensor

    def _infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        module = self._module()
        with torch.inference_mode():
            if self.cuda_graph:
                score, probs = self._replay(module, images)
            else:
                score, probs = module(self._to_device(images))
            return {"score": score.float().cpu().numpy().astype(np.float32),
                    "level_probs": probs.float().cpu().numpy().astype(np.float32)}

    def _captured(self, key: object, module: CropAveraging,
                  static_in: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]:
        """The CUDA graph of `module` reading `static_in`, captured on first use of `key`."""
        if key not in self._graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN autotuning and lazy allocations
                    module(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = module(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def _replay(self, module: CropAveraging, images: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Run through the CUDA graph for this batch size, capturing it on first use."""
        batch = images.shape[0]
        if batch not in self._graphs:
            self._captured(batch, module, self._to_device(images))
        graph, static_in, static_out = self._graphs[batch]
        static_in.copy_(torch.from_numpy(np.ascontiguousarray(images)))  # converts and uploads
        graph.replay()
        return static_out

    # --- device input (CUDA only) --------------------------------------------------------

    @property
    def gpu_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    @property
    def stream(self) -> int:
        """torch's current CUDA stream, where the crops must be written."""
        return torch.cuda.current_stream(self.device).cuda_stream

    @property
    def input_slot_bytes(self) -> int:
        return int(np.prod(self.spec.input_shape(1)[1:])) * np.dtype(self.spec.input.dtype).itemsize

    def input_device_buffer(self, batch: int) -> int:
        """The address of the persistent input tensor (sized for the spec's largest batch)."""
        if not self.device_input:
            raise ValueError("the torch backend takes device input only with device='cuda'")
        low, high = self.spec.input.batch_min, self.spec.input.batch_max
        if not low <= batch <= high:
            raise InputError(f"{self.name}: batch {batch} is outside the model's range {low}..{high}")
        if self._device_in is None:
            dtype = getattr(torch, self.spec.input.dtype)
            self._device_in = torch.empty(self.spec.input_shape(self.spec.input.batch_max), dtype=dtype,
                                          device=self.device)
        return self._device_in.data_ptr()

    def infer_device(self, batch: int) -> dict[str, np.ndarray]:
        """Run on the crops written into the input tensor (on `stream`)."""
        module = self._module()
        if self._device_in is None:
            raise ValueError("call input_device_buffer (and write the crops) before infer_device")
        view = self._device_in[:batch]
        with torch.inference_mode():
            if self.cuda_graph:
                graph, _, (score, probs) = self._captured(("device", batch), module, view)
                graph.replay()
            else:
                score, probs = module(view)
            return {"score": score.float().cpu().numpy().astype(np.float32),
                    "level_probs": probs.float().cpu().numpy().astype(np.float32)}

    def close(self) -> None:
        self._graphs.clear()
        self._device_in = None
        self.graph = None
