"""FP32 ONNX graph -> INT8 QDQ ONNX graph (ONNX Runtime's static quantization), and the
calibration images it is calibrated on.

What is quantized: every convolution of the backbone and of the four scale branches, with
the additions, pools and activations between them (ONNX Runtime's QDQ format: each
quantized tensor passes through a QuantizeLinear/DequantizeLinear pair that its kernels
fuse). What stays float32, by node (recorded in the spec's `quantization.fp32_nodes`):
- everything from `ms_concat` on: the heads, the softmax and the means over crops (as in
  the FP16 graph; a few thousand weights, and the score itself must not be quantized);
- on uint8-input graphs, the in-graph normalisation before the first convolution;
- the branches' linear layers (Gemm), by operator type: under 0.1% of the arithmetic.

Two flavours from one recipe (`Flavour`):
- "cpu" (model.int8.onnx): uint8 activations with an asymmetric zero point, int8 weights
  symmetric per output channel. ONNX Runtime's CPU kernels run u8 x s8 products (VNNI's
  vpdpbusd where the CPU has it); int8 activations (quantize_static's default since 1.32)
  leave many convolutions in FP32 kernels and ran 0.9-1.2x FP32.
- "tensorrt": int8 activations and weights, both symmetric (zero point 0), biases left in
  float (no int32 DequantizeLinear): what TensorRT's explicit quantization accepts. It is
  the TensorRT INT8 engine's input (`export/tensorrt_int8.py`), written only where an
  engine is built.

Calibration (MinMax over every activation) runs the FP32 graph on crops of real images
cut by the reference preprocessing. By default they come from the checkpoint's training
data, never its validation or test content, stratified so that every kind of image is
seen: on the built-in dataset one image per distortion type and level (10 x 5), taken in
turn from the training photographs; on other datasets images spread evenly over the
training scores. A distortion missing from calibration cost 4-6 points on its images in
development runs. `--calibration-images DIR` replaces them with a folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pmtiqa_deploy.errors import DatasetError, ExportError
from pmtiqa_deploy.export.fp16 import fp32_nodes
from pmtiqa_deploy.export.graph import CONCAT_NAME
from pmtiqa_deploy.export.parity import image_files, load_crops, model_input
from pmtiqa_deploy.spec import ModelSpec, Quantization

DEFAULT_CALIBRATION_LIMIT = 50
DEFAULT_MIN_SRCC = 0.999
# Operator types quantized (ONNX Runtime's QDQ quantizer): the convolution stack.
QUANTIZED_OPS = ("Conv", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu")
CALIBRATION_BATCH = 4  # images per calibration run (memory: every activation is kept)


@dataclass(frozen=True)
class Flavour:
    """How activations are quantized: see the module docstring."""

    name: str
    activations: str  # "uint8" or "int8"
    symmetric_activations: bool
    quantize_bias: bool  # int32 biases (ONNX Runtime's integer kernels) or float ones

    def describe(self) -> tuple[str, str]:
        kind = "symmetric" if self.symmetric_activations else "asymmetric"
        return f"{self.activations} per-tensor {kind}", "int8 per-channel symmetric"


CPU = Flavour("cpu", "uint8", symmetric_activations=False, quantize_bias=True)
TENSORRT = Flavour("tensorrt", "int8", symmetric_activations=True, quantize_bias=False)


@dataclass(frozen=True)
class CalibrationSet:
    files: tuple[Path, ...]
    description: str


def calibration_set(training: dict, folder: str | os.PathLike | None = None,
                    limit: int = DEFAULT_CALIBRATION_LIMIT) -> CalibrationSet:
    """The calibration images: `folder` (sorted by name, spread over `limit`), else the
    checkpoint's training images, stratified (module docstring)."""
    if limit < 1:
        raise ValueError(f"the calibration image count must be at least 1, got {limit}")
    if folder is not None:
        files = image_files(folder)
        picked = [files[int(i * len(files) / limit)] for i in range(min(limit, len(files)))]
        return CalibrationSet(tuple(picked), f"{len(picked)} images of the folder {folder}")
    name, root = training.get("dataset"), training.get("root")
    if not name or not root:
        raise DatasetError("the checkpoint does not record its training data; pass "
                           "--calibration-images DIR (a folder of typical images)")
    from pmtiqa_deploy.train import datasets

    try:
        dataset = datasets.load_dataset(name, root)
    except DatasetError as exc:
        raise DatasetError(f"cannot read the checkpoint's training data for INT8 calibration "
                           f"({exc}); pass --calibration-images DIR") from None
    held_out = set(training.get("val_references", ())) | set(training.get("test_references", ()))
    items = [item for item in dataset.items if str(item.reference) not in held_out]
    if not items:
        raise DatasetError(f"the {name} dataset at {root} has no training images left for "
                           "calibration; pass --calibration-images DIR")
    if name == "builtin":
        files = _one_per_stratum(items, limit)
        strata = len({Path(p).stem for p in files})
        how = f"one per distortion type and level ({strata} strata)"
    else:
        ranked = sorted(items, key=lambda item: item.score)
        count = min(limit, len(ranked))
        files = [Path(ranked[int((i + 0.5) * len(ranked) / count)].path) for i in range(count)]
        how = "spread evenly over the training scores"
    sources = len({item.reference for item in items})
    return CalibrationSet(tuple(files), f"{len(files)} training images of {name} ({sources} "
                                        f"training references, {how})")


