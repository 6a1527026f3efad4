"""FP32 ONNX graph -> FP16 ONNX graph, written with the onnx API.

What runs in float16: the backbone and the four scale branches up to and including the
concat (`ms_concat`), which is all the convolutions and over 99.9% of the arithmetic.
What stays float32:
- the heads after `ms_concat` (trunk, regression, classification, softmax, the means over
  crops): a few thousand weights, and float16 would quantise the score itself to steps of
  1/16 of a point near 100 and lose probability mass in the softmax;
- on uint8 graphs, the in-graph normalisation before the first convolution, so the cast
  and the subtraction of mean*255 happen at full precision as in the reference;
- the graph's input and outputs keep their types (float32 unless the export asked for a
  float16 or uint8 input), so callers feed the same arrays as to the FP32 graph.
Casts are inserted at every boundary and named `<value>/to_fp16` or `<value>/to_fp32`.

The result is what TensorRT builds as a strongly typed network (every tensor's type comes
from the graph), and what ONNX Runtime's CPU provider runs, so FP16 numerics are checked
in CI without a GPU. onnxruntime.transformers.float16 and onnxconverter-common offer a
generic converter; this one is written out because the precision boundary is a property
of this model (where the heads start) that reads better as graph structure than as a
list of node names to block.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmtiqa_deploy.errors import ExportError
from pmtiqa_deploy.export.graph import CONCAT_NAME
from pmtiqa_deploy.export.onnx import check_standard

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)


def fp16_from_onnx(source: str | os.PathLike, path: str | os.PathLike, *,
                   keep_fp32_after: str = CONCAT_NAME) -> Path:
    """Write the FP16 version of the FP32 graph `source` to `path` (see module docstring)."""
    proto = onnx.load(str(source))
    convert_to_fp16(proto, keep_fp32_after=keep_fp32_after)
    check_standard(proto)
    path = Path(path)
    onnx.save(proto, str(path))
    return path


def fp32_nodes(graph: onnx.GraphProto, keep_fp32_after: str) -> set[int]:
    """Indices of the nodes that stay float32: everything downstream of `keep_fp32_after`
    and, when the input is not floating point, everything before the first convolution."""
    keep: set[int] = set()
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(i)

    def walk(values: list[str], stop_at_conv: bool) -> None:
        while values:
            for i in readers.get(values.pop(), []):
                node = graph.node[i]
                if i in keep or (stop_at_conv and node.op_type == "Conv"):
                    continue
                keep.add(i)
                values.extend(node.output)

    if not any(n.output and keep_fp32_after in n.output for n in graph.node):
        raise ExportError(f"the graph has no value {keep_fp32_after!r} to start the float32 heads at")
    walk([keep_fp32_after], stop_at_conv=False)
    for value in graph.input:
        if value.type.tensor_type.elem_type not in (FLOAT, HALF):
            walk([value.name], stop_at_conv=True)
    return keep


def convert_to_fp16(proto: onnx.ModelProto, *, keep_fp32_after: str = CONCAT_NAME) -> None:
    """Convert in place; see the module docstring."""
    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.input, *inferred.output, *inferred.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    keep = fp32_nodes(graph, keep_fp32_after)
    precision = {i: (FLOAT if i in keep else HALF) for i in range(len(graph.node))}
    inits = {t.name: t for t in graph.initializer}

    # Float initializers: converted in place when only float16 nodes read them, copied
    # when both kinds do.
    users: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in inits and inits[name].data_type == FLOAT:
                users.setdefault(name, set()).add(precision[i])
    init_names: dict[tuple[str, int], str] = {}
    for name, kinds in users.items():
        init_names[(name, FLOAT)] = name
        if HALF in kinds:
            half = name if kinds == {HALF} else f"{name}/fp16"
            init_names[(name, HALF)] = half
            array = np.clip(numpy_helper.to_array(inits[name]), -_FP16_MAX, _FP16_MAX)
            tensor = numpy_helper.from_array(array.astype(np.float16), half)
            if half == name:
                inits[name].CopyFrom(tensor)
            else:
                graph.initializer.append(tensor)

    have = {v.name: v.type.tensor_type.elem_type for v in graph.input}  # what each value is now
    casts: dict[tuple[str, int], str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "to_fp16" if to == HALF else "to_fp32"
            casts[key] = f"{name}/{suffix}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to, name=casts[key]))
        return casts[key]

    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}  # outputs of casts that became no-ops -> their inputs
    for i, node in enumerate(graph.node):
        want = precision[i]
        for j, name in enumerate(node.input):
            name = node.input[j] = alias.get(name, name)
            if (name, want) in init_names:
                node.input[j] = init_names[(name, want)]
            elif have.get(name) in (FLOAT, HALF) and have[name] != want:
                node.input[j] = cast(name, want)
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i in (FLOAT, HALF):
                to.i = want
                if have.get(node.input[0]) == want and node.output[0] not in outputs:
                    alias[node.output[0]] = node.input[0]  # e.g. a float16 input's cast
                    continue
        if node.op_type == "Constant":
            _convert_constant(node, want)
        for name in node.output:
            kind = types.get(name)
            if kind is None:
                raise ExportError(f"cannot convert to FP16: the type of {name!r} is unknown")
            have[name] = want if kind in (FLOAT, HALF) else kind
        nodes.append(node)

    for out in graph.output:
        declared = out.type.tensor_type.elem_type
        if have.get(out.name) in (FLOAT, HALF) and have[out.name] != declared:
            internal = f"{out.name}_fp16"
            for node in nodes:
                node.output[:] = [internal if n == out.name else n for n in node.output]
                node.input[:] = [internal if n == out.name else n for n in node.input]
            nodes.append(helper.make_node("Cast", [internal], [out.name], to=declared,
                                          name=f"{out.name}/to_output"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    graph.value_info.extend(inferred.graph.value_info)


def _convert_constant(node: onnx.NodeProto, want: int) -> None:
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type in (FLOAT, HALF) and attr.t.data_type != want:
            array = numpy_helper.to_array(attr.t)
            dtype = np.float16 if want == HALF else np.float32
            attr.t.CopyFrom(numpy_helper.from_array(
                np.clip(array, -_FP16_MAX, _FP16_MAX).astype(dtype), attr.t.name))


def precision_summary(proto: onnx.ModelProto) -> dict[str, int]:
    """How many float initializers' elements are float16 and float32 (for reports/tests)."""
    counts = {"float16": 0, "float32": 0}
    for tensor in proto.graph.initializer:
        if tensor.data_type in (FLOAT, HALF):
            key = "float16" if tensor.data_type == HALF else "float32"
            counts[key] += int(np.prod(tensor.dims, dtype=np.int64))
    return counts
