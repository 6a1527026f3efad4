"""`pmtiqa-export`: a thin click command over `export_model`. torch, onnx and TensorRT
are imported inside the command, so --help is instant and torch-free."""

from __future__ import annotations

import sys
from pathlib import Path

import click

EXIT_CODES = """\b
Exit codes:
  0  every asked-for artifact written and parity passed (or --allow-drift given)
  1  parity failed: an artifact disagrees with PyTorch beyond its tolerance
     (INT8: SRCC below --int8-min-srcc); nothing written (re-run with
     --allow-drift to write anyway)
  2  usage or input error (bad option, unreadable checkpoint, no parity images)
  3  ONNX files, model.json and parity.json written, but no engine: TensorRT's
     builder or a GPU is missing here (--no-engine makes this 0)
  4  an export step failed (ONNX export, FP16 conversion, TensorRT build or
     engine check); nothing written

With --triton-repo DIR, the exported model is also written as a Triton model
repository (the `pmtiqa` ensemble: image bytes in; score, level, error out).
With --triton-network tensorrt and no engine built here, exit 3 and no repository;
a repository that cannot be written is exit 4 (the model files are written)."""


@click.command(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for model.onnx, model.fp16.onnx, model.engine, model.json, parity.json.")
@click.option("--crops", "crop_count", type=click.IntRange(min=1), default=None,
              help="Crops per image (default: the checkpoint's preprocessing).")
@click.option("--batch-min", type=click.IntRange(min=1), default=1, show_default=True,
              help="Smallest batch (images) the model accepts.")
@click.option("--batch-opt", type=click.IntRange(min=1), default=8, show_default=True,
              help="Batch the engine is tuned for.")
@click.option("--batch-max", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest batch the model accepts.")
@click.option("--input-dtype", type=click.Choice(["float32", "float16", "uint8"]), default="float32",
              show_default=True, help="Graph input: normalised float crops [B,N,3,H,W], or uint8 "
              "RGB crops [B,N,H,W,3] normalised inside the graph.")
@click.option("--fp16/--no-fp16", default=True, show_default=True,
              help="Write model.fp16.onnx and build the engine from it (FP32 engine otherwise).")
@click.option("--engine/--no-engine", default=True, show_default=True,
              help="Build model.engine with TensorRT (needs TensorRT's builder and a GPU).")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,
              help="ONNX opset (17 is what OpenCV 4.6's DNN module reads).")
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), default=4096,
              show_default=True, help="TensorRT workspace limit, MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache file: read if it exists, written after the build.")
@click.option("--version-compatible", is_flag=True,
              help="Build a version-compatible plan that newer TensorRT runtimes of the same "
              "major version, and the lean runtime, can load.")
@click.option("--exclude-lean-runtime", is_flag=True,
              help="With --version-compatible: leave the lean runtime out of the plan (smaller; "
              "the loading side must provide it).")
@click.option("--debug-outputs", is_flag=True,
              help="Also output ms1..ms4 and ms_concat (per crop) for debugging.")
@click.option("--parity-images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of images for the parity check (default: the built-in "
              "dataset's test images, built on first use).")
@click.option("--parity-limit", type=click.IntRange(min=2), default=None,
              help="Use at most this many parity images (sorted by name).")
@click.option("--builtin-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the built-in dataset is (or is built); default: its cache folder.")
@click.option("--allow-drift", is_flag=True,
              help="Write the artifacts even when parity fails (parity.json records it).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads for the parity check (default: all cores).")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here.")
@click.option("--triton-network", type=click.Choice(["auto", "tensorrt", "onnxruntime", "python"]),
              default="auto", show_default=True,
              help="The repository's network: tensorrt_plan (the engine), onnxruntime_onnx (with "
              "TensorRT FP16 as accelerator on GPUs), or python (the CPU/test variant: the runtime "
              "on ONNX Runtime in Triton's Python backend); auto: tensorrt when an engine was built.")
