"""The spec: the one contract between export and every consumer of a model.

`model.json` sits beside `model.onnx`, `model.fp16.onnx` and `model.engine`. It says how
to turn an image file into the model's input (colour order, resize, crop grid, mean and
std, whether normalisation is inside the graph), what the outputs mean (score range,
units, direction, quality levels), and which files it describes (hashes, opset,
TensorRT version and GPU). Nothing is hidden in the model files themselves.

Loading is strict: an unknown key, a missing key, a wrong type or a newer major schema
version is a `SpecError` that names the key and the file. Every key is required except the
few listed, with their defaults, in `spec_defaults.json` beside this module (the C++ reader
compiles in the same file). The dataclass defaults below are for building a spec in code;
they never fill a gap in a file.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmtiqa_deploy.errors import SpecError

SCHEMA_VERSION = "1.0"
SPEC_FILENAME = "model.json"
DEFAULTS_FILE = Path(__file__).with_name("spec_defaults.json")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_MODES = ("none", "fixed", "shorter_side")
INPUT_DTYPES = ("float32", "float16", "uint8")
LAYOUTS = ("BNCHW", "BNHWC")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ScoreSpec:
    """What a score means: its range in the training data's units and its direction.

    The easy task's quality levels split [min, max] into `num_levels` intervals of
    `level_width` (PMT-IQA.md: K = ceil((max - min) / w)); scores outside clamp.
    """

    min: float
    max: float
    units: str = "MOS"
    higher_is_better: bool = True
    num_levels: int = 10
    level_width: float = 10.0
    dataset: str = ""

    def __post_init__(self) -> None:
        if not self.max > self.min:
            raise SpecError(f"score range is empty: min={self.min} max={self.max}")
        if self.level_width <= 0:
            raise SpecError(f"level_width must be positive, got {self.level_width}")
        expected = math.ceil((self.max - self.min) / self.level_width - 1e-9)
        if self.num_levels != expected:
            raise SpecError(
                f"num_levels={self.num_levels} disagrees with the range: "
                f"ceil(({self.max} - {self.min}) / {self.level_width}) = {expected}"
            )

    @classmethod
    def from_levels(cls, min: float, max: float, num_levels: int, **kwargs: Any) -> ScoreSpec:
        """The spec with `num_levels` equal intervals over [min, max]."""
        return cls(min=min, max=max, num_levels=num_levels,
                   level_width=(max - min) / num_levels, **kwargs)

    def level(self, score: Any) -> Any:
        """The quality level (0..num_levels-1) of a score or an array of scores."""
        raw = np.floor((np.asarray(score, dtype=np.float64) - self.min) / self.level_width)
        levels = np.clip(raw, 0, self.num_levels - 1).astype(np.int64)
        return int(levels) if levels.ndim == 0 else levels


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image file becomes crops. `preprocess.py` is the reference implementation.

    1. Decode to 8-bit RGB: EXIF orientation applied, gray replicated, alpha dropped,
       CMYK converted, 16-bit scaled by 1/257 and rounded.
    2. Reject images whose shorter side is below `min_side`.
    3. Resize: "none" keeps the size; "fixed" goes to width x height; "shorter_side"
       scales so the shorter side is `shorter_side`, keeping the aspect ratio. Then, if
       the shorter side is below `crop_size`, scale up so it equals `crop_size`.
       Interpolation is bilinear with half-pixel centres, OpenCV's bit-exact fixed-point
       variant (INTER_LINEAR_EXACT; KERNEL.md beside the GPU kernel gives the integers).
    4. Cut `crop_count` crops of `crop_size` on a fixed grid (`crop_boxes`).
    5. Normalise (x / 255 - mean) / std per channel, in the graph or before it.
    """

    colour_order: str = "RGB"
    resize: str = "none"
    width: int | None = None
    height: int | None = None
    shorter_side: int | None = None
    interpolation: str = "bilinear"
    min_side: int = 32
    crop_size: int = 224
    crop_count: int = 9
    crop_grid: str = "uniform"
    combine: str = "mean"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.colour_order != "RGB":
            raise SpecError(f"colour_order must be 'RGB', got {self.colour_order!r}")
        if self.resize not in RESIZE_MODES:
            raise SpecError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        fixed = self.width is not None or self.height is not None
        if self.resize == "fixed" and not (self.width and self.height):
            raise SpecError("resize='fixed' needs both width and height")
        if self.resize != "fixed" and fixed:
            raise SpecError(f"width/height are only valid with resize='fixed', not {self.resize!r}")
        if (self.resize == "shorter_side") != (self.shorter_side is not None):
            raise SpecError("shorter_side must be set exactly when resize='shorter_side'")
        if self.interpolation != "bilinear":
            raise SpecError(f"interpolation must be 'bilinear', got {self.interpolation!r}")
        if self.crop_grid != "uniform" or self.combine != "mean":
            raise SpecError("crop_grid must be 'uniform' and combine must be 'mean'")
        if self.crop_count < 1 or self.crop_size < 1 or self.min_side < 1:
            raise SpecError("crop_count, crop_size and min_side must be positive")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError("mean and std need three values each, std positive")


