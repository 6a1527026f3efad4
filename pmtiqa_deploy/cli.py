"""The runtime's command lines: `pmtiqa-score` (score image files) and `pmtiqa-bench`
(benchmark backends). Thin click commands over `pmtiqa_deploy.score`,
`pmtiqa_deploy.bench` and `pmtiqa_deploy.report`; those (and OpenCV, the backends'
libraries) are imported inside the commands so `--help` is instant and torch-free.

Exit codes, both commands: 2 when nothing could run (missing model directory, bad spec,
backend unavailable, bad options; for pmtiqa-score also an output that exists or cannot be
written); pmtiqa-score: 0 all inputs scored, 1 some failed;
pmtiqa-bench: 0 every budget met, 1 a budget missed (named on stderr).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from pmtiqa_deploy.backends import BACKENDS
from pmtiqa_deploy.errors import PmtIqaError
from pmtiqa_deploy.output.formats import FORMATS
from pmtiqa_deploy.stages import DECODE_CHOICES, PREPROCESS_CHOICES

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Options that choose or measure a local model, which --server replaces.
_SCORE_LOCAL = {"model_dir": "--model", "backend": "--backend", "precision": "--precision",
                "threads": "--threads", "device": "--device", "checkpoint": "--checkpoint", "pad": "--pad",
                "preprocess": "--preprocess", "decode": "--decode", "cuda_graph": "--cuda-graph"}
_BENCH_LOCAL = {"model_dir": "--model", "backends": "--backend", "precision": "--precision",
                "checkpoint": "--checkpoint", "device": "--device", "threads_text": "--threads",
                "workers": "--workers", "preprocess": "--preprocess",
                "rounds": "--rounds", "e2e_rounds": "--e2e-rounds",
                "ceiling": "--ceiling/--no-ceiling", "counts_text": "--counts", "plot_path": "--plot",
                "min_srcc": "--min-srcc", "min_srcc_mos": "--min-srcc-mos"}
_BENCH_SERVER = {"concurrency_text": "--concurrency", "time_limit": "--time-limit"}


def _given(flags: dict[str, str]) -> list[str]:
    """The options among `flags` (parameter name -> flag) given on the command line."""
    source = click.get_current_context().get_parameter_source
    return [flag for name, flag in flags.items() if source(name) is not click.core.ParameterSource.DEFAULT]


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.command(context_settings=_CONTEXT)
@click.argument("paths", nargs=-1)
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Exported model directory (model.json beside the model files).")
@click.option("--server", metavar="URL",
              help="Score through a server instead (pmtiqa-serve or Triton with the repository "
                   "pmtiqa-export wrote): http://HOST:PORT or grpc://HOST:PORT.")
@click.option("--list", "list_files", multiple=True, type=click.Path(path_type=Path),
              help="A file of image paths, one a line (repeatable; same as @FILE).")
@click.option("--backend", default="onnxruntime", show_default=True, type=click.Choice(sorted(BACKENDS)),
              help="Inference backend; 'null' needs only model.json (for testing pipelines).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Model precision [onnxruntime: fp32; tensorrt: the spec's fp16 engine, else fp32]; "
                   "int8 runs model.int8.onnx / model.int8.engine (pmtiqa-export --int8).")
@click.option("--batch", "batch_size", type=click.IntRange(min=1),
              help="Images per batch [the model's optimal batch from model.json].")
@click.option("--workers", type=click.IntRange(min=1),
              help="Decode threads [min(4, CPUs)]; with --server, requests in flight [4].")
@click.option("--threads", type=click.IntRange(min=1),
              help="Inference threads (onnxruntime intra-op; torch.set_num_threads).")
@click.option("--device", help="onnxruntime/torch: cpu or cuda; tensorrt: GPU index.")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path),
              help="torch backend: the checkpoint directory the model was exported from.")
@click.option("--pad", is_flag=True,
              help="Run every batch at the full batch size, so an image's score never depends on "
                   "the size of its batch (TensorRT picks kernels per shape).")
@click.option("--preprocess", "preprocess", default="auto", show_default=True,
              type=click.Choice(PREPROCESS_CHOICES),
              help="Where the crops are made: the reference on CPU threads, or the CUDA kernel "
                   "writing them into the backend's GPU input; auto: GPU when the backend runs on one.")
@click.option("--decode", default="cpu", show_default=True, type=click.Choice(DECODE_CHOICES),
              help="gpu: decode JPEG files on the GPU with nvImageCodec (needs GPU preprocessing and "
                   "the gpu-decode extra); other formats are decoded on the CPU.")
@click.option("--cuda-graph", is_flag=True,
              help="Replay a captured CUDA graph per batch size (tensorrt; torch on CUDA).")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format [from the -o suffix, else csv]; parquet needs pyarrow.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write rows to this file, replaced only when the run finishes [stdout].")
@click.option("--progress/--no-progress", default=True,
              help="Progress on stderr: a live bar on a terminal, else a line every 30 s [on].")
@click.option("--resume", is_flag=True,
              help="Continue a killed run into -o (or add to a finished -o): score only the inputs "
                   "without a row; the file is rewritten in input order.")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o (and discard an unfinished run's rows).")
def score_command(paths, model_dir, server, list_files, backend, precision, batch_size, workers,
                  threads, device, checkpoint, pad, preprocess, decode, cuda_graph, fmt, output, progress,
                  resume, overwrite) -> None:
    """Score image quality: one row per input (path, score in the model's units, quality
    level, error), in input order.

    PATHS are image files, folders (searched recursively for image extensions) or @FILE
    list files. A file that cannot be read or decoded gets an error row; the others are
    still scored. Names that are not UTF-8 are written in double quotes with octal escapes
    (git's quoted paths); list files read them back.

    -o FILE is written atomically: rows go to FILE.partial as they are scored, and FILE
    appears (or is replaced) only when the run finishes. An existing FILE is refused
    unless --overwrite or --resume is given. --resume after a killed run scores only the
    inputs that have no row yet: each row keeps its input's place (inputs are expanded in
    the same sorted order every run), and the finished FILE lists every input once, in
    input order, with rows for paths no longer given kept at the end.

    Exit code: 0 all scored, 1 some failed, 2 nothing could run or the output could not be
    written (the rows so far stay in FILE.partial for --resume).
    """
    from pmtiqa_deploy.errors import OutputError
    from pmtiqa_deploy.inputs import Inputs, check_list_files, check_output_not_input, count_paths
    from pmtiqa_deploy.output import open_output
    from pmtiqa_deploy.progress import progress_bar
    from pmtiqa_deploy.score import Scorer

    if not paths and not list_files:
        raise click.UsageError("give image files, folders or @list files (or --list FILE)")
    if server is not None and _given(_SCORE_LOCAL):
        raise click.UsageError(f"{', '.join(_given(_SCORE_LOCAL))} choose(s) a local model; the "
                               "server has its own: drop them with --server")
    if server is None and model_dir is None:
        raise click.UsageError("give --model DIR (or --server URL)")
    if resume and overwrite:
        raise click.UsageError("--resume keeps the rows -o holds, --overwrite discards them: give one")
    if (resume or overwrite) and output is None:
        raise click.UsageError(f"--{'resume' if resume else 'overwrite'} goes with -o FILE")
    if server is None and not model_dir.is_dir():
        _fail(f"model directory {model_dir} does not exist: export one with "
              "`pmtiqa-export CHECKPOINT -o DIR` and pass --model DIR")
    show = progress
    inputs = Inputs(paths, list_files)
    mode = "resume" if resume else "overwrite" if overwrite else "new"
    try:  # the output first: a refusal should not wait for a model to load
        check_list_files(paths, list_files)
        if output is not None:
            check_output_not_input(output, paths, list_files)
        sink = open_output(output, fmt, mode=mode)
    except (PmtIqaError, ValueError, ImportError) as exc:
        _fail(str(exc))
    try:
        total = count_paths(paths, list_files) if show else None
        if server is not None:
            scorer = _server_scorer(server, batch_size, workers)
            backend = "server"
        else:
            scorer = Scorer.open(model_dir, backend, batch_size=batch_size, workers=workers, pad=pad,
                                 preprocess=preprocess, decode=decode, cuda_graph=cuda_graph,
                                 precision=precision, device=device, threads=threads,
                                 checkpoint=checkpoint)
    except BaseException as exc:  # nothing scored: an unused partial file goes too
        sink.close()
        if not isinstance(exc, (PmtIqaError, ValueError)):
            raise
        needs_checkpoint = backend == "torch" and checkpoint is None and "checkpoint" in str(exc)
        _fail(f"{exc}{'; pass --checkpoint DIR' if needs_checkpoint else ''}")
    sink.flush_rows = scorer.batch_size  # rows are committed a batch at a time
    written = 0
    try:
        with scorer, sink, progress_bar(total=total, enabled=show, unit="img", desc=f"scoring ({backend})") as bar:
            for row in scorer.score_files(sink.inputs(inputs)):
                sink.write(row)
                written += 1
                bar.update(written + sink.resumed - bar.n)  # found in -o count as done
            summary = sink.finish()
    except OutputError as exc:
        _fail(str(exc))
    except PmtIqaError as exc:  # the backend failed mid-run: the rows so far are kept
        _fail(f"{exc} (stopped after {written} new rows){_kept(sink)}")
    except KeyboardInterrupt:
        _fail(f"interrupted after {written} new rows{_kept(sink)}", 130)
    if summary.rows + summary.kept == 0:
        _fail("no image files found in the given paths (folders are searched for image "
              f"extensions such as .jpg and .png){_skipped(inputs.skipped)}")
    scored = summary.rows - summary.failed
    click.echo(f"scored {scored} of {summary.rows} image(s)"
               + (f"; {summary.failed} failed (see the error column)" if summary.failed else "")
               + (f"; {summary.resumed} row(s) were already in {output}" if summary.resumed else "")
               + (f"; {summary.kept} row(s) of paths not given this time kept at the end"
                  if summary.kept else "")
               + _skipped(inputs.skipped), err=True)
    if summary.failed:
        raise click.exceptions.Exit(1)


def _kept(sink: Any) -> str:
    partial = getattr(sink, "partial", None)
    return f"; the rows so far are kept in {partial}: rerun with --resume to continue" if partial else ""


def _skipped(count: int) -> str:
    return f"; {count} file(s) in the folders skipped (not an image extension)" if count else ""


def _server_scorer(url: str, batch_size: int | None, workers: int | None) -> Any:
    try:
        from pmtiqa_deploy.triton.client import ServerScorer
    except ImportError as exc:
        _fail(f"scoring through a server needs tritonclient ({exc.name or exc}): "
              "pip install 'pmtiqa-deploy[triton]'")
    return ServerScorer.open(url, batch_size=batch_size, concurrency=workers or 4)


def _batches(text: str, what: str = "batch sizes") -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give {what} as integers, as in 1,8,32") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: give positive {what}, as in 1,8,32")
    return list(dict.fromkeys(values))


@click.command(context_settings=_CONTEXT)
@click.option("--model", "model_dir", type=click.Path(path_type=Path),
              help="Exported model directory (model.json beside the model files).")
@click.option("--server", metavar="URL",
              help="Measure a server instead (http://HOST:PORT or grpc://HOST:PORT): latency and "
                   "images/s under --concurrency clients, each sending requests of --batch images.")
@click.option("--concurrency", "concurrency_text", default="1,4,16", show_default=True,
              help="With --server: concurrent clients to sweep, comma-separated.")
@click.option("--time-limit", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="With --server: seconds per concurrency and batch size at most.")
@click.option("--backend", "backends", multiple=True, metavar="NAME[:fp32|fp16|int8]",
              help="Backend to measure, repeatable [onnxruntime:fp32, onnxruntime:fp16, tensorrt, "
                   "torch:fp32]. torch:fp32 is the reference for agreement.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Shorthand: measure onnxruntime at this precision against the torch reference "
                   "(same as --backend onnxruntime:PRECISION --backend torch:fp32).")
@click.option("--batch", "batch_text", default="1,8", show_default=True,
              help="Batch sizes to sweep, comma-separated.")
@click.option("--threads", "threads_text", metavar="N[,N...]",
              help="Thread counts to sweep, comma-separated; every library's pools are set to each "
                   "(ONNX Runtime intra-op, torch, OpenCV, BLAS, decode workers) [the CPUs available].")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images (MOS labels from its manifest.csv when present).")
@click.option("--builtin", is_flag=True, help="Use the built-in dataset (built first if absent).")
@click.option("--builtin-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the built-in dataset is (or is built) [its cache folder].")
@click.option("--limit", default=32, show_default=True, type=click.IntRange(min=2),
              help="Images to use, spread evenly over the folder.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0))
@click.option("--iterations", default=20, show_default=True, type=click.IntRange(min=1),
              help="Timed model-only batches per backend, thread count and batch size, spread "
                   "over the rounds.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(min=1),
              help="Interleaved rounds (A, B, A, B, ...); rows give the median and spread over them.")
@click.option("--e2e-rounds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Interleaved end-to-end passes over the image files per backend.")
@click.option("--ceiling/--no-ceiling", default=True, show_default=True,
              help="Time the best FP32 GEMM (ONNX Runtime, NumPy) in the same rounds: each CPU row's "
                   "fraction of it.")
@click.option("--counts", "counts_text", metavar="N[,N...]",
              help="Also score one stream of this many images (the files over and over) with the "
                   "first backend, first batch and first thread count, and report time and memory "
                   "per image at each count (e.g. 100,1000,10000).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint the model was exported from: enables the torch reference.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="onnxruntime/torch device [cpu].")
@click.option("--workers", type=click.IntRange(min=1),
              help="Decode threads end to end [the row's thread count].")
@click.option("--preprocess", default="auto", show_default=True, type=click.Choice(PREPROCESS_CHOICES),
              help="Where the end-to-end crops are made (cpu, gpu, or auto: GPU when the backend runs "
                   "on one); the table's preprocess column says which each row used.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the rows (and machine/date) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: latency distributions, scores vs PyTorch.")
@click.option("--max-p99-ms", type=float, help="Budget: fail when a backend's p99 latency exceeds it.")
@click.option("--min-images-per-s", type=float, help="Budget: fail below this model-only throughput.")
@click.option("--min-srcc", type=float, help="Budget: fail when SRCC vs PyTorch is below it.")
@click.option("--min-srcc-mos", type=float, help="Budget: fail when SRCC vs MOS is below it.")
def bench_command(model_dir, server, concurrency_text, time_limit, backends, precision, batch_text,
                  threads_text, images, builtin, builtin_dir, limit, warmup, iterations, rounds, e2e_rounds,
                  ceiling, counts_text, checkpoint, device, workers, preprocess, json_path, plot_path, max_p99_ms,
                  min_images_per_s, min_srcc, min_srcc_mos) -> None:
    """Benchmark backends: images/s model-only and end to end in interleaved rounds (median
    and spread), each CPU row's fraction of the machine's GEMM ceiling, latency percentiles,
    memory, and agreement with PyTorch (SRCC, PLCC, max abs difference) and with MOS.

    With --server: latency p50/p90/p99 and images/s of a server under concurrent clients
    (--iterations requests each, at most --time-limit seconds per row).

    Prints one table. Exit code: 0 every budget met, 1 a budget missed, 2 nothing could run.
    """
    from pmtiqa_deploy import bench, report
    from pmtiqa_deploy.progress import progress_write

    batches = _batches(batch_text, "batch sizes")
    threads = _batches(threads_text, "thread counts") if threads_text else None
    counts = _batches(counts_text, "image counts") if counts_text else []
    if bool(images) == bool(builtin):
        raise click.UsageError("give exactly one of --images DIR and --builtin")
    if builtin_dir and not builtin:
        raise click.UsageError("--builtin-dir goes with --builtin")
    if server is not None:
        from pmtiqa_deploy.triton.bench import bench_server

        if _given(_BENCH_LOCAL):
            raise click.UsageError(f"{', '.join(_given(_BENCH_LOCAL))} measure(s) a local model; "
                                   "drop them with --server")
        try:
            chosen = (bench.builtin_images(builtin_dir, limit) if builtin
                      else bench.images_from_folder(images, limit))
        except PmtIqaError as exc:
            _fail(str(exc))
        raise click.exceptions.Exit(bench_server(
            server, chosen.paths, concurrency=_batches(concurrency_text, "client counts"), batches=batches,
            iterations=iterations, warmup=warmup, time_limit=time_limit, json_path=json_path,
            max_p99_ms=max_p99_ms, min_images_per_s=min_images_per_s))
    if model_dir is None:
        raise click.UsageError("give --model DIR (or --server URL)")
    if _given(_BENCH_SERVER):
        raise click.UsageError(f"{', '.join(_given(_BENCH_SERVER))} go(es) with --server URL")
    if precision and backends:
        raise click.UsageError("give --precision or --backend, not both")
    if precision:
        backends = (f"onnxruntime:{precision}", "torch:fp32")
    try:
        choices = [bench.BackendChoice.parse(b) for b in backends or bench.DEFAULT_BACKENDS]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--backend") from None
    unknown = sorted({c.name for c in choices} - set(BACKENDS))
    if unknown:
        raise click.BadParameter(f"unknown backend(s) {unknown}; choose from {sorted(BACKENDS)}",
                                 param_hint="--backend")
    if not model_dir.is_dir():
        _fail(f"model directory {model_dir} does not exist: export one with "
              "`pmtiqa-export CHECKPOINT -o DIR` and pass --model DIR")
    points: list = []
    try:
        chosen = (bench.builtin_images(builtin_dir, limit) if builtin
                  else bench.images_from_folder(images, limit))
        result = bench.run_benchmark(model_dir, chosen, backends=choices, batches=batches, threads=threads,
                                     warmup=warmup, iterations=iterations, rounds=rounds,
                                     e2e_rounds=e2e_rounds, checkpoint=checkpoint, device=device,
                                     workers=workers, preprocess=preprocess, measure_ceiling=ceiling, log=progress_write,
                                     show_progress=True)
        if counts:
            points = bench.run_count_sweep(model_dir, chosen, choices[0], batch=batches[0],
                                           threads=threads[0] if threads else bench.available_cpus(),
                                           counts=counts, workers=workers, device=device,
                                           checkpoint=checkpoint, log=progress_write)
    except (PmtIqaError, ValueError) as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"{exc}; the built-in dataset needs the train extra: pip install 'pmtiqa-deploy[train]'")
    click.echo(report.table(result.rows))
    if points:
        click.echo("\n" + report.count_table(points))
    if json_path:
        report.write_json(result, json_path, points, options=click.get_current_context().params,
                          command=shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]))
    if plot_path:
        report.write_plot(result, plot_path)
    failures = report.budget_failures(result.rows, max_p99_ms=max_p99_ms, min_images_per_s=min_images_per_s,
                                      min_srcc=min_srcc, min_srcc_mos=min_srcc_mos)
    for failure in failures:
        click.echo(f"budget failed: {failure}", err=True)
    if failures:
        raise click.exceptions.Exit(1)