@click.option("--triton-device", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Instance kind of the repository's network [gpu; python: cpu].")
@click.option("--triton-instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Copies of the repository's network per GPU (or on the CPU).")
@click.option("--int8", is_flag=True,
              help="Also write model.int8.onnx (ONNX Runtime static quantization, QDQ: uint8 "
              "activations, int8 per-channel weights, heads FP32) and, where an engine is built, "
              "model.int8.engine (TensorRT explicit INT8).")
@click.option("--int8-min-srcc", type=click.FloatRange(0.0, 1.0), default=0.999, show_default=True,
              help="The INT8 gate: SRCC against PyTorch FP32 on the parity images; below it the "
              "export fails (exit 1).")
@click.option("--calibration-images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder of images to calibrate INT8 on (default: the checkpoint's "
              "training images, one per distortion type and level on the built-in dataset).")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Calibration images to use.")
def export_command(checkpoint: Path, out_dir: Path, crop_count, batch_min, batch_opt, batch_max,
                   input_dtype, fp16, engine, opset, workspace_mib, timing_cache, version_compatible,
                   exclude_lean_runtime, debug_outputs, parity_images, parity_limit, builtin_dir,
                   allow_drift, threads, triton_repo, triton_network, triton_device,
                   triton_instances, int8, int8_min_srcc, calibration_images, calibration_limit) -> None:
    """Export a PMT-IQA checkpoint (a directory from pmtiqa-train) to ONNX FP32, ONNX FP16
    and a TensorRT engine, write model.json (the spec) beside them, and check every
    artifact against PyTorch on real images (parity.json)."""
    from pmtiqa_deploy.errors import ExportError, ParityError, PmtIqaError

    if exclude_lean_runtime and not version_compatible:
        raise click.UsageError("--exclude-lean-runtime needs --version-compatible")
    if not int8 and (calibration_images is not None or
                     click.get_current_context().get_parameter_source("int8_min_srcc").name != "DEFAULT"):
        raise click.UsageError("--int8-min-srcc and --calibration-images go with --int8")
    triton = _triton_options(triton_repo, triton_network, triton_device, triton_instances, engine,
                             workspace_mib)
    try:
        from pmtiqa_deploy.export.pipeline import ExportOptions, export_model
        from pmtiqa_deploy.export.tensorrt import EngineOptions
    except ImportError as exc:
        click.echo(f"error: {exc.name or exc} is not installed; install the export extra: "
                   "pip install 'pmtiqa-deploy[export]'", err=True)
        sys.exit(2)
    try:
        options = ExportOptions(
            crop_count=crop_count, batch_min=batch_min, batch_opt=batch_opt, batch_max=batch_max,
            input_dtype=input_dtype, fp16=fp16, engine=engine, opset=opset,
            debug_outputs=debug_outputs,
            engine_options=EngineOptions(workspace_mib=workspace_mib, timing_cache=timing_cache,
                                         version_compatible=version_compatible,
                                         exclude_lean_runtime=exclude_lean_runtime),
            parity_images=parity_images, parity_limit=parity_limit, builtin_dir=builtin_dir,
            allow_drift=allow_drift, threads=threads, int8=int8, int8_min_srcc=int8_min_srcc,
            calibration_images=calibration_images, calibration_limit=calibration_limit)
        options.input_spec()  # batch range and dtype checks before any heavy work
        result = export_model(checkpoint, out_dir, options, log=lambda m: click.echo(m, err=True))
    except ParityError as exc:
        click.echo(f"error: parity failed: {exc}", err=True)
        sys.exit(1)
    except ExportError as exc:
        click.echo(f"error: export failed: {exc}", err=True)
        sys.exit(4)
    except PmtIqaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if result.engine_missing:
        click.echo(f"model.engine was not built: {result.engine_missing}", err=True)
    if triton is not None and not (result.engine_missing and triton_network == "tensorrt"):
        from pmtiqa_deploy.export.triton import write_repository

        try:
            write_repository(result.directory, triton_repo, triton, log=lambda m: click.echo(m, err=True))
        except PmtIqaError as exc:
            click.echo(f"error: the Triton repository was not written: {exc}", err=True)
            sys.exit(4)
    elif triton is not None:
        click.echo("error: no engine, so no tensorrt_plan repository; choose --triton-network "
                   "onnxruntime, or export on a machine with TensorRT and a GPU", err=True)
    sys.exit(result.exit_code)


def _triton_options(repo, network, device, instances, engine, workspace_mib):
    """RepositoryOptions for --triton-*, checked before the export starts; None without a repo."""
    source = click.get_current_context().get_parameter_source
    given = [f"--triton-{name}" for name in ("network", "device", "instances")
             if source(f"triton_{name}") is not click.core.ParameterSource.DEFAULT]
    if repo is None:
        if given:
            raise click.UsageError(f"{', '.join(given)} go(es) with --triton-repo DIR")
        return None
    if network == "tensorrt" and not engine:
        raise click.UsageError("--triton-network tensorrt needs the engine: drop --no-engine")
    from pmtiqa_deploy.errors import ExportError
    from pmtiqa_deploy.export.triton import RepositoryOptions

    try:
        return RepositoryOptions(network=network, device=device, instances=instances,
                                 workspace_mib=workspace_mib)
    except ExportError as exc:
        raise click.UsageError(str(exc)) from None
