"""The TensorRT builder code, checked where it cannot run: mypy against tensorrt-stubs
(10.x), every runtime-side name against the real 11.x bindings (tensorrt_lean), the
engine-inspector precision check on inspector JSON, and the no-TensorRT path.

The engine build itself needs TensorRT's builder and a GPU; it is not executed here.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pmtiqa_deploy.errors import BackendUnavailable, ExportError
from pmtiqa_deploy.export import tensorrt as trt_export
from pmtiqa_deploy.export.tensorrt import (
    EngineOptions, check_conv_precision, conv_layer_precisions, engine_from_onnx, tensorrt_missing)

SOURCE = Path(trt_export.__file__)

# Names that exist only in the full builder package, never in the lean runtime.
BUILDER_ONLY = {"Builder", "OnnxParser", "NetworkDefinitionCreationFlag"}
# Variables in export/tensorrt.py holding runtime-side objects -> their lean class.
RUNTIME_OBJECTS = {"engine": "ICudaEngine", "runtime": "Runtime", "profile": "IOptimizationProfile"}


def _conv(name, fmt, kind="CaskConvolution", weights="Half"):
    return {"Name": name, "LayerType": kind, "ParameterType": "Convolution",
            "Inputs": [{"Name": "in", "Format/Datatype": fmt}],
            "Outputs": [{"Name": "out", "Location": "Device", "Dimensions": [-1, 64, 112, 112],
                         "Format/Datatype": fmt}],
            "Weights": {"Type": weights, "Count": 9408}, "TacticName": "sm90_xmma_fprop"}


def _info(*layers):
    return json.dumps({"Layers": list(layers), "Bindings": ["images", "score", "level_probs"]})


FP16 = "Channel major FP16 format where channel % 8 == 0"
FP32 = "Row major linear FP32"
REFORMAT = {"Name": "Reformatting CopyNode for Input Tensor 0", "LayerType": "Reformat",
            "Outputs": [{"Format/Datatype": "Row major linear FP16 format"}]}


def test_inspector_json_gives_each_convolutions_precision():
    info = _info(REFORMAT, _conv("/stem/stem.0/Conv + /stem/stem.2/Relu", FP16),
                 _conv("/layer1/layer1.0/conv1/Conv",
                       "Two wide channel vectorized row major FP16 format", kind="CaskGemmConvolution"),
                 _conv("/layer4/layer4.1/conv2/Conv", FP32, weights="Float"),
                 {"Name": "ms_concat", "LayerType": "Concatenation",
                  "Outputs": [{"Format/Datatype": FP16}]})
    convs = conv_layer_precisions(info)
    assert convs == {"/stem/stem.0/Conv + /stem/stem.2/Relu": "FP16",
                     "/layer1/layer1.0/conv1/Conv": "FP16", "/layer4/layer4.1/conv2/Conv": "FP32"}


# TensorRT 11.x: layer tensors carry "DataType" and "Format" apart, and "I/O Tensors"
# replaces "Bindings" ("Migrating IEngineInspector Usage from TensorRT 10.x to 11.x", whose
# I/O Tensors example gives "DataType": "Float" and "Format": "Row major linear FP32
# format (kLINEAR)"; layer tensors are written the same way).
def _conv11(name, data_type, fmt, kind="CaskConvolution"):
    return {"Name": name, "LayerType": kind, "ParameterType": "Convolution",
            "Inputs": [{"Name": "in", "Location": "Device", "Dimensions": [-1, 3, 224, 224],
                        "DataType": data_type, "Format": fmt}],
            "Outputs": [{"Name": "out", "Location": "Device", "Dimensions": [-1, 64, 112, 112],
                         "DataType": data_type, "Format": fmt}],
            "Weights": {"Type": data_type, "Count": 9408}, "TacticName": "sm90_xmma_fprop"}


def _info11(*layers):
    io = [{"Name": n, "IOMode": mode, "DataType": "Float", "Dimensions": [-1, 2, 3, 224, 224],
           "Location": "Device", "IsShapeInferenceIO": False}
          for n, mode in (("images", "Input"), ("score", "Output"), ("level_probs", "Output"))]
    return json.dumps({"Layers": list(layers), "I/O Tensors": io})


def test_inspector_json_of_tensorrt_11_gives_each_convolutions_precision():
    info = _info11(_conv11("/stem/stem.0/Conv + /stem/stem.2/Relu", "Half",
                           "Channel major FP16 format where channel % 8 == 0 (kHWC8)"),
                   _conv11("/layer4/layer4.1/conv2/Conv", "Float", "Row major linear FP32 format (kLINEAR)"),
                   _conv11("/layer3/layer3.0/conv1/Conv", "BFloat16", "Row major linear BF16 format (kLINEAR)"),
                   {"Name": "ms_concat", "LayerType": "Concatenation",
                    "Outputs": [{"DataType": "Half", "Format": "Row major linear FP16 format (kLINEAR)"}]})
    assert conv_layer_precisions(info) == {"/stem/stem.0/Conv + /stem/stem.2/Relu": "FP16",
                                           "/layer4/layer4.1/conv2/Conv": "FP32",
                                           "/layer3/layer3.0/conv1/Conv": "BF16"}


HEAD = "/heads/trunk/trunk.0/Gemm"


def test_fp32_heads_lowered_to_convolutions_are_allowed_exactly_when_declared():
    convs = {"/stem/stem.0/Conv + /stem/stem.2/Relu": "FP16", "/layer1/layer1.0/conv1/Conv": "FP16",
             f"{HEAD} + /heads/trunk/trunk.1/LeakyRelu": "FP32"}
    declared = {HEAD, "/heads/trunk/trunk.1/LeakyRelu", "ms_concat/to_fp32"}
    check_conv_precision(convs, "fp16", "model.engine", declared)
    with pytest.raises(ExportError, match="1 of 3 convolutions do not run in FP16.*trunk.0/Gemm"):
        check_conv_precision(convs, "fp16", "model.engine")          # nothing declared FP32
    with pytest.raises(ExportError, match="1 of 3"):  # a backbone convolution in FP32, never
        check_conv_precision({**convs, "/layer1/layer1.0/conv1/Conv": "FP32"}, "fp16", "model.engine",
                             declared)
    # A layer fusing a backbone node with a declared one is backbone: it must be FP16.
    mixed = {"/layer4/layer4.1/conv2/Conv + " + HEAD: "FP32", "/stem/stem.0/Conv": "FP16"}
    with pytest.raises(ExportError, match="do not run in FP16"):
        check_conv_precision(mixed, "fp16", "model.engine", declared)
    with pytest.raises(ExportError, match="no convolution of the backbone"):
        check_conv_precision({HEAD: "FP32"}, "fp16", "model.engine", declared)


def test_the_fp16_graph_declares_its_heads_fp32_and_its_backbone_not(exported):
    from pmtiqa_deploy.export.tensorrt import fp32_node_names

    names = fp32_node_names(exported.directory / "model.fp16.onnx")
    assert any("Gemm" in n or "MatMul" in n for n in names), sorted(names)[:10]
    import onnx

    graph = onnx.load(str(exported.directory / "model.fp16.onnx")).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert convs and not set(convs) & names


def test_an_engine_is_not_called_fp16_unless_every_convolution_is():
    check_conv_precision({"a": "FP16", "b": "FP16"}, "fp16", "model.engine")
    with pytest.raises(ExportError, match="1 of 2 convolutions do not run in FP16"):
        check_conv_precision({"a": "FP16", "b": "FP32"}, "fp16", "model.engine")
    with pytest.raises(ExportError, match="no convolution of the backbone"):
        check_conv_precision({}, "fp16", "model.engine")
    check_conv_precision({"a": "FP32"}, "fp32", "model.engine")


def test_weights_type_is_the_fallback_and_names_only_json_is_refused():
    layer = _conv("c", "")
    layer["Outputs"] = []
    assert conv_layer_precisions(_info(layer)) == {"c": "FP16"}
    with pytest.raises(ExportError, match="DETAILED"):
        conv_layer_precisions(json.dumps({"Layers": ["conv1", "relu1"]}))
    with pytest.raises(ExportError, match="JSON"):
        conv_layer_precisions("not json")


def test_engine_options_reject_contradictions():
    with pytest.raises(ExportError, match="--version-compatible"):
        EngineOptions(exclude_lean_runtime=True)
    with pytest.raises(ExportError, match="workspace"):
        EngineOptions(workspace_mib=0)


def test_without_the_builder_the_reason_and_the_fix_are_given(tmp_path):
    missing = tensorrt_missing()
    if missing is None:
        pytest.skip("TensorRT's builder and a GPU are present here")
    assert "pip install 'pmtiqa-deploy[tensorrt]'" in missing
    print(f"engine build unavailable here, as expected: {missing}")
    from pmtiqa_deploy.spec import ModelSpec, ScoreSpec

    spec = ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10))
    with pytest.raises(BackendUnavailable, match="pmtiqa-deploy"):
        engine_from_onnx(tmp_path / "model.fp16.onnx", tmp_path / "model.engine", spec, "fp16")
    assert not (tmp_path / "model.engine").exists()


def _trt_chains(tree: ast.AST) -> set[tuple[str, ...]]:
    """Every attribute chain rooted at the name `trt`, e.g. ("BuilderFlag", "VERSION_COMPATIBLE")."""
    chains = set()
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "trt" and parts:
            chains.add(tuple(reversed(parts)))
    return chains


def test_runtime_side_names_exist_in_the_real_tensorrt_11_bindings():
    lean = pytest.importorskip("tensorrt_lean",
                               reason="tensorrt-lean (the 11.x runtime) is not installed")
    if not hasattr(lean, "Runtime"):
        pytest.skip("tensorrt_lean imported but has no Runtime (incomplete install)")
    tree = ast.parse(SOURCE.read_text())
    chains = {c for c in _trt_chains(tree) if c[0] not in BUILDER_ONLY}
    assert ("BuilderFlag", "VERSION_COMPATIBLE") in chains
    assert ("ProfilingVerbosity", "DETAILED") in chains
    missing = []
    for chain in sorted(chains):
        obj = lean
        for part in chain:
            # Prefixes of longer chains (trt.ILogger) are classes; full chains are members.
            if not hasattr(obj, part):
                missing.append(".".join(chain))
                break
            obj = getattr(obj, part)
    used = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in RUNTIME_OBJECTS):
            used.setdefault(node.value.id, set()).add(node.attr)
    assert {"engine", "runtime"} <= set(used)
    for var, attrs in used.items():
        cls = getattr(lean, RUNTIME_OBJECTS[var])
        missing += [f"{RUNTIME_OBJECTS[var]}.{a}" for a in sorted(attrs) if not hasattr(cls, a)]
    assert not missing, f"names used by export/tensorrt.py that TensorRT 11 lacks: {missing}"
    # The 11.x fact the strongly typed build exists for:
    assert not hasattr(lean.BuilderFlag, "FP16")


def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _repair_stub_line(line: str) -> str:
    """tensorrt-stubs 10.x has a few signatures that are not valid Python (a parameter
    named `in`, a parameter without default after defaulted ones); mend those lines only."""
    def parses(text):
        try:
            ast.parse(text.strip() + " ...")
            return True
        except SyntaxError:
            return False

    if parses(line):
        return line
    line = re.sub(r"([(,]\s*)in:", r"\1in_:", line)
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if parses(line) or not match:
        return line
    params, seen = [], False
    for param in _split_params(match.group(2)):
        seen = seen or "=" in param
        if seen and "=" not in param and ":" in param and not param.strip().startswith("*"):
            param += " = ..."
        params.append(param)
    return match.group(1) + ",".join(params) + match.group(3)


def test_builder_code_type_checks_against_tensorrt_stubs(tmp_path):
    """mypy on export/tensorrt.py and export/tensorrt_int8.py with the TensorRT 10.x stubs:
    every builder call, enum and argument type the builds use exists with that signature in
    the 10.x API."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (dev extra)")
    stubs_pkg = importlib.util.find_spec("tensorrt_stubs")
    if stubs_pkg is None or stubs_pkg.origin is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    site = Path(stubs_pkg.origin).parent.parent
    if not (site / "tensorrt" / "__init__.pyi").is_file():
        pytest.skip(f"tensorrt-stubs' .pyi files are not in {site}")
    # The stubs ship without py.typed beside them, so mypy skips them in site-packages;
    # a mended copy on MYPYPATH is read instead.
    stubs = tmp_path / "stubs"
    for package in ("tensorrt", "tensorrt_bindings"):
        for pyi in (site / package).glob("*.pyi"):
            target = stubs / package / pyi.name
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = pyi.read_text().split("\n")
            target.write_text("\n".join(_repair_stub_line(l) if l.lstrip().startswith("def ") else l
                                        for l in lines))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nfollow_imports = silent\n"
                      "[mypy-tensorrt_libs]\nignore_missing_imports = True\n"
                      "[mypy-cuda.*]\nignore_missing_imports = True\n"
                      # export/ installs as pmtiqa_deploy.export (package-dir), which mypy
                      # run on the file alone cannot resolve; its own modules are not under test
                      "[mypy-pmtiqa_deploy.export.*]\nignore_missing_imports = True\n")
    def mypy(*args):
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config),
             "--cache-dir", str(tmp_path / "cache"), *args],
            capture_output=True, text=True, env={"MYPYPATH": str(stubs), "PATH": ""}, timeout=300)

    sources = (SOURCE, SOURCE.with_name("tensorrt_int8.py"))  # the FP16/FP32 and the INT8 builds
    run = mypy("--no-error-summary", "--show-absolute-path", *map(str, sources))
    ours = [line for line in run.stdout.splitlines() if line.startswith(tuple(map(str, sources)))]
    assert not ours, "mypy finds errors in the TensorRT export code:\n" + "\n".join(ours)
    assert "error" not in run.stderr.lower(), run.stderr
    # The check really used the stubs: an unknown flag is caught.
    broken = tmp_path / "broken.py"
    broken.write_text("import tensorrt as trt\nflag = trt.BuilderFlag.NO_SUCH_FLAG\n")
    run = mypy(str(broken))
    assert "NO_SUCH_FLAG" in run.stdout
