"""ONNX -> TensorRT engine (a plain plan file), and what the engine turned out to be.

`engine_from_onnx` parses the FP16 (or FP32) graph into a strongly typed network, so
every tensor's precision comes from the graph and nothing is left to the builder's
choice, with one optimization profile over the spec's batch range, a workspace limit,
the timing cache loaded from and saved to a file, optionally a version-compatible plan
(for the lean runtime), and detailed profiling verbosity. After the build it
deserializes the plan, reads the engine inspector's JSON layer information, and refuses
to call an engine FP16 unless every convolution of the backbone runs in FP16; the only
layers allowed in FP32 are those the FP16 graph declares float32 (export/fp16.py: the
heads after ms_concat, which TensorRT may lower to Convolution layers).

The inspector's JSON differs between majors (TensorRT 11.x's "Migrating IEngineInspector
Usage from TensorRT 10.x to 11.x"): 10.x gives each layer tensor one "Format/Datatype"
string ("Channel major FP16 format where channel % 8 == 0"); 11.x gives "DataType"
("Half") and "Format" separately, as its "I/O Tensors" entries do, and replaces
"Bindings" by "I/O Tensors". Both are read.

TensorRT versions, explicitly:
- 10.x: `BuilderFlag.FP16` still exists but is deprecated and is ignored by strongly
  typed networks; the network is created with `NetworkDefinitionCreationFlag.STRONGLY_TYPED`
  (EXPLICIT_BATCH is the only mode and is not passed).
- 11.x: `BuilderFlag.FP16` is gone; FP16 engines come only from a strongly typed network
  over an FP16 graph. If 11.x drops the STRONGLY_TYPED flag because strong typing became
  the only mode, the network is created with no flags.
- Both: `set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, `ProfilingVerbosity.DETAILED`,
  `BuilderFlag.VERSION_COMPATIBLE` / `EXCLUDE_LEAN_RUNTIME`, `create_timing_cache`,
  `build_serialized_network`, `ICudaEngine.create_engine_inspector`, the named-tensor
  I/O API (`num_io_tensors`, `get_tensor_*`).

`tensorrt` is imported inside the functions: this module imports (and its plan
inspection helpers run) where TensorRT is absent, and the tensorrt-stubs package leaves
a bare namespace module called `tensorrt` that must not be mistaken for the builder.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pmtiqa_deploy.backends.contract import TensorInfo, check_io
from pmtiqa_deploy.errors import BackendUnavailable, ExportError
from pmtiqa_deploy.spec import ModelSpec, atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = ("on a machine with an NVIDIA GPU run: pip install 'pmtiqa-deploy[tensorrt]' "
                "(TensorRT 10.x or 11.x with its builder), then re-run pmtiqa-export; or pass "
                "--no-engine to export ONNX only")
DEFAULT_WORKSPACE_MIB = 4096

# TensorRT DataType member names -> NumPy dtype names (the spec's vocabulary).
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
           "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "BOOL": "bool"}
# Precision words in the inspector's format strings ("Channel major FP16 format where
# channel % 8 == 0", "Row major linear FP32"), its 11.x "DataType" values and its
# "Weights": {"Type": "Half"}.
_PRECISION_WORDS = re.compile(r"\b(FP32|FP16|BF16|BFloat16|FP8|FP4|INT8|Int8|INT4|Float|Half)\b")
_CANONICAL = {"Float": "FP32", "Half": "FP16", "Int8": "INT8", "BFloat16": "BF16"}


@dataclass(frozen=True)
class EngineOptions:
    """How to build. Batch range and input come from the spec."""

    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    def __post_init__(self) -> None:
        if self.workspace_mib < 1:
            raise ExportError(f"the workspace limit must be at least 1 MiB, got {self.workspace_mib}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ExportError("excluding the lean runtime only applies to version-compatible plans: "
                              "add --version-compatible or drop --exclude-lean-runtime")


@dataclass(frozen=True)
class EngineReport:
    """What was built: for the spec's artifact entry and the export's log."""

    path: Path
    precision: str
    tensorrt_version: str
    compute_capability: str
    version_compatible: bool
    layers: int
    conv_layers: dict[str, str] = field(default_factory=dict)  # layer name -> precision
    build_seconds: float = 0.0


def tensorrt_missing() -> str | None:
    """None when an engine can be built here; otherwise what is missing and how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        return f"TensorRT is not installed; {INSTALL_HINT}"
    if not hasattr(trt, "Builder"):
        return ("only TensorRT's type stubs or lean runtime are installed here, not the builder; "
                + INSTALL_HINT)
    major = _major(trt.__version__)
    if major not in SUPPORTED_MAJORS:
        return (f"TensorRT {trt.__version__} is installed; this exporter supports "
                f"{' and '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}; {INSTALL_HINT}")
    if gpu_compute_capability() is None:
        return ("no CUDA GPU is visible (cudaGetDeviceCount found none, or cuda-python is missing); "
                + INSTALL_HINT)
    return None


