"""`pmtiqa-serve --model DIR`: the runtime's `Scorer` served on Triton through PyTriton
(Triton's Python-side server), as model `pmtiqa` with the inputs and outputs of
`contract`, the same as the repository's ensemble, so one client works against both.

A request's images are decoded and preprocessed on a thread pool with the runtime's
reference preprocessing (`stages.prepare_images`), scored by one `Scorer` (its batches
of `--batch` images, on any backend the runtime has), and answered as rows
(`stages.rows_from_scores`): a broken image is its own error, the others are scored.
Triton's dynamic batcher merges concurrent requests up to the model's largest batch;
`--instances` inference callables share the Scorer (its backend calls are serialised),
so one batch decodes while another runs.

pytriton is imported inside the command (it needs numpy<2; scripts/triton_env.sh makes
an environment for it), so --help runs anywhere. SIGTERM stops the server as Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from pmtiqa_deploy.backends import BACKENDS
from pmtiqa_deploy.errors import PmtIqaError
from pmtiqa_deploy.triton import contract


def infer_function(scorer: Any, pool: ThreadPoolExecutor):
    """The batched callable PyTriton binds: {"image": [B, 1] bytes} -> the served outputs."""
    import numpy as np

    from pmtiqa_deploy.triton import stages

    spec = scorer.spec

    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        crops, errors = stages.prepare_images(stages.image_bytes(image), spec, pool.map)
        good = [i for i, error in enumerate(errors) if error is None]
        scores = np.full(len(errors), np.nan, dtype=np.float32)
        if good:
            scores[good] = scorer.score_crops([crops[i] for i in good])[0]
        return stages.row_tensors(stages.rows_from_scores(scores, errors, spec, scorer.backend.name))

    return infer


def _stop_on_sigterm() -> None:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Exported model directory (model.json beside the model files).")
@click.option("--backend", default="onnxruntime", show_default=True,
              type=click.Choice(sorted(set(BACKENDS) - {"torch"})), help="Inference backend.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]),
              help="Model precision [onnxruntime: fp32; tensorrt: the spec's engine].")
@click.option("--device", help="onnxruntime: cpu or cuda; tensorrt: GPU index.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1),
              help="Images per backend batch [the model's optimal batch from model.json].")
@click.option("--workers", type=click.IntRange(min=1), help="Decode threads [min(4, CPUs)].")
@click.option("--instances", default=2, show_default=True, type=click.IntRange(min=1),
              help="Inference callables (requests handled at once; they share the backend).")
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(min=0),
              help="Dynamic batching: how long a request may wait for others to join its batch.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(0, 65535))
def serve_command(model_dir, backend, precision, device, threads, batch_size, workers, instances,
                  queue_delay_us, address, http_port, grpc_port, metrics_port) -> None:
    """Serve an exported model on Triton through PyTriton, as model `pmtiqa`: image file bytes
    in (input `image`); score, level and error out, one per image. Score through it with
    `pmtiqa-score --server http://HOST:PORT` or any Triton client.

    Exit code: 0 stopped (Ctrl-C or SIGTERM), 2 it could not start.
    """
    if not model_dir.is_dir():
        click.echo(f"error: model directory {model_dir} does not exist: export one with "
                   "`pmtiqa-export CHECKPOINT -o DIR` and pass --model DIR", err=True)
        sys.exit(2)
    try:
        import numpy as np
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        click.echo(f"error: pmtiqa-serve needs nvidia-pytriton ({exc.name or exc}): "
                   "pip install 'pmtiqa-deploy[serve]' (it needs numpy<2; "
                   "scripts/triton_env.sh makes such an environment)", err=True)
        sys.exit(2)
    from pmtiqa_deploy.score import Scorer

    try:
        # Requests are preprocessed on the CPU threads with Scorer.load (the reference).
        scorer = Scorer.open(model_dir, backend, batch_size=batch_size, precision=precision,
                             device=device, threads=threads, preprocess="cpu")
    except (PmtIqaError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    spec = scorer.spec
    _stop_on_sigterm()
    config = TritonConfig(http_address=address, http_port=http_port, grpc_address=address,
                          grpc_port=grpc_port, metrics_address=address, metrics_port=metrics_port)
    with scorer, ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1),
                                    thread_name_prefix="pmtiqa-decode") as pool:
        try:
            with Triton(config=config) as triton:
                triton.bind(
                    model_name=contract.MODEL_NAME,
                    infer_func=[_batched(infer_function(scorer, pool)) for _ in range(instances)],
                    inputs=[Tensor(name=contract.IMAGE, dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name=contract.SCORE, dtype=np.float32, shape=(1,)),
                             Tensor(name=contract.LEVEL, dtype=np.int64, shape=(1,)),
                             Tensor(name=contract.ERROR, dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=spec.input.batch_max,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
                    strict=True)
                click.echo(f"serving {model_dir} ({scorer.backend.name}) as model "
                           f"{contract.MODEL_NAME!r}: http://{address}:{http_port}, "
                           f"grpc://{address}:{grpc_port}", err=True)
                triton.serve()
        except KeyboardInterrupt:
            pass


def _batched(function):
    from pytriton.decorators import batch

    return batch(function)


if __name__ == "__main__":
    serve_command()
