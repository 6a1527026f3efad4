"""Fixtures for the serving tests: the server-side Python environment, a tiny model exported
with `pmtiqa-export --triton-repo` (the CPU/test network variant), and its input files.

The server side runs in an environment of its own (nvidia-pytriton needs numpy<2):
$PMTIQA_TRITON_PYTHON, else .venv-triton/bin/python in the repository, which README's test
command makes with scripts/triton_env.sh. Without it the server tests skip with the reason
printed; in CI (CI=true), where README's command makes it, its absence fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from served import write_inputs, write_photos

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def triton_install():
    """The tritonserver of nvidia-pytriton in the server-side environment."""
    from pmtiqa_deploy.triton.server import TritonInstall

    python = Path(os.environ.get("PMTIQA_TRITON_PYTHON") or REPO / ".venv-triton" / "bin" / "python")
    if not python.is_file():
        message = (f"no server-side Python environment (nvidia-pytriton, numpy<2) at {python}: "
                   "make it with `bash scripts/triton_env.sh` or set PMTIQA_TRITON_PYTHON")
        if IN_CI:
            pytest.fail(message + " (CI=true: README's test command makes it)")
        pytest.skip(message)
    return TritonInstall.find(python)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("serving-photos"))


@pytest.fixture(scope="session")
def exported(tmp_path_factory, photos) -> tuple[Path, Path]:
    """(model_dir, repository): a resnet18 PMT-IQA on 64-pixel crops, 2 crops, batch 1..8,
    exported by `pmtiqa-export ... --triton-repo REPO --triton-network python`."""
    pytest.importorskip("torch", reason="the export extra (torch) builds the test model")
    pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) builds the test model")
    from click.testing import CliRunner

    from pmtiqa_deploy.export.cli import export_command
    from served import make_checkpoint

    root = tmp_path_factory.mktemp("serving-export")
    checkpoint = make_checkpoint(root / "checkpoint", photos)
    model, repository = root / "model", root / "repository"
    result = CliRunner().invoke(export_command, [
        str(checkpoint), "-o", str(model), "--no-engine", "--no-fp16", "--parity-images", str(photos),
        "--batch-opt", "4", "--batch-max", "8", "--threads", "2",
        "--triton-repo", str(repository), "--triton-network", "python"])
    assert result.exit_code == 0, result.output
    return model, repository


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, photos) -> list[Path]:
    return write_inputs(tmp_path_factory.mktemp("serving-inputs"), photos)