def _major(version: str) -> int:
    return int(version.split(".")[0])


def gpu_compute_capability(device: int = 0) -> str | None:
    """The compute capability ("9.0") of a CUDA device, or None without a GPU or driver."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count <= device:
        return None
    attr = cudart.cudaDeviceAttr
    err, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
    err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
    if err != cudart.cudaError_t.cudaSuccess or err2 != cudart.cudaError_t.cudaSuccess:
        return None
    return f"{major}.{minor}"


def network_flags(trt: Any) -> int:
    """Creation flags of a strongly typed network on this TensorRT version."""
    flags = trt.NetworkDefinitionCreationFlag
    if hasattr(flags, "STRONGLY_TYPED"):
        return 1 << int(flags.STRONGLY_TYPED)
    if _major(trt.__version__) >= 11:
        return 0  # strong typing is the only mode
    raise BackendUnavailable(f"TensorRT {trt.__version__} cannot build strongly typed networks; "
                             f"install TensorRT 10.x or 11.x: {INSTALL_HINT}")


def engine_from_onnx(onnx_path: str | os.PathLike, engine_path: str | os.PathLike,
                     spec: ModelSpec, precision: str,
                     options: EngineOptions = EngineOptions()) -> EngineReport:
    """Build the plan for `onnx_path` (an ONNX graph of `precision`, "fp16" or "fp32"),
    write it to `engine_path`, and check the engine's I/O and precision. Raises
    BackendUnavailable when TensorRT or a GPU is missing, ExportError when the build or a
    check fails."""
    missing = tensorrt_missing()
    if missing is not None:
        raise BackendUnavailable(missing)
    import tensorrt as trt

    started = time.perf_counter()
    logger = _CollectingLogger.create()
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if options.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    profile = builder.create_optimization_profile()
    shapes = [trt.Dims(list(spec.input_shape(b))) for b in
              (spec.input.batch_min, spec.input.batch_opt, spec.input.batch_max)]
    profile.set_shape(spec.input.name, shapes[0], shapes[1], shapes[2])
    config.add_optimization_profile(profile)
    cache_bytes = b""
    if options.timing_cache is not None and options.timing_cache.is_file():
        cache_bytes = options.timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, False):
        raise ExportError(f"TensorRT refused the timing cache {options.timing_cache}; delete it "
                          "(it was written by another TensorRT version or GPU) and re-run")

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path}: {logger.summary()}")
    plan_bytes = bytes(memoryview(plan))
    if options.timing_cache is not None:
        cache_out = config.get_timing_cache().serialize()
        atomic_write_bytes(options.timing_cache, bytes(memoryview(cache_out)))
    Path(engine_path).write_bytes(plan_bytes)

    runtime = trt.Runtime(logger)
    runtime.engine_host_code_allowed = options.version_compatible
    engine = runtime.deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise ExportError(f"the freshly built plan does not deserialize: {logger.summary()}")
    check_io(spec, *engine_io(engine), f"{engine_path} (TensorRT engine)")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    convs = conv_layer_precisions(info)
    fp32 = fp32_node_names(onnx_path) if precision == "fp16" else set()
    check_conv_precision(convs, precision, str(engine_path), fp32)
    return EngineReport(
        path=Path(engine_path), precision=precision, tensorrt_version=trt.__version__,
        compute_capability=gpu_compute_capability() or "unknown",
        version_compatible=options.version_compatible, layers=engine.num_layers,
        conv_layers=convs, build_seconds=time.perf_counter() - started)


def fp32_node_names(onnx_path: str | os.PathLike) -> set[str]:
    """Names of the nodes the FP16 graph keeps in float32 (its declared FP32 layers)."""
    import onnx

    from pmtiqa_deploy.export.fp16 import fp32_nodes
    from pmtiqa_deploy.export.graph import CONCAT_NAME

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {graph.node[i].name for i in fp32_nodes(graph, CONCAT_NAME)}


def engine_io(engine: tensorrt.ICudaEngine) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The engine's input and output tensors (dynamic sizes are -1)."""
    import tensorrt as trt

    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        shape = engine.get_tensor_shape(name)
        info = TensorInfo(name, _DTYPES.get(dtype.name, dtype.name),
                          tuple(int(shape[k]) for k in range(len(shape))))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    return inputs, outputs


