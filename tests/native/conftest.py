"""Fixtures for the native library's tests; the helpers and the policy they follow (skip
without the toolchain locally, fail in CI) are described in native_support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from native_support import (
    IN_CI, cmake_build, export, make_checkpoint, python_scores, tensorrt_options, write_photos)


@pytest.fixture(scope="session")
def native_build(tmp_path_factory) -> Path:
    """The Release build: libpmtiqa, examples/score_images, the ABI check, and (where nvcc
    is, which CI requires) the CUDA kernel, its GPU check and the TensorRT backend, linked
    against the lean runtime and compiled against the 10.16 headers too."""
    cuda = "ON" if IN_CI else "AUTO"
    return cmake_build(tmp_path_factory.mktemp("native") / "build", f"-DPMTIQA_WITH_CUDA={cuda}",
                       *tensorrt_options())


@pytest.fixture(scope="session")
def library(native_build):
    from native_abi import load_library

    return load_library(native_build / "libpmtiqa.so")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    pytest.importorskip("skimage", reason="scikit-image (the train extra) provides the test photos")
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, photos) -> Path:
    pytest.importorskip("torch", reason="the export extra (torch, onnx, onnxruntime) builds the test model")
    pytest.importorskip("onnxruntime", reason="the export extra builds the test model")
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet18", photos)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, checkpoint, photos) -> Path:
    """The float32-input export (model.onnx + model.json; no FP16, no engine)."""
    return export(checkpoint, photos, tmp_path_factory.mktemp("export") / "float32", "float32")


@pytest.fixture(scope="session")
def model_dir_uint8(tmp_path_factory, checkpoint, photos) -> Path:
    """The uint8-input export: normalisation inside the graph, channels-last input."""
    return export(checkpoint, photos, tmp_path_factory.mktemp("export") / "uint8", "uint8")


@pytest.fixture(scope="session")
def python_rows(model_dir, photos) -> dict[str, tuple[float, int]]:
    """The Python runtime's (score, level) per photo: the reference preprocessing and ONNX
    Runtime on the same model.onnx."""
    return python_scores(model_dir, photos)
