"""Dependencies point one way (STYLE.md habit 1): every runtime module imports, and every
console script's --help runs, with torch absent from sys.modules. Each check runs in a
fresh interpreter so nothing imported by other tests can hide (or fake) an import.

The runtime is every module under pmtiqa_deploy except pmtiqa_deploy.train.* and
pmtiqa_deploy.export.* (installed from train/ and export/) and the torch backend, whose
library is torch by design (habit 4: the backend table imports it only when asked for).
A module whose optional library (onnxruntime, TensorRT, cuda-python) is not installed is
skipped with the reason; any other import failure fails."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

TORCH_BY_DESIGN = {"pmtiqa_deploy.backends.torch"}
# triton_python_backend_utils exists only inside Triton's Python-backend stub.
OPTIONAL_LIBRARIES = {"onnxruntime", "tensorrt", "tensorrt_lean", "cuda", "cuda.bindings",
                      "tritonclient", "triton_python_backend_utils"}
SCRIPTS = {"pmtiqa-train", "pmtiqa-data", "pmtiqa-export", "pmtiqa-score", "pmtiqa-bench", "pmtiqa-serve"}


def _package_dir() -> Path:
    spec = importlib.util.find_spec("pmtiqa_deploy")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0])


def runtime_modules() -> list[str]:
    """Module names from the files of the runtime package (nothing is imported to list them)."""
    root = _package_dir()
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[0] in ("train", "export") or "__pycache__" in parts:
            continue
        name = ".".join(("pmtiqa_deploy",) + parts).removesuffix(".__init__")
        if name not in TORCH_BY_DESIGN:
            names.append(name)
    return names


def console_scripts() -> dict[str, str]:
    """name -> "module:function" from pyproject.toml (else the installed metadata)."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        import tomllib

        return dict(tomllib.loads(pyproject.read_text())["project"]["scripts"])
    except (ImportError, FileNotFoundError):
        from importlib.metadata import entry_points

        return {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name in SCRIPTS}


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


IMPORT = """
import json, sys
try:
    import {module}
    error = None
except ImportError as exc:
    error = [exc.name or "", str(exc)]
print(json.dumps({{"error": error, "torch": "torch" in sys.modules}}))
"""


def test_the_module_list_is_the_runtime():
    modules = runtime_modules()
    assert {"pmtiqa_deploy", "pmtiqa_deploy.spec", "pmtiqa_deploy.preprocess", "pmtiqa_deploy.score",
            "pmtiqa_deploy.bench", "pmtiqa_deploy.cli", "pmtiqa_deploy.backends.null"} <= set(modules)
    assert not any(m.startswith(("pmtiqa_deploy.train", "pmtiqa_deploy.export")) for m in modules)


@pytest.mark.parametrize("module", runtime_modules())
def test_runtime_module_imports_without_torch(module):
    result = _run(IMPORT.format(module=module))
    if result["error"]:
        missing, message = result["error"]
        if missing.split(".")[0] in {m.split(".")[0] for m in OPTIONAL_LIBRARIES}:
            pytest.skip(f"{module} needs {missing}, not installed here ({message})")
        pytest.fail(f"importing {module} failed: {message}")
    assert not result["torch"], f"importing {module} imported torch"


HELP = """
import importlib, io, json, sys, contextlib
module, attr = {target!r}.split(":")
command = getattr(importlib.import_module(module), attr)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        command([{flag!r}], prog_name={name!r})
        code = 0
    except SystemExit as exc:
        code = exc.code
print(json.dumps({{"code": code, "help": out.getvalue(), "torch": "torch" in sys.modules}}))
"""


def test_every_console_script_is_listed():
    assert set(console_scripts()) >= SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help_runs_without_torch(name):
    target = console_scripts()[name]
    module = target.split(":")[0]
    if importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None and importlib.util.find_spec(module) is None:
        pytest.fail(f"{name} points at {target}, but {module} does not exist")
    for flag in ("--help", "-h"):
        result = _run(HELP.format(target=target, name=name, flag=flag))
        assert result["code"] == 0, f"{name} {flag}: {result['help']}"
        assert f"Usage: {name}" in result["help"]
        assert not result["torch"], f"{name} {flag} imported torch"
