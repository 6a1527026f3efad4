"""What the processor can do, beside what the model did: the machine's single-precision
GEMM rate at a given thread count, and the model's arithmetic per crop.

The ceiling is the best FP32 matrix multiply available in this process, measured in the
benchmark's own rounds (interleaved with the backends, at the same thread count, so load
on a shared machine lowers both alike):
- ONNX Runtime's MatMul (MLAS, its own thread pool; what its convolutions run on), on a
  one-node graph;
- NumPy's matmul (its BLAS, threads set with threadpoolctl). Which kernel OpenBLAS picks
  matters: OPENBLAS_CORETYPE forcing an older core type halved it on an AVX-512 machine,
  so the environment variable is recorded with the figures.
Each probe multiplies two `GEMM_SIZE` square matrices. A model's fraction of the ceiling
is its achieved GFLOP/s (FLOPs per crop x crops/s) over the ceiling's; INT8 and FP16 rows
are compared with the same FP32 ceiling, so an INT8 row can exceed 1.

FLOPs are counted from the ONNX graph (model.onnx, batch fixed to one image, shapes by
ONNX shape inference): 2 x multiply-adds of every Conv, Gemm and MatMul. Everything else
(pooling, additions, activations) is under 1% for these networks and is not counted.
Needs the `onnx` package (bench and export extras); without it the figures are absent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GEMM_SIZE = 1536


@dataclass
class GemmProbe:
    """One timed GEMM: `name`, and a callable that runs one multiply."""

    name: str
    run: Callable[[], Any]
    flops: float

    def time_once(self) -> float:
        """GFLOP/s of one multiply."""
        start = time.perf_counter()
        self.run()
        return self.flops / (time.perf_counter() - start) / 1e9


def gemm_probes(threads: int, size: int = GEMM_SIZE) -> tuple[list[GemmProbe], list[str]]:
    """The GEMM probes available here at `threads` threads, and notes on those that are not."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size ** 3
    probes, notes = [], []
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        notes.append("numpy GEMM not measured: threadpoolctl is not installed (bench extra), so "
                     "its BLAS thread count cannot be set")
    else:
        def numpy_gemm() -> Any:
            with threadpool_limits(limits=threads, user_api="blas"):
                return a @ b
        probes.append(GemmProbe("numpy", numpy_gemm, flops))
    session = _ort_matmul(size, b, threads, notes)
    if session is not None:
        probes.append(GemmProbe("onnxruntime", lambda: session.run(None, {"a": a}), flops))
    for probe in probes:  # first calls allocate and spin up thread pools
        probe.run()
    return probes, notes


def _ort_matmul(size: int, b: np.ndarray, threads: int, notes: list[str]) -> Any:
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        notes.append(f"ONNX Runtime GEMM not measured: {exc.name} is not installed")
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def blas_environment() -> dict[str, str]:
    """Environment variables that change which BLAS kernel or how many threads run."""
    names = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return {name: os.environ[name] for name in names if name in os.environ}


def cpu_flags() -> list[str]:
    """The CPU's vector extensions that matter here (from /proc/cpuinfo; empty elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in have]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def flops_per_crop(onnx_path: str | os.PathLike, crops: int) -> float | None:
    """FLOPs of one crop (module docstring), or None without the onnx package."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    proto = onnx.load(str(Path(onnx_path)))
    for value in proto.graph.input:  # one image per batch, so every shape is known
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(proto).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.input, *inferred.output, *inferred.value_info]}
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    total = 0.0
    for node in proto.graph.node:
        if node.op_type == "Conv":
            out, weight = shapes.get(node.output[0]), shapes.get(node.input[1])
            if out and weight:
                total += 2.0 * float(np.prod(out)) * float(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                transposed = any(x.name == "transA" and x.i for x in node.attribute)
                inner = a[-2] if transposed and node.op_type == "Gemm" else a[-1]
                total += 2.0 * float(np.prod(out)) * inner
    return total / crops if total else None
