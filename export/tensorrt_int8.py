"""TensorRT explicit INT8: model.int8.engine from a symmetric INT8 QDQ graph.

TensorRT quantizes only where the graph says so (QuantizeLinear/DequantizeLinear pairs:
explicit quantization) and only symmetrically: every zero point must be 0 and int8. So the
engine is not built from model.int8.onnx (uint8 activations with zero points, what ONNX
Runtime's CPU kernels run fastest) but from the same recipe's "tensorrt" flavour
(`export/int8.py`: int8 activations and weights, symmetric, same calibration images, same
FP32 heads), written into the staging folder, checked here for what TensorRT's ONNX parser
accepts, built, and removed.

The build is `engine_from_onnx` with precision "int8": a strongly typed network (TensorRT
10.x with NetworkDefinitionCreationFlag.STRONGLY_TYPED; 11.x, where strong typing is the
only mode and BuilderFlag.INT8/FP16 no longer exist), in which the Q/DQ nodes alone decide
what runs in INT8: NVIDIA's guidance for explicit quantization is strong typing with no
precision flags, on both versions. The engine is refused unless the inspector shows every
convolution in INT8 (each quantized convolution feeds a QuantizeLinear, so TensorRT fuses
it and its output is INT8).

Not executed here: TensorRT's builder cannot be installed on the development machines
(see README). `check_tensorrt_qdq` runs everywhere and is tested on real quantized graphs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from pmtiqa_deploy.errors import ExportError
from pmtiqa_deploy.export.int8 import TENSORRT, CalibrationSet, int8_from_onnx
from pmtiqa_deploy.export.pipeline import ENGINE_INT8, ONNX_FP32
from pmtiqa_deploy.export.tensorrt import EngineOptions, EngineReport, engine_from_onnx
from pmtiqa_deploy.spec import Artifact, ModelSpec, sha256_file

QDQ_FOR_TENSORRT = "model.int8.tensorrt.onnx"  # staging only


def check_tensorrt_qdq(proto: onnx.ModelProto, where: str) -> int:
    """Refuse a QDQ graph TensorRT would reject or misread: a quantized type other than
    int8, or a non-zero zero point. Returns the number of QuantizeLinear nodes."""
    constants = {t.name: t for t in proto.graph.initializer}
    count = 0
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += node.op_type == "QuantizeLinear"
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: int8 and 0 by the ONNX default
        zero = constants.get(node.input[2])
        if zero is None:
            raise ExportError(f"{where}: {node.name} takes its zero point from a computed tensor; "
                              "TensorRT needs a constant 0")
        if zero.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zero.data_type)
            raise ExportError(f"{where}: {node.name} quantizes to {kind}; TensorRT's explicit "
                              "quantization takes INT8 only (use the 'tensorrt' flavour)")
        if np.any(numpy_helper.to_array(zero) != 0):
            raise ExportError(f"{where}: {node.name} has a non-zero zero point; TensorRT only "
                              "supports symmetric quantization")
    if count == 0:
        raise ExportError(f"{where} has no QuantizeLinear node: it is not a QDQ graph")
    return count


def int8_engine_from_qdq(qdq_path: str | os.PathLike, engine_path: str | os.PathLike,
                         spec: ModelSpec, options: EngineOptions = EngineOptions()) -> EngineReport:
    """Build the explicit-INT8 engine of a symmetric QDQ graph (module docstring)."""
    check_tensorrt_qdq(onnx.load(str(qdq_path)), str(qdq_path))
    return engine_from_onnx(qdq_path, engine_path, spec, "int8", options)


def int8_engine_artifact(staging: Path, spec: ModelSpec, calibration: CalibrationSet,
                         options: EngineOptions, log: Callable[[str], None]) -> Artifact:
    """Quantize model.onnx in the staging folder for TensorRT, build model.int8.engine from
    it, and return the engine's spec entry (the QDQ graph itself is not kept)."""
    qdq = staging / QDQ_FOR_TENSORRT
    log("quantizing for TensorRT (symmetric int8 activations and weights) and building the "
        "INT8 engine (this takes minutes)")
    try:
        quantization = int8_from_onnx(staging / ONNX_FP32, qdq, spec, calibration, TENSORRT)
        report = int8_engine_from_qdq(qdq, staging / ENGINE_INT8, spec, options)
    finally:
        qdq.unlink(missing_ok=True)
    log(f"INT8 engine: {report.layers} layers, {len(report.conv_layers)} convolutions all INT8, "
        f"TensorRT {report.tensorrt_version}, sm {report.compute_capability}")
    return Artifact(ENGINE_INT8, "tensorrt", "int8", sha256_file(staging / ENGINE_INT8),
                    tensorrt_version=report.tensorrt_version,
                    compute_capability=report.compute_capability,
                    version_compatible=report.version_compatible, quantization=quantization)
