"""The served interface: one model, `pmtiqa`, the same whether it is the ensemble of the
repository that `pmtiqa-export --triton-repo` writes or `pmtiqa-serve` (PyTriton).

Input, batched (max_batch_size from the spec's batch_max):
    image  TYPE_STRING [1]   one encoded image file (JPEG, PNG, ...) per batch row
Outputs, one row per image:
    score  TYPE_FP32   [1]   in the spec's units; NaN when the image failed
    level  TYPE_INT64  [1]   quality level 0..K-1; -1 when the image failed
    error  TYPE_STRING [1]   empty when scored, else why this image was not (the text
                             local `pmtiqa-score` writes for the same failure)

A broken image is answered with its own error; the other images of the request are scored.
Inside the repository the ensemble chains three models (names below): preprocessing
(image -> the network's input crops and an error per image), the network (crops -> score
per image, the graph averaging its crops) and aggregation (score and error -> the outputs).
"""

from __future__ import annotations

MODEL_NAME = "pmtiqa"
IMAGE = "image"
SCORE, LEVEL, ERROR = "score", "level", "error"
OUTPUTS = (SCORE, LEVEL, ERROR)

PREPROCESS_MODEL = "pmtiqa_preprocess"
NETWORK_MODEL = "pmtiqa_network"
AGGREGATE_MODEL = "pmtiqa_aggregate"
# Aggregation's inputs: the network's score and the preprocessing model's error output.
NETWORK_SCORE = "network_score"
PREPROCESS_ERROR = "preprocess_error"

# Triton data types of the spec's input dtypes.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8"}