def _one_per_stratum(items: Sequence, limit: int) -> list[Path]:
    """Built-in images are <photo>/<distortion>_<level>.png: one image per stratum, the
    photographs taken in turn; more rounds of strata while `limit` allows."""
    strata: dict[str, list[Path]] = defaultdict(list)
    for item in sorted(items, key=lambda item: (str(item.reference), str(item.path))):
        strata[Path(item.path).stem].append(Path(item.path))
    if limit < len(strata):
        raise DatasetError(f"the built-in dataset has {len(strata)} distortion types and levels; "
                           f"calibrate on at least that many images (--calibration-limit), not {limit}")
    picked: list[Path] = []
    for round_ in range(max(len(v) for v in strata.values())):
        for k, key in enumerate(sorted(strata)):
            paths = strata[key]
            if len(picked) < limit and round_ < len(paths):
                picked.append(paths[(k + round_) % len(paths)])
    return picked


class CropReader:
    """ONNX Runtime's calibration data reader: the images' crops, in the graph's input
    dtype and layout, `CALIBRATION_BATCH` images at a time."""

    def __init__(self, files: Sequence[Path], spec: ModelSpec):
        self.spec = spec
        self.crops = load_crops(files, spec)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.crops):
            return None
        chunk = self.crops[self.position:self.position + CALIBRATION_BATCH]
        self.position += len(chunk)
        chunk += [chunk[0]] * max(0, self.spec.input.batch_min - len(chunk))
        return {self.spec.input.name: model_input(chunk, self.spec)}

    def rewind(self) -> None:
        self.position = 0


def fp32_node_names(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that stay float32 whatever their type (module docstring)."""
    keep = fp32_nodes(graph, CONCAT_NAME)
    unnamed = [i for i in keep if not graph.node[i].name]
    if unnamed:
        raise ExportError(f"{len(unnamed)} nodes of the graph have no name, so they cannot be kept "
                          "in FP32 during quantization; re-export the ONNX graph")
    return [graph.node[i].name for i in sorted(keep)]


def int8_from_onnx(source: str | os.PathLike, path: str | os.PathLike, spec: ModelSpec,
                   calibration: CalibrationSet, flavour: Flavour = CPU,
                   reader: CropReader | None = None) -> Quantization:
    """Write the INT8 QDQ graph of the FP32 graph `source` to `path`; return what the spec
    records about it. `reader` (rewound first) saves decoding the images again."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(source))
    excluded = fp32_node_names(proto.graph)
    reader = reader or CropReader(calibration.files, spec)
    reader.rewind()
    activation = QuantType.QUInt8 if flavour.activations == "uint8" else QuantType.QInt8
    try:
        quantize_static(
            str(source), str(path), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
            activation_type=activation, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": flavour.symmetric_activations,
                           "WeightSymmetric": True, "QuantizeBias": flavour.quantize_bias})
    except (ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"ONNX Runtime's static quantization of {source} failed: {exc}") from exc
    quantized = onnx.load(str(path))
    convs = [n for n in quantized.graph.node if n.op_type == "Conv"]
    fed = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    int8_convs = sum(1 for n in convs if n.input and n.input[0] in fed)
    if int8_convs == 0:
        raise ExportError(f"the quantized graph {path} has no convolution fed by a DequantizeLinear: "
                          "nothing was quantized")
    other = sorted({n.op_type for n in proto.graph.node if n.name not in excluded
                    and n.op_type not in QUANTIZED_OPS and n.op_type in ("Gemm", "MatMul")})
    activations, weights = flavour.describe()
    return Quantization(
        method="onnxruntime quantize_static, QDQ, MinMax calibration", activations=activations,
        weights=weights, calibration=calibration.description,
        calibration_images=len(calibration.files), quantized_convolutions=int8_convs,
        convolutions=len(convs), fp32_nodes=tuple(excluded), fp32_op_types=tuple(other))
