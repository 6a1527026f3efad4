"""The CPU table in one command: ResNet-18 and ResNet-50 PMT-IQA, ONNX Runtime FP32 / FP16 /
INT8 and PyTorch eager (the reference), at every thread count and batch size, in
interleaved rounds, each row beside the machine's FP32 GEMM ceiling measured in the same
rounds at the same thread count; then the image-count sweep (time and memory per image
from 100 to 10,000 images). A thin script over `pmtiqa_deploy.bench` (what `pmtiqa-bench`
runs), so what is timed is what users run.

    python benchmarks/bench_cpu.py --builtin                      # the full table (defaults)
    python benchmarks/bench_cpu.py --builtin --backbones resnet18 --threads 2 --batch 8
    python benchmarks/bench_cpu.py --model DIR --checkpoint DIR --builtin   # a model of yours

Models. Without --model, each backbone gets a timing model (`timing_model`): an untrained
PMT-IQA whose BatchNorm statistics come from built-in images' crops and whose regression
head is rescaled so their scores spread over 10..90 (what the export tests' fixture does),
exported by `pmtiqa-export` with FP16 and INT8 (INT8 calibrated on the built-in dataset,
one image per distortion type and level). Its speed is a trained model's (same graph,
same shapes); its SRCC against MOS means nothing, its agreement with PyTorch still does
(it is written with --allow-drift, so parity.json in the work folder records any FP16 or
INT8 drift beyond the gates instead of stopping the benchmark).

Printed and written (--json, default benchmarks/bench_cpu.json): the rows (Markdown
table), per model, thread count and batch the ratios ONNX Runtime FP32 / PyTorch eager
and INT8 / FP32 (images/s, same rounds), and the targets: ResNet-50 ONNX Runtime FP32 end
to end >= 0.85 of the ceiling at its best thread count; INT8 >= 2.5x FP32 on a CPU with
VNNI; end to end >= 0.9x model-only. With the CPU model and flags, the BLAS environment,
the load average before and after, and the command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from pmtiqa_deploy import bench, report

CEILING_TARGET, INT8_TARGET, E2E_TARGET = 0.85, 2.5, 0.9
BACKENDS = ("onnxruntime:fp32", "onnxruntime:fp16", "onnxruntime:int8", "torch:fp32")


def log(message: str) -> None:
    print(message, file=sys.stderr)


def timing_model(backbone: str, images: list[Path], workdir: Path, crop_count: int,
                 builtin_root: Path | None) -> tuple[Path, Path]:
    """(model_dir, checkpoint_dir) of an untrained, calibrated model (module docstring)."""
    import numpy as np
    import torch

    from pmtiqa_deploy.export.pipeline import ExportOptions, export_model
    from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
    from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import ModelConfig, build_model

    name = f"{backbone}-{crop_count}crops"
    model_dir, checkpoint = workdir / f"{name}-model", workdir / f"{name}-checkpoint"
    if (model_dir / "model.json").is_file() and (checkpoint / "checkpoint.json").is_file():
        return model_dir, checkpoint
    torch.manual_seed(0)
    preprocess = PreprocessSpec(crop_count=crop_count)
    model = build_model(ModelConfig(backbone=backbone), backbone_weights="random")
    calibration = images[:8]
    calibrate_untrained(model, np.concatenate(
        [normalize(crops_uint8(decode_image(p), preprocess), preprocess) for p in calibration]), crop_count)
    training = {"note": "untrained timing model: BatchNorm statistics from built-in images, head "
                        "rescaled (benchmarks/bench_cpu.py)"}
    if builtin_root is not None:  # INT8 calibrates on the built-in dataset's strata
        training.update(dataset="builtin", root=str(builtin_root))
    info = CheckpointInfo(config=model.config, preprocess=preprocess,
                          score=ScoreSpec.from_levels(0.0, 100.0, model.config.num_levels, dataset="untrained"),
                          training=training)
    save_checkpoint(model, checkpoint, info)
    parity = workdir / f"{name}-parity-images"
    parity.mkdir(parents=True, exist_ok=True)
    for path in calibration:
        target = parity / f"{path.parent.name}_{path.name}"
        if not target.exists():
            target.symlink_to(path.resolve())
    options = ExportOptions(engine=False, int8=True, allow_drift=True, parity_images=parity,
                            calibration_images=None if builtin_root else parity)
    export_model(checkpoint, model_dir, options, log=log)
    return model_dir, checkpoint


def _ips(rows: list[bench.BenchRow], backend: str, precision: str, threads: int, batch: int,
         field: str = "images_per_s") -> float | None:
    wanted = (backend, precision, threads, batch)
    row = next((r for r in rows if (r.backend, r.precision, r.threads, r.batch) == wanted and r.status == "ok"),
               None)
    return None if row is None else getattr(row, field)


def ratios(model: str, rows: list[bench.BenchRow], threads: list[int], batches: list[int]) -> list[dict]:
    """Per thread count and batch: ORT FP32 / torch, INT8 / FP32, FP16 / FP32, e2e / model."""
    out = []
    for t in threads:
        for b in batches:
            fp32 = _ips(rows, "onnxruntime", "fp32", t, b)
            entry = {"model": model, "threads": t, "batch": b}
            for name, (backend, precision) in {"ort_fp32_vs_torch": ("torch", "fp32"),
                                               "int8_vs_fp32": ("onnxruntime", "int8"),
                                               "fp16_vs_fp32": ("onnxruntime", "fp16")}.items():
                other = _ips(rows, backend, precision, t, b)
                if fp32 and other:
                    entry[name] = fp32 / other if name == "ort_fp32_vs_torch" else other / fp32
            entry["fp32_end_to_end_ratio"] = _ips(rows, "onnxruntime", "fp32", t, b, "end_to_end_ratio")
            entry["fp32_end_to_end_ceiling_fraction"] = _ips(rows, "onnxruntime", "fp32", t, b,
                                                             "end_to_end_ceiling_fraction")
            out.append(entry)
    return out


def verdicts(summary: list[dict], vnni: bool) -> list[str]:
    lines = []
    r50 = [s for s in summary if "resnet50" in s["model"] and s.get("fp32_end_to_end_ceiling_fraction")]
    if r50:
        best = max(r50, key=lambda s: s["fp32_end_to_end_ceiling_fraction"])
        value = best["fp32_end_to_end_ceiling_fraction"]
        lines.append(f"ResNet-50 ONNX Runtime FP32 end to end: {value:.2f} of the ceiling at its best "
                     f"({best['threads']} threads, batch {best['batch']}): "
                     f"{'meets' if value >= CEILING_TARGET else 'misses'} the {CEILING_TARGET} target")
    int8 = [s["int8_vs_fp32"] for s in summary if "int8_vs_fp32" in s]
    if int8:
        where = "a CPU with VNNI" if vnni else "a CPU without VNNI (the target is for VNNI CPUs)"
        missed = sum(value < INT8_TARGET for value in int8)
        lines.append(f"INT8 / FP32 images/s: {min(int8):.2f}x..{max(int8):.2f}x (median "
                     f"{statistics.median(int8):.2f}x) on {where}; target {INT8_TARGET}x: "
                     + (f"missed by {missed} of {len(int8)} rows" if missed else "met by every row"))
    e2e = [s["fp32_end_to_end_ratio"] for s in summary if s.get("fp32_end_to_end_ratio")]
    if e2e:
        lines.append(f"end to end / model-only (ONNX Runtime FP32): {min(e2e):.2f}..{max(e2e):.2f} "
                     f"(target {E2E_TARGET})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported model directory instead of timing models")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint --model was exported from")
    parser.add_argument("--backbones", default="resnet18,resnet50", help="timing models to build [%(default)s]")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pmtiqa-bench-cpu"),
                        help="where timing models are written (and reused)")
    parser.add_argument("--crops", type=int, default=9, help="crops per image of the timing models")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images")
    source.add_argument("--builtin", action="store_true", help="the built-in dataset")
    parser.add_argument("--batch", default="1,8", help="batch sizes [%(default)s]")
    parser.add_argument("--threads", default=None, help="thread counts [1,..,CPUs]")
    parser.add_argument("--limit", type=int, default=32, help="images end to end and for agreement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="timed batches per row, over the rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--counts", default="100,1000,10000",
                        help="image-count sweep ('' to skip) [%(default)s]")
    parser.add_argument("--count-model", default="resnet18", help="timing model of the count sweep")
    parser.add_argument("--count-backend", default="onnxruntime:int8", help="its backend [%(default)s]")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_cpu.json"))
    args = parser.parse_args(argv)
    cpus = bench.available_cpus()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cpus + 1))
    batches = [int(b) for b in args.batch.split(",")]
    load_before, started = os.getloadavg(), time.perf_counter()

    images = (bench.builtin_images(limit=args.limit) if args.builtin
              else bench.images_from_folder(args.images, args.limit))
    builtin_root = Path(images.source.split(":", 1)[1]) if args.builtin else None
    models = {}
    if args.model:
        models[args.model.name] = (args.model, args.checkpoint)
    else:
        for backbone in args.backbones.split(","):
            models[backbone] = timing_model(backbone, list(images.paths), args.workdir, args.crops,
                                            builtin_root)

    all_rows, summary, metas = [], [], {}
    for name, (model_dir, checkpoint) in models.items():
        print(f"== {name}", file=sys.stderr)
        result = bench.run_benchmark(model_dir, images, backends=BACKENDS, batches=batches, threads=threads,
                                     warmup=args.warmup, iterations=args.iterations, rounds=args.rounds,
                                     checkpoint=checkpoint, log=log)
        for row in result.rows:
            row.file = f"{name}/{row.file}" if row.file else name
        all_rows += result.rows
        summary += ratios(name, result.rows, threads, batches)
        metas[name] = result.meta
        print(f"\n{name} ({result.meta['gflop_per_crop'] or 0:.2f} GFLOP per crop)\n"
              + report.table(result.rows, markdown=True))

    points = []
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    if counts and args.count_model in models:
        model_dir, checkpoint = models[args.count_model]
        points = bench.run_count_sweep(model_dir, images, bench.BackendChoice.parse(args.count_backend),
                                       batch=max(batches), threads=max(threads), counts=counts,
                                       checkpoint=checkpoint, log=log)
        print("\n" + report.count_table(points))

    first = next(iter(metas.values()))
    lines = verdicts(summary, "avx512_vnni" in first["cpu_flags"] or "avx_vnni" in first["cpu_flags"])
    print("\n" + "\n".join(f"- {line}" for line in lines))
    for entry in summary:
        print("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in entry.items()))
    merged = bench.BenchResult(all_rows, images=images, meta={**first, "models": metas})
    report.write_json(merged, args.json, points, command=shlex.join([sys.executable, *sys.argv]),
                      summary=summary, verdicts=lines, load_average_before=list(load_before),
                      load_average_after=list(os.getloadavg()), seconds=time.perf_counter() - started,
                      cpus=cpus)
    print(f"wrote {args.json} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
