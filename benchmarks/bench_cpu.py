"""CPU benchmark: ONNX Runtime (FP32) against PyTorch eager at the same batch size and thread
count, and end-to-end scoring from image files against model-only throughput. A thin
script over `pmtiqa_deploy.bench` (the library `pmtiqa-bench` runs), so what is timed is
what users run.

    python benchmarks/bench_cpu.py --model DIR --checkpoint DIR [--images DIR | --builtin]
        [--batch 8] [--threads 2] [--limit 32] [--json benchmarks/bench_cpu.json]
    python benchmarks/bench_cpu.py --timing-model resnet50 --workdir /tmp/bench50 --builtin

Targets: ONNX Runtime >= 1.3x PyTorch eager images/s; end to end >= 0.9x model-only.

`--timing-model BACKBONE` builds and exports a model for timing when no trained checkpoint
is at hand: an untrained PMT-IQA of that backbone whose BatchNorm statistics come from the
benchmark images' crops and whose regression head is rescaled so their scores spread over
10..90 (what the export tests' fixture does). Its speed is the trained model's (same graph,
same shapes); its SRCC against MOS means nothing, its agreement with PyTorch still does.

The JSON (default benchmarks/bench_cpu.json) holds the `pmtiqa-bench` rows, the two ratios,
the machine, the load average before and after, and the command. These machines are
shared: absolute figures are pessimistic and noisy; the ratios, measured in one run, less so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from pmtiqa_deploy import bench, report

ORT_TARGET, E2E_TARGET = 1.3, 0.9


def timing_model(backbone: str, images: list[Path], workdir: Path, crop_count: int) -> tuple[Path, Path]:
    """(model_dir, checkpoint_dir) of an untrained, calibrated model (module docstring)."""
    import numpy as np
    import torch

    from pmtiqa_deploy.export.pipeline import ExportOptions, export_model
    from pmtiqa_deploy.preprocess import crops_uint8, decode_image, normalize
    from pmtiqa_deploy.spec import PreprocessSpec, ScoreSpec
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import ModelConfig, build_model

    model_dir, checkpoint = workdir / f"{backbone}-model", workdir / f"{backbone}-checkpoint"
    if (model_dir / "model.json").is_file() and (checkpoint / "checkpoint.json").is_file():
        return model_dir, checkpoint
    torch.manual_seed(0)
    preprocess = PreprocessSpec(crop_count=crop_count)
    model = build_model(ModelConfig(backbone=backbone), backbone_weights="random")
    calibration = images[:8]
    calibrate_untrained(model, np.concatenate(
        [normalize(crops_uint8(decode_image(p), preprocess), preprocess) for p in calibration]), crop_count)
    info = CheckpointInfo(config=model.config, preprocess=preprocess,
                          score=ScoreSpec.from_levels(0.0, 100.0, model.config.num_levels, dataset="untrained"),
                          training={"note": "untrained timing model: BatchNorm statistics from the "
                                            "benchmark images, head rescaled (benchmarks/bench_cpu.py)"})
    save_checkpoint(model, checkpoint, info)
    parity = workdir / "parity-images"
    parity.mkdir(parents=True, exist_ok=True)
    for path in calibration:
        target = parity / f"{path.parent.name}_{path.name}"
        if not target.exists():
            target.symlink_to(path.resolve())
    # FP32 only: this script compares FP32 backends, and an untrained backbone under a
    # rescaled head magnifies FP16 rounding past the FP16 parity tolerance.
    export_model(checkpoint, model_dir, ExportOptions(engine=False, fp16=False, parity_images=parity),
                 log=lambda message: print(message, file=sys.stderr))
    return model_dir, checkpoint


def ratio(rows: list[bench.BenchRow], backend: str, field: str) -> float | None:
    row = next((r for r in rows if r.backend == backend and r.status == "ok"), None)
    return None if row is None else getattr(row, field)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="exported model directory")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint it was exported from")
    parser.add_argument("--timing-model", metavar="BACKBONE", help="build and export an untrained model")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pmtiqa-bench-cpu"),
                        help="where --timing-model writes its checkpoint and export")
    parser.add_argument("--crops", type=int, default=9, help="crops per image of the --timing-model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images")
    source.add_argument("--builtin", action="store_true", help="the built-in dataset")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="inference threads for both backends [all cores]")
    parser.add_argument("--workers", type=int, default=None, help="decode threads end to end")
    parser.add_argument("--limit", type=int, default=32, help="images (end to end and agreement)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("bench_cpu.json"))
    args = parser.parse_args(argv)
    if bool(args.timing_model) == bool(args.model):
        parser.error("give either --model DIR --checkpoint DIR or --timing-model BACKBONE")

    images = bench.builtin_images(limit=args.limit) if args.builtin else bench.images_from_folder(args.images, args.limit)
    model_dir, checkpoint = args.model, args.checkpoint
    if args.timing_model:
        model_dir, checkpoint = timing_model(args.timing_model, list(images.paths), args.workdir, args.crops)
    load_before = os.getloadavg()
    result = bench.run_benchmark(model_dir, images, backends=["onnxruntime:fp32", "torch:fp32"],
                                 batches=[args.batch], warmup=args.warmup, iterations=args.iterations,
                                 checkpoint=checkpoint, threads=args.threads, workers=args.workers,
                                 log=lambda message: print(message, file=sys.stderr))
    ort, torch_speed = ratio(result.rows, "onnxruntime", "images_per_s"), ratio(result.rows, "torch", "images_per_s")
    ort_vs_torch = ort / torch_speed if ort and torch_speed else None
    e2e = ratio(result.rows, "onnxruntime", "end_to_end_ratio")
    print(report.table(result.rows))
    lines = []
    if ort_vs_torch is not None:
        verdict = "meets" if ort_vs_torch >= ORT_TARGET else "misses"
        lines.append(f"ONNX Runtime / PyTorch eager images/s: {ort_vs_torch:.2f}x ({verdict} the "
                     f"{ORT_TARGET}x target; batch {args.batch}, {args.threads} threads each)")
    if e2e is not None:
        verdict = "meets" if e2e >= E2E_TARGET else "misses"
        lines.append(f"end to end / model-only (ONNX Runtime): {e2e:.2f}x ({verdict} the {E2E_TARGET}x target)")
    print("\n".join(lines))
    report.write_json(result, args.json, command=shlex.join([sys.executable, *sys.argv]),
                      ort_vs_torch=ort_vs_torch, end_to_end_vs_model_only=e2e,
                      load_average_before=load_before, load_average_after=os.getloadavg(),
                      timing_model=args.timing_model)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
