"""The whole export: checkpoint -> model.onnx, model.fp16.onnx, model.engine, model.json,
parity.json, ending with the parity check against PyTorch.

Atomicity. Everything is written into a staging folder beside the output folder; only
when every asked-for step and the parity check succeeded are the files moved into the
output folder, each by an atomic rename, the old model.json first removed and the new
one moved last. A failure at any step leaves the output folder as it was (a previous
export stays usable) and removes the staging folder; re-running over an existing output
replaces it, and removes files of the old export that the new one does not produce
(an old engine, say), so model.json never lists a file that is not there or omits one
that is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pmtiqa_deploy.errors import BackendUnavailable, ExportError, ParityError
from pmtiqa_deploy.export.int8 import CalibrationSet
from pmtiqa_deploy.export.onnx import DEFAULT_OPSET
from pmtiqa_deploy.export.parity import ParityReport
from pmtiqa_deploy.export.tensorrt import EngineOptions, EngineReport
from pmtiqa_deploy.progress import progress_bar
from pmtiqa_deploy.spec import (
    SPEC_FILENAME, Artifact, InputSpec, ModelSpec, atomic_write_bytes, sha256_file)

ONNX_FP32, ONNX_FP16, ENGINE, PARITY = "model.onnx", "model.fp16.onnx", "model.engine", "parity.json"
ONNX_INT8, ENGINE_INT8 = "model.int8.onnx", "model.int8.engine"
OUTPUT_FILES = (ONNX_FP32, ONNX_FP16, ONNX_INT8, ENGINE, ENGINE_INT8, PARITY, SPEC_FILENAME)
EXPORTER = "torch.onnx TorchScript exporter (dynamo=False)"


@dataclass(frozen=True)
class ExportOptions:
    """Everything `pmtiqa-export` can be told; see its --help for each."""

    crop_count: int | None = None  # None: the checkpoint's preprocessing decides
    batch_min: int = 1
    batch_opt: int = 8
    batch_max: int = 32
    input_dtype: str = "float32"
    fp16: bool = True
    engine: bool = True
    opset: int = DEFAULT_OPSET
    debug_outputs: bool = False
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    parity_images: Path | None = None  # None: the built-in dataset's test images
    parity_limit: int | None = None
    builtin_dir: Path | None = None
    allow_drift: bool = False
    threads: int | None = None  # ONNX Runtime intra-op threads during parity
    int8: bool = False  # model.int8.onnx (and model.int8.engine where TensorRT builds)
    int8_min_srcc: float = 0.999  # the INT8 gate: SRCC vs PyTorch FP32 on the parity images
    calibration_images: Path | None = None  # None: the checkpoint's training data
    calibration_limit: int = 50

    def input_spec(self) -> InputSpec:
        uint8 = self.input_dtype == "uint8"
        return InputSpec(dtype=self.input_dtype, layout="BNHWC" if uint8 else "BNCHW",
                         normalize_in_graph=uint8, batch_min=self.batch_min,
                         batch_opt=self.batch_opt, batch_max=self.batch_max)


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    spec: ModelSpec
    parity: ParityReport
    files: tuple[Path, ...]
    engine_missing: str | None = None  # why no engine was built although one was asked for

    @property
    def exit_code(self) -> int:
        """0: all asked-for artifacts written and parity passed (or drift allowed);
        3: ONNX and spec written, the engine not (no TensorRT builder or GPU here)."""
        return 3 if self.engine_missing else 0


def producer_versions(engine: EngineReport | None) -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    from pmtiqa_deploy import __version__

    versions = {"pmtiqa_deploy": __version__, "torch": torch.__version__,
                "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                "exporter": EXPORTER}
    if engine is not None:
        versions["tensorrt"] = engine.tensorrt_version
    return versions


def export_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                 options: ExportOptions = ExportOptions(),
                 log: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Export a checkpoint directory into `out_dir` (see the module docstring).

    Raises CheckpointError/SpecError/DatasetError/DecodeError for bad inputs, ExportError
    when a step fails, ParityError when an artifact drifts beyond its tolerance (unless
    `options.allow_drift`). Without TensorRT or a GPU the engine is skipped and
    `ExportResult.engine_missing` says why.
    """
    from pmtiqa_deploy.export.fp16 import fp16_from_onnx
    from pmtiqa_deploy.export.graph import graph_outputs
    from pmtiqa_deploy.export.onnx import check_onnx_against_spec, onnx_from_model
    from pmtiqa_deploy.train.checkpoint import WEIGHTS_FILE, load_checkpoint

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    input_spec = options.input_spec()
    model, info = load_checkpoint(checkpoint)
    preprocess = info.preprocess
    if options.crop_count is not None:
        preprocess = dataclasses.replace(preprocess, crop_count=options.crop_count)
    spec = ModelSpec(score=info.score, preprocess=preprocess, input=input_spec,
                     outputs=graph_outputs(info.config.num_levels, info.config.scale_dim,
                                           options.debug_outputs),
                     backbone=info.config.backbone,
                     checkpoint_sha256=sha256_file(_checkpoint_dir(checkpoint) / WEIGHTS_FILE))
    files = _parity_files(options, info.training, log)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        log(f"exporting {info.config.backbone} to ONNX (opset {options.opset}, "
            f"{preprocess.crop_count} crops, {input_spec.dtype} input)")
        onnx_from_model(model, preprocess, input_spec, staging / ONNX_FP32, opset=options.opset,
                        debug_outputs=options.debug_outputs)
        artifacts = [Artifact(ONNX_FP32, "onnx", "fp32", sha256_file(staging / ONNX_FP32),
                              opset=options.opset)]
        if options.fp16:
            log("converting to FP16")
            fp16_from_onnx(staging / ONNX_FP32, staging / ONNX_FP16)
            artifacts.append(Artifact(ONNX_FP16, "onnx", "fp16", sha256_file(staging / ONNX_FP16),
                                      opset=options.opset))
        calibration = None
        if options.int8:
            int8_artifact, calibration = _quantize(staging, spec, options, info.training, log)
            artifacts.append(int8_artifact)
        spec = dataclasses.replace(spec, artifacts=tuple(artifacts))
        for artifact in artifacts:
            check_onnx_against_spec(staging / artifact.file, spec)

        engine, missing = None, None
        if options.engine:
            engine, missing = _build_engine(staging, spec, options, log)
        if engine is not None:
            artifacts.append(Artifact(ENGINE, "tensorrt", engine.precision,
                                      sha256_file(staging / ENGINE),
                                      tensorrt_version=engine.tensorrt_version,
                                      compute_capability=engine.compute_capability,
                                      version_compatible=engine.version_compatible))
            if calibration is not None:
                from pmtiqa_deploy.export.tensorrt_int8 import int8_engine_artifact

                artifacts.append(int8_engine_artifact(staging, spec, calibration, options.engine_options, log))
        spec = dataclasses.replace(spec, artifacts=tuple(artifacts),
                                   producer=producer_versions(engine))

        report = _parity(model, spec, staging, files, options, log)
        log(report.table())
        if not report.passed and not options.allow_drift:
            names = ", ".join(r.backend for r in report.failures())
            raise ParityError(f"{names} disagree(s) with PyTorch beyond tolerance (table above); "
                              f"nothing was written to {out}. Investigate, or re-run with "
                              "--allow-drift to write the artifacts and parity.json anyway")
        atomic_write_bytes(staging / PARITY, (json.dumps(report.to_dict(), indent=2) + "\n").encode())
        spec.save(staging / SPEC_FILENAME)
        written = _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {', '.join(p.name for p in written)} to {out}")
    return ExportResult(out, spec, report, written, missing)


