#!/usr/bin/env bash
# The server side's Python environment: nvidia-pytriton (PyTriton for pmtiqa-serve, and the
# tritonserver it ships, whose Python backend runs the repository's Python models) with this
# package, OpenCV and ONNX Runtime. nvidia-pytriton needs numpy<2, which the development
# environment (numpy 2) cannot hold, hence an environment of its own.
#
#   bash scripts/triton_env.sh [DIR]      # default DIR: .venv-triton in the repository
#
# The tests that start servers use DIR/bin/python (or $PMTIQA_TRITON_PYTHON) and skip,
# saying so, when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir=${1:-.venv-triton}
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q -e '.[serve]'
"$env_dir/bin/python" - <<'PY'
import sys

import cv2
import numpy
import onnxruntime
import pytriton  # noqa: F401

import pmtiqa_deploy.triton.stages  # noqa: F401

print(f"Triton environment ready in {sys.prefix}: numpy {numpy.__version__}, "
      f"OpenCV {cv2.__version__}, onnxruntime {onnxruntime.__version__}")
PY