class _CollectingLogger:
    """A TensorRT logger that keeps errors and warnings for the exception message."""

    @staticmethod
    def create() -> Any:
        import tensorrt as trt

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity <= trt.ILogger.Severity.WARNING:
                    self.messages.append(f"[{severity.name}] {msg}")

            def summary(self) -> str:
                return " | ".join(self.messages[-5:]) or "TensorRT logged no error"

        return Logger()


def _precision_of(text: str) -> str | None:
    found = _PRECISION_WORDS.search(text)
    return _CANONICAL.get(found.group(1), found.group(1)) if found else None


def _tensor_precision(tensor: Any) -> str | None:
    """A layer tensor's precision: 11.x "DataType", else the 10.x "Format/Datatype" (or an
    11.x "Format") string."""
    if not isinstance(tensor, dict):
        return None
    for key in ("DataType", "Format/Datatype", "Format"):
        found = _precision_of(str(tensor.get(key, "")))
        if found:
            return found
    return None


def conv_layer_precisions(engine_information: str) -> dict[str, str]:
    """Precision of every convolution in the inspector's JSON ("FP16", "FP32", ...), from
    TensorRT 10.x or 11.x (module docstring).

    A layer is a convolution when its LayerType or ParameterType says so (CaskConvolution,
    CaskGemmConvolution, Convolution...). Its precision is its output tensor's datatype,
    else its weights' type. Raises ExportError when the JSON lacks per-layer detail (an
    engine built without ProfilingVerbosity.DETAILED).
    """
    try:
        layers = json.loads(engine_information)["Layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ExportError(f"the engine inspector's output is not the expected JSON ({exc})") from None
    result: dict[str, str] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            raise ExportError("the engine inspector lists layer names only: the engine was not "
                              "built with ProfilingVerbosity.DETAILED, so its precision is unknown")
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
        if "Convolution" not in kind:
            continue
        found = [p for p in map(_tensor_precision, layer.get("Outputs", [])) if p]
        weights = layer.get("Weights", {})
        if not found and isinstance(weights, dict) and weights.get("Type"):
            found = [p for p in [_precision_of(str(weights["Type"]))] if p]
        result[str(layer.get("Name", f"layer {len(result)}"))] = found[0] if found else "unknown"
    return result


def declared_fp32(layer: str, fp32_nodes: Collection[str]) -> bool:
    """Whether a TensorRT layer comes only from nodes the graph declares float32. TensorRT
    names a fused layer after its nodes joined by " + "."""
    parts = [part.strip() for part in layer.split(" + ")]
    return bool(fp32_nodes) and all(part in fp32_nodes for part in parts)


def check_conv_precision(convs: dict[str, str], precision: str, where: str,
                         fp32_nodes: Collection[str] = ()) -> None:
    """Refuse an engine whose backbone convolutions do not all run in the claimed
    precision. Layers made only of `fp32_nodes` (the graph's declared float32 heads) may
    run in FP32 in an FP16 engine; no other may."""
    want = precision.upper()
    backbone = {n: p for n, p in convs.items() if not declared_fp32(n, fp32_nodes)}
    if not backbone:
        raise ExportError(f"{where}: the engine inspector shows no convolution of the backbone, so "
                          f"its {want} precision cannot be confirmed; the engine is not used")
    wrong = {name: p for name, p in backbone.items() if p != want}
    heads = {name: p for name, p in convs.items() if name not in backbone and p not in (want, "FP32")}
    wrong.update(heads)
    if wrong:
        sample = "; ".join(f"{n}: {p}" for n, p in list(wrong.items())[:3])
        raise ExportError(
            f"{where}: {len(wrong)} of {len(convs)} convolutions do not run in {want} ({sample}); "
            f"the engine is not called {want}. Check that the graph given to TensorRT is the "
            f"{precision} ONNX graph and that the network was created strongly typed")