@dataclass(frozen=True)
class InputSpec:
    """The graph's single input: the crops of a batch of images.

    float inputs are [B, N, 3, H, W] and already normalised; uint8 input is
    [B, N, H, W, 3] RGB with the cast and normalisation inside the graph.
    """

    name: str = "images"
    dtype: str = "float32"
    layout: str = "BNCHW"
    normalize_in_graph: bool = False
    batch_min: int = 1
    batch_opt: int = 8
    batch_max: int = 32

    def __post_init__(self) -> None:
        if self.dtype not in INPUT_DTYPES:
            raise SpecError(f"input dtype must be one of {INPUT_DTYPES}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise SpecError(f"input layout must be one of {LAYOUTS}, got {self.layout!r}")
        if (self.dtype == "uint8") != (self.layout == "BNHWC"):
            raise SpecError("uint8 input uses layout BNHWC; float inputs use BNCHW")
        if (self.dtype == "uint8") != self.normalize_in_graph:
            raise SpecError("normalisation is in the graph exactly when the input is uint8")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise SpecError(
                f"batch range must satisfy 1 <= min <= opt <= max, got "
                f"{self.batch_min}/{self.batch_opt}/{self.batch_max}"
            )

    def shape(self, batch: int, crops: int, size: int) -> tuple[int, ...]:
        if self.layout == "BNCHW":
            return (batch, crops, 3, size, size)
        return (batch, crops, size, size, 3)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str
    shape: tuple[str | int, ...]
    meaning: str = ""


@dataclass(frozen=True)
class Quantization:
    """How an INT8 artifact was made (`pmtiqa-export --int8`): the quantizer, the
    activation and weight types, the calibration set, and what stayed float32."""

    method: str
    activations: str
    weights: str
    calibration: str
    calibration_images: int
    quantized_convolutions: int
    convolutions: int
    fp32_nodes: tuple[str, ...] = ()
    fp32_op_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Artifact:
    """One model file the spec describes, with what it was built for."""

    file: str
    format: str
    precision: str
    sha256: str
    opset: int | None = None
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    version_compatible: bool | None = None
    quantization: Quantization | None = None  # INT8 artifacts only

    def __post_init__(self) -> None:
        if self.format not in ("onnx", "tensorrt"):
            raise SpecError(f"artifact format must be 'onnx' or 'tensorrt', got {self.format!r}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"artifact precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (self.precision == "int8") != (self.quantization is not None):
            raise SpecError("an artifact records its quantization exactly when its precision is int8")


def default_outputs(num_levels: int) -> tuple[OutputSpec, ...]:
    return (
        OutputSpec("score", "float32", ("B",), "mean of the crop scores, in the score spec's units"),
        OutputSpec("level_probs", "float32", ("B", num_levels),
                   "mean over crops of the softmax over quality levels"),
    )


@dataclass(frozen=True)
class ModelSpec:
    """Everything a consumer needs besides the model file."""

    score: ScoreSpec
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    input: InputSpec = field(default_factory=InputSpec)
    outputs: tuple[OutputSpec, ...] = ()
    backbone: str = "resnet50"
    checkpoint_sha256: str = ""
    artifacts: tuple[Artifact, ...] = ()
    producer: dict[str, str] = field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_schema_version(self.schema_version)
        if not self.outputs:
            object.__setattr__(self, "outputs", default_outputs(self.score.num_levels))

    def artifact(self, format: str, precision: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.format == format and artifact.precision == precision:
                return artifact
        have = ", ".join(f"{a.format}/{a.precision}" for a in self.artifacts) or "none"
        raise SpecError(f"the spec lists no {format} {precision} artifact (it has: {have}); "
                        "re-export with pmtiqa-export to produce it")

    def input_shape(self, batch: int) -> tuple[int, ...]:
        p = self.preprocess
        return self.input.shape(batch, p.crop_count, p.crop_size)

    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if isinstance(data, dict) and "schema_version" in data:
            check_schema_version(data["schema_version"])
        return _from_jsonable(cls, data, "spec")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON (atomically): into an existing folder as `model.json`, or
        to a `.json` path whose folder exists. Folders are never created here, so a typo
        in the destination is an error rather than a spec written somewhere unexpected."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        elif path.suffix.lower() != ".json":
            raise SpecError(f"cannot save the spec to {path}: it is not an existing folder "
                            f"(create it first) nor a .json file path")
        elif not path.parent.is_dir():
            raise SpecError(f"cannot save the spec to {path}: folder {path.parent} does not "
                            "exist; create it first")
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelSpec:
        """Read a spec from `model.json` or from the directory holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILENAME
        if not path.is_file():
            raise SpecError(f"no spec at {path}: export a model with pmtiqa-export, which writes "
                            f"{SPEC_FILENAME} beside the model files")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
        try:
            return cls.from_dict(data)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    def verify_artifact(self, directory: str | os.PathLike, artifact: Artifact) -> Path:
        """The artifact's path, after checking that the file exists and matches its hash."""
        path = Path(directory) / artifact.file
        if not path.is_file():
            raise SpecError(f"{path} is missing: the spec lists it; re-export into {directory}")
        digest = sha256_file(path)
        if digest != artifact.sha256:
            raise SpecError(
                f"{path} does not match its spec (sha256 {digest[:12]}... vs {artifact.sha256[:12]}...): "
                "the file was replaced or truncated after export; re-export the model"
            )
        return path


def check_schema_version(version: Any) -> None:
    ours = int(SCHEMA_VERSION.split(".")[0])
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise SpecError(f"schema_version {version!r} is not of the form MAJOR.MINOR") from None
    if major > ours:
        raise SpecError(
            f"spec schema {version} is newer than this toolkit understands ({SCHEMA_VERSION}); "
            "upgrade pmtiqa-deploy or re-export the model with this version"
        )
    if major < ours:
        raise SpecError(f"spec schema {version} is older than {SCHEMA_VERSION}; re-export the model")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    The file gets the permissions an ordinary `open(path, "w")` would (0666 less the
    umask), not mkstemp's private 0600: models and specs are meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@functools.cache
def spec_defaults() -> dict[str, Any]:
    """spec_defaults.json's table: optional key path ("outputs[].meaning") -> default."""
    return json.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))["optional"]


def optional_keys(where: str) -> dict[str, Any]:
    """The keys the object at `where` ("spec.outputs[1]") may leave out, with their
    defaults (deep copies: a default is never shared between specs)."""
    prefix = re.sub(r"\[\d+\]", "[]", where).removeprefix("spec").lstrip(".")
    found = {}
    for path, default in spec_defaults().items():
        parent, _, key = path.rpartition(".")
        if parent == prefix:
            found[key] = copy.deepcopy(default)
    return found


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def _from_jsonable(kind: Any, data: Any, where: str) -> Any:
    """Build `kind` from JSON data, rejecting unknown keys and wrong types."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise SpecError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown}; this spec was written by a "
                            "different pmtiqa-deploy version or edited by hand")
        defaults = optional_keys(where)
        missing = sorted(names - set(data) - set(defaults))
        if missing:
            raise SpecError(f"{where}: missing key(s) {missing} (schema {SCHEMA_VERSION} requires "
                            "them); re-export the model with pmtiqa-export")
        data = {**{k: v for k, v in defaults.items() if k in names}, **data}
        values = {k: _from_jsonable(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return kind(**values)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _from_jsonable(option, data, where)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if len(errors) == 1 else f"{where}: no type matches {data!r}")
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(data, list):
            raise SpecError(f"{where}: expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_jsonable(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise SpecError(f"{where}: expected {len(args)} values, got {len(data)}")
        return tuple(_from_jsonable(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    if origin is dict:
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SpecError(f"{where}: expected an object of strings")
        return dict(data)
    if kind is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SpecError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if kind in (int, bool, str):
        if type(data) is not kind:
            raise SpecError(f"{where}: expected {kind.__name__}, got {data!r}")
        return data
    raise SpecError(f"{where}: unsupported field type {kind!r}")  # pragma: no cover