def _checkpoint_dir(checkpoint: str | os.PathLike) -> Path:
    path = Path(checkpoint)
    return path.parent if path.is_file() else path


def _parity_files(options: ExportOptions, training: dict, log: Callable[[str], None]) -> list[Path]:
    """--parity-images, else the built-in dataset's test images: those the checkpoint was
    tested on when it was trained on the built-in dataset, else the default content split."""
    from pmtiqa_deploy.export.parity import builtin_test_images, image_files

    if options.parity_images is not None:
        return image_files(options.parity_images, options.parity_limit)
    references = training.get("test_references") if training.get("dataset") == "builtin" else None
    log("parity images: the built-in dataset's test images (pass --parity-images DIR for others)")
    return builtin_test_images(options.builtin_dir, options.parity_limit, references=references)


def _quantize(staging: Path, spec: ModelSpec, options: ExportOptions, training: dict,
              log: Callable[[str], None]) -> tuple[Artifact, CalibrationSet]:
    """model.int8.onnx from model.onnx (export/int8.py), calibrated on the training data's
    images or --calibration-images."""
    from pmtiqa_deploy.export.int8 import calibration_set, int8_from_onnx

    calibration = calibration_set(training, options.calibration_images, options.calibration_limit)
    log(f"quantizing to INT8 (uint8 activations, int8 per-channel weights; calibration: "
        f"{calibration.description})")
    quantization = int8_from_onnx(staging / ONNX_FP32, staging / ONNX_INT8, spec, calibration)
    log(f"INT8: {quantization.quantized_convolutions} of {quantization.convolutions} convolutions "
        f"quantized, {len(quantization.fp32_nodes)} nodes kept in FP32 (the heads from ms_concat on)")
    return Artifact(ONNX_INT8, "onnx", "int8", sha256_file(staging / ONNX_INT8), opset=options.opset,
                    quantization=quantization), calibration


