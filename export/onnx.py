"""Checkpoint -> FP32 ONNX graph, and reading an ONNX file back against its spec.

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`). torch 2.14's dynamo
exporter also gives a clean graph, but only at opset 18 or newer (its conversion down to
17 fails on ReduceMean), and opset 18 moves ReduceMean's axes from an attribute to an
input, which OpenCV 4.6's DNN importer (the native library's) does not read. The
TorchScript exporter writes opset 13..20 directly, folds BatchNorm into the convolutions,
and keeps the output names it is given.

After export the graph is tidied so it holds only plain standard operators: Constant
nodes become initializers, Identity nodes (deduplicated biases) are bypassed, a Squeeze
that only feeds a Reshape is dropped, unused initializers go, the concat node is named
`ms_concat`, and the outputs get their final shapes. The four scale vectors keep the
value names ms1..ms4 and the concat's output is `ms_concat` whether or not they are
exposed as debug outputs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pmtiqa_deploy.backends.contract import TensorInfo, check_io
from pmtiqa_deploy.errors import ExportError, SpecError
from pmtiqa_deploy.export.graph import (
    CONCAT_NAME, DEBUG_NAMES, INPUT_NAME, OUTPUT_NAMES, ExportGraph)
from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec

DEFAULT_OPSET = 17
OPSETS = range(13, 21)  # what the TorchScript exporter writes; 17 is what OpenCV 4.6 reads


def onnx_from_model(model, preprocess: PreprocessSpec, input_spec: InputSpec,
                    path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                    debug_outputs: bool = False) -> Path:
    """Export a loaded PMT-IQA model (eval mode, CPU) to an FP32 ONNX file at `path`."""
    import torch

    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose {OPSETS.start}..{OPSETS.stop - 1} "
                          f"({DEFAULT_OPSET} is what OpenCV 4.6's DNN module reads)")
    path = Path(path)
    graph = ExportGraph(model, preprocess, input_spec).eval()
    names = (*OUTPUT_NAMES, *DEBUG_NAMES)
    dynamic = {INPUT_NAME: {0: "B"}, **{n: {0: "B"} for n in OUTPUT_NAMES},
               **{n: {0: "B*N"} for n in DEBUG_NAMES}}
    raw = path.with_name(f".{path.name}.raw")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation; the choice is deliberate.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(graph, (graph.example_input(),), str(raw), dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME], output_names=list(names),
                              dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load(str(raw))
    except Exception as exc:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        raw.unlink(missing_ok=True)
    tidy_graph(proto, num_levels=model.config.num_levels, debug_outputs=debug_outputs)
    proto.producer_name = "pmtiqa-deploy"
    proto.doc_string = ("PMT-IQA quality model: images [B, N crops, ...] -> score [B] (mean of the "
                        "crop scores), level_probs [B, K]; see model.json beside this file")
    check_standard(proto)
    onnx.save(proto, str(path))
    return path


def onnx_from_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, *,
                         input_spec: InputSpec = InputSpec(), crop_count: int | None = None,
                         opset: int = DEFAULT_OPSET, debug_outputs: bool = False) -> Path:
    """Load a checkpoint directory and export its model (see `onnx_from_model`)."""
    import dataclasses

    from pmtiqa_deploy.train.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    preprocess = info.preprocess
    if crop_count is not None:
        preprocess = dataclasses.replace(preprocess, crop_count=crop_count)
    return onnx_from_model(model, preprocess, input_spec, path, opset=opset,
                           debug_outputs=debug_outputs)


def tidy_graph(proto: onnx.ModelProto, *, num_levels: int, debug_outputs: bool) -> None:
    """The clean-ups listed in the module docstring, in place."""
    graph = proto.graph
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next(a for a in node.attribute if a.name == "value")
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value.t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs]:
        _rename_uses(graph, node.output[0], node.input[0])
        graph.node.remove(node)
    for node in [n for n in graph.node if n.op_type in ("Squeeze", "Unsqueeze")]:
        users = consumers(graph, node.output[0])
        if node.output[0] not in outputs and users and all(
                u.op_type == "Reshape" and list(u.input).index(node.output[0]) == 0 for u in users):
            _rename_uses(graph, node.output[0], node.input[0])
            graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    concat = [n for n in graph.node if n.op_type == "Concat" and list(n.output) == [CONCAT_NAME]]
    if len(concat) != 1:
        raise ExportError(f"the exported graph has no single Concat producing {CONCAT_NAME!r}; "
                          "the model's features() changed shape")
    concat[0].name = CONCAT_NAME
    if not debug_outputs:
        for out in [o for o in graph.output if o.name in DEBUG_NAMES]:
            graph.output.remove(out)
    shapes: dict[str, list[str | int]] = {"score": ["B"], "level_probs": ["B", num_levels]}
    for out in graph.output:
        dims = shapes.get(out.name)
        if dims is None:
            dims = ["B*N", out.type.tensor_type.shape.dim[1].dim_value]
        out.type.tensor_type.shape.Clear()
        for d in dims:
            dim = out.type.tensor_type.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    graph.value_info.extend(inferred.graph.value_info)


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def consumers(graph: onnx.GraphProto, value: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if value in n.input]


def producer(graph: onnx.GraphProto, value: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if value in n.output), None)


def op_domains(proto: onnx.ModelProto) -> set[str]:
    """The operator domains a graph uses ("" is the standard ONNX domain)."""
    return {n.domain for n in proto.graph.node}


def check_standard(proto: onnx.ModelProto) -> None:
    """onnx.checker (full check, with shape inference) and standard operators only."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {exc}") from None
    domains = op_domains(proto) - {"", "ai.onnx"}
    if domains:
        raise ExportError(f"the exported graph uses non-standard operator domains {sorted(domains)}")


def read_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX file; a truncated or corrupt file is a SpecError saying so."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path} is missing; re-export the model with pmtiqa-export")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        raise SpecError(f"{path} is not a complete, valid ONNX model ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); it was truncated or corrupted: re-export the model"
                        ) from None
    return proto


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim)
    return TensorInfo(value.name, dtype, dims)


def onnx_io(proto: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers excluded) and outputs as TensorInfo."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [_tensor_info(v) for v in proto.graph.input if v.name not in inits]
    return inputs, [_tensor_info(v) for v in proto.graph.output]


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def check_onnx_against_spec(path: str | os.PathLike, spec: ModelSpec) -> onnx.ModelProto:
    """Read an ONNX file and check that its input and outputs (names, dtypes, shapes) and
    its opset are those the spec describes; SpecError names what differs."""
    proto = read_onnx(path)
    inputs, outputs = onnx_io(proto)
    check_io(spec, inputs, outputs, str(path))
    listed = [a for a in spec.artifacts if a.format == "onnx" and a.file == Path(path).name]
    if listed and listed[0].opset is not None and listed[0].opset != opset_of(proto):
        raise SpecError(f"{path} is opset {opset_of(proto)} but the spec says {listed[0].opset}: "
                        "re-export so the file and model.json are written together")
    return proto


def initializer_arrays(proto: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Named initializers as NumPy arrays (for tests and inspection)."""
    wanted = set(names)
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name in wanted}
