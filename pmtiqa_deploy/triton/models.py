"""The Python-backend models of the Triton repository. The repository's `model.py` files
are one import of a class here (see export/triton.py), so the code Triton runs is the
installed runtime's: install pmtiqa-deploy (with its onnxruntime extra for the CPU/test
network) into the Python that Triton's Python backend uses.

Each model reads `model.json` from its own version folder. A failure of one image is an
error row, never an exception: a Python model that raises fails every request of the
batch (HTTP 500). A failure of a whole request (a wrong input) is that request's error
response; the other requests of the batch are still answered.

This module imports `triton_python_backend_utils`, which exists only inside Triton's
Python-backend stub.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from pmtiqa_deploy.errors import PmtIqaError
from pmtiqa_deploy.score import Scorer, open_backend
from pmtiqa_deploy.spec import ModelSpec
from pmtiqa_deploy.triton import contract, stages


def _spec_and_config(args: dict[str, Any]) -> tuple[ModelSpec, dict[str, Any]]:
    folder = Path(args["model_repository"]) / str(args["model_version"])
    return ModelSpec.load(folder), json.loads(args["model_config"])


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _input(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input {name!r}")
    return tensor.as_numpy()


def _response(outputs: dict[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()])


def _error(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class PreprocessModel:
    """image [B, 1] bytes -> crops [B, N, ...] (the network's input) and preprocess_error
    [B, 1], decoding the images of a batch on a thread pool (OpenCV releases the GIL)."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.spec, config = _spec_and_config(args)
        self.crops_name = self.spec.input.name
        workers = int(_parameter(config, "workers", str(min(4, os.cpu_count() or 1))))
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pmtiqa-decode")

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                images = stages.image_bytes(_input(request, contract.IMAGE))
            except ValueError as exc:
                responses.append(_error(str(exc)))
                continue
            crops, errors = stages.prepare_images(images, self.spec, self.pool.map)
            responses.append(_response({self.crops_name: crops,
                                        contract.PREPROCESS_ERROR: stages.error_tensor(errors)}))
        return responses

    def finalize(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class AggregateModel:
    """network_score [B, 1] and preprocess_error [B, 1] -> the served score, level and error
    (`score.score_row`: the shortest-decimal score, its level, a non-finite score's error)."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.spec, config = _spec_and_config(args)
        self.network = _parameter(config, "network", contract.NETWORK_MODEL)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                scores = _input(request, contract.NETWORK_SCORE)
                errors = stages.errors_from_tensor(_input(request, contract.PREPROCESS_ERROR))
                rows = stages.rows_from_scores(scores, errors, self.spec, self.network)
            except ValueError as exc:
                responses.append(_error(str(exc)))
                continue
            responses.append(_response(stages.row_tensors(rows)))
        return responses


class NetworkModel:
    """The CPU/test network: the runtime's `Scorer` over its ONNX Runtime backend on the
    FP32 ONNX file beside model.json. Requests batched by Triton's dynamic batcher run as
    one batch. For serving on a GPU the repository uses tensorrt_plan or onnxruntime_onnx
    instead; this variant exists because the tritonserver nvidia-pytriton ships has only
    the Python backend."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        config = json.loads(args["model_config"])
        threads = int(_parameter(config, "threads", "0")) or None
        backend = open_backend("onnxruntime", folder, precision="fp32", threads=threads)
        self.scorer = Scorer(backend, owns_backend=True)
        self.input_name = self.scorer.spec.input.name

    def execute(self, requests: list[Any]) -> list[Any]:
        batches, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            try:
                batches.append((index, _input(request, self.input_name)))
            except ValueError as exc:
                responses[index] = _error(str(exc))
        if batches:
            try:
                outputs = self.scorer.infer(np.concatenate([crops for _, crops in batches]))
            except (PmtIqaError, ValueError) as exc:
                for index, _ in batches:
                    responses[index] = _error(f"the network failed on this batch: {exc}")
                return responses
            start = 0
            for index, crops in batches:
                part = {name: value[start:start + len(crops)] for name, value in outputs.items()}
                part[contract.SCORE] = part[contract.SCORE].reshape(-1, 1)
                responses[index] = _response(part)
                start += len(crops)
        return responses

    def finalize(self) -> None:
        self.scorer.close()