def _build_engine(staging: Path, spec: ModelSpec, options: ExportOptions,
                  log: Callable[[str], None]) -> tuple[EngineReport | None, str | None]:
    from pmtiqa_deploy.export.tensorrt import engine_from_onnx, tensorrt_missing

    missing = tensorrt_missing()
    if missing is not None:
        log(f"no TensorRT engine: {missing}")
        return None, missing
    precision = "fp16" if options.fp16 else "fp32"
    source = staging / (ONNX_FP16 if options.fp16 else ONNX_FP32)
    log(f"building the TensorRT {precision} engine (batch {spec.input.batch_min}.."
        f"{spec.input.batch_max}, this takes minutes)")
    try:
        report = engine_from_onnx(source, staging / ENGINE, spec, precision, options.engine_options)
    except BackendUnavailable as exc:
        log(f"no TensorRT engine: {exc}")
        return None, str(exc)
    log(f"engine: {report.layers} layers, {len(report.conv_layers)} convolutions all "
        f"{precision.upper()}, TensorRT {report.tensorrt_version}, sm {report.compute_capability}")
    return report, None


def _parity(model, spec: ModelSpec, staging: Path, files: list[Path], options: ExportOptions,
            log: Callable[[str], None]):
    from pmtiqa_deploy.export import parity
    from pmtiqa_deploy.export.parity import REFERENCE

    def bar(items, what):
        return progress_bar(items, desc=what, leave=False)

    crops = parity.load_crops(files, spec, lambda it: bar(it, "preprocess"))
    score_range = (spec.score.min, spec.score.max)
    reference = parity.torch_scores(model, crops, spec, progress=lambda it: bar(it, REFERENCE))
    results = []
    for artifact in spec.artifacts:
        name = f"{'onnxruntime' if artifact.format == 'onnx' else 'tensorrt'}-{artifact.precision}"
        log(f"parity: {name} ({artifact.file})")
        if artifact.format == "onnx":
            run = parity.onnxruntime_runner(staging / artifact.file, options.threads)
            scores = parity.batched_scores(run, crops, spec, lambda it: bar(it, name))
        else:
            scores = _engine_scores(staging, spec, artifact.precision, crops, lambda it: bar(it, name))
        tolerance = parity.TOLERANCES[name]
        if artifact.precision == "int8":  # the INT8 gate: --int8-min-srcc
            tolerance = dataclasses.replace(tolerance, min_srcc=options.int8_min_srcc)
        results.append(parity.judge(name, artifact.file, scores, reference, score_range, tolerance))
    return parity.ParityReport(tuple(str(f) for f in files), tuple(float(s) for s in reference),
                               score_range, tuple(results))


def _engine_scores(staging: Path, spec: ModelSpec, precision: str, crops, progress):
    """The engine's scores through the runtime's TensorRT backend (the code users run)."""
    from pmtiqa_deploy.backends import backend_class
    from pmtiqa_deploy.export import parity

    try:
        backend = backend_class("tensorrt")(staging, spec, precision=precision)
    except BackendUnavailable as exc:
        raise ExportError(f"the engine was built but cannot be run for its parity check: {exc}") from exc
    with backend:
        return parity.batched_scores(lambda x: backend.infer(x)["score"], crops, spec, progress)


def _commit(staging: Path, out: Path) -> tuple[Path, ...]:
    """Move the staged files into `out` (see the module docstring for the order)."""
    out.mkdir(parents=True, exist_ok=True)
    produced = [name for name in OUTPUT_FILES if (staging / name).is_file()]
    umask = os.umask(0)
    os.umask(umask)
    for name in produced:  # temporary files are created 0600; model files are for sharing
        os.chmod(staging / name, 0o666 & ~umask)
    (out / SPEC_FILENAME).unlink(missing_ok=True)
    for name in OUTPUT_FILES:
        if name not in produced:
            (out / name).unlink(missing_ok=True)
    for name in produced:
        if name != SPEC_FILENAME:
            os.replace(staging / name, out / name)
    os.replace(staging / SPEC_FILENAME, out / SPEC_FILENAME)
    return tuple(out / name for name in produced)


def verify_export(directory: str | os.PathLike) -> ModelSpec:
    """Load a model directory's spec and check every artifact it lists: the file's hash,
    and for ONNX files the graph's input, outputs and opset against the spec."""
    from pmtiqa_deploy.export.onnx import check_onnx_against_spec

    spec = ModelSpec.load(directory)
    for artifact in spec.artifacts:
        path = spec.verify_artifact(directory, artifact)
        if artifact.format == "onnx":
            check_onnx_against_spec(path, spec)
    return spec
