"""Backends by name. A backend's module imports its library at the top; this table imports
a module only when that backend is asked for, and says which extra to install when the
library is missing."""

from __future__ import annotations

import importlib

from pmtiqa_deploy.backends.base import Backend
from pmtiqa_deploy.errors import BackendUnavailable

# name -> (module, class, extra that provides its library)
BACKENDS = {
    "onnxruntime": ("pmtiqa_deploy.backends.onnxruntime", "OnnxRuntimeBackend", "onnxruntime"),
    "tensorrt": ("pmtiqa_deploy.backends.tensorrt", "TensorRTBackend", "tensorrt"),
    "torch": ("pmtiqa_deploy.backends.torch", "TorchBackend", "train"),
    "null": ("pmtiqa_deploy.backends.null", "NullBackend", None),
}


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, class_name, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} needs a library that is not installed ({exc.name or exc}); "
            f"install it with: pip install 'pmtiqa-deploy[{extra}]'") from exc
    return getattr(module, class_name)
