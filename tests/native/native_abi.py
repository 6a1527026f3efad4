"""ctypes bindings of native/include/pmtiqa.h for the tests: the structs, the function
prototypes, and a small wrapper that turns NumPy images into pmtiqa_image descriptors."""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_float, c_int, c_int32, c_int64, c_size_t, c_uint32, c_void_p
from pathlib import Path

import numpy as np

OK, INVALID_ARGUMENT, SPEC, IO, DECODE, IMAGE_TOO_SMALL = 0, 1, 2, 3, 4, 5
NOT_SUPPORTED, BACKEND_UNAVAILABLE, BACKEND, OUT_OF_MEMORY, INTERNAL = 6, 7, 8, 9, 10
RGB, BGR, RGBA, BGRA, GRAY = 0, 1, 2, 3, 4
BACKEND_AUTO, BACKEND_CPU, BACKEND_TENSORRT = 0, 1, 2


class Options(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("backend", c_int32), ("precision", c_int32),
                ("device_id", c_int32), ("threads", c_int32), ("verify_hash", c_int32)]


class Image(ctypes.Structure):
    _fields_ = [("data", c_void_p), ("width", c_int32), ("height", c_int32), ("stride", c_int64),
                ("format", c_int32)]


class Result(ctypes.Structure):
    _fields_ = [("score", c_float), ("level", c_int32)]


class Info(ctypes.Structure):
    _fields_ = [("struct_size", c_uint32), ("backend", c_int32), ("precision", c_int32),
                ("num_levels", c_int32), ("crop_count", c_int32), ("crop_size", c_int32),
                ("max_batch", c_int32), ("score_min", c_float), ("score_max", c_float),
                ("higher_is_better", c_int32), ("units", c_char_p), ("model_file", c_char_p)]


def load_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    prototypes = {
        "pmtiqa_abi_version": (c_uint32, []),
        "pmtiqa_version": (c_char_p, []),
        "pmtiqa_backend_available": (c_int, [c_int32]),
        "pmtiqa_status_name": (c_char_p, [c_int]),
        "pmtiqa_last_error": (c_char_p, []),
        "pmtiqa_options_init": (None, [POINTER(Options)]),
        "pmtiqa_open": (c_int, [c_char_p, POINTER(Options), POINTER(c_void_p)]),
        "pmtiqa_close": (None, [c_void_p]),
        "pmtiqa_get_info": (c_int, [c_void_p, POINTER(Info)]),
        "pmtiqa_score": (c_int, [c_void_p, POINTER(Image), POINTER(Result), POINTER(c_float)]),
        "pmtiqa_score_batch": (c_int, [c_void_p, POINTER(Image), c_size_t, POINTER(Result), POINTER(c_float)]),
        "pmtiqa_score_file": (c_int, [c_void_p, c_char_p, POINTER(Result), POINTER(c_float)]),
        "pmtiqa_score_device": (c_int, [c_void_p, POINTER(Image), c_void_p, POINTER(Result), POINTER(c_float)]),
    }
    for name, (restype, argtypes) in prototypes.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class NativeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status, self.message = status, message


def image_of(array: np.ndarray, fmt: int) -> Image:
    """A descriptor of a HxW or HxWxC uint8 array (rows may be padded: any row stride)."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    assert array.dtype == np.uint8 and array.strides[1] == channels and (array.ndim == 2 or array.strides[2] == 1)
    return Image(array.ctypes.data, array.shape[1], array.shape[0], array.strides[0], fmt)


def padded(array: np.ndarray, extra_bytes: int = 24) -> np.ndarray:
    """The same pixels in a buffer whose rows are `extra_bytes` longer (a row stride > width)."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    assert extra_bytes % channels == 0
    wide = np.zeros((array.shape[0], array.shape[1] + extra_bytes // channels) + array.shape[2:], np.uint8)
    wide[:, :array.shape[1]] = array
    return wide[:, :array.shape[1]]


class Model:
    """An open pmtiqa_model; raises NativeError for a failed call."""

    def __init__(self, lib: ctypes.CDLL, model_dir: Path, **options: int):
        self.lib = lib
        opts = Options()
        lib.pmtiqa_options_init(ctypes.byref(opts))
        for key, value in options.items():
            setattr(opts, key, value)
        self.handle = c_void_p()
        self._check(lib.pmtiqa_open(str(model_dir).encode(), ctypes.byref(opts), ctypes.byref(self.handle)))
        self.info = Info(struct_size=ctypes.sizeof(Info))
        self._check(lib.pmtiqa_get_info(self.handle, ctypes.byref(self.info)))

    def _check(self, status: int) -> None:
        if status != OK:
            raise NativeError(status, self.lib.pmtiqa_last_error().decode())

    def score(self, array: np.ndarray, fmt: int) -> tuple[float, int, np.ndarray]:
        result, probs = Result(), np.zeros(self.info.num_levels, np.float32)
        self._check(self.lib.pmtiqa_score(self.handle, ctypes.byref(image_of(array, fmt)), ctypes.byref(result),
                                          probs.ctypes.data_as(POINTER(c_float))))
        return result.score, result.level, probs

    def score_batch(self, items: list[tuple[np.ndarray, int]]) -> tuple[list[tuple[float, int]], np.ndarray]:
        images = (Image * len(items))(*[image_of(a, f) for a, f in items])
        results = (Result * len(items))()
        probs = np.zeros((len(items), self.info.num_levels), np.float32)
        self._check(self.lib.pmtiqa_score_batch(self.handle, images, len(items), results,
                                                probs.ctypes.data_as(POINTER(c_float))))
        return [(r.score, r.level) for r in results], probs

    def score_file(self, path: Path) -> tuple[float, int]:
        result = Result()
        self._check(self.lib.pmtiqa_score_file(self.handle, str(path).encode(), ctypes.byref(result), None))
        return result.score, result.level

    def close(self) -> None:
        if self.handle:
            self.lib.pmtiqa_close(self.handle)
            self.handle = c_void_p()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_status(lib: ctypes.CDLL, model_dir: Path, **options: int) -> tuple[int, str]:
    """(status, last error) of pmtiqa_open; closes the model if it opened."""
    try:
        Model(lib, model_dir, **options).close()
    except NativeError as exc:
        return exc.status, exc.message
    return OK, ""
