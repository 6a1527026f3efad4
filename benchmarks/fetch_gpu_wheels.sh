#!/usr/bin/env bash
# Fetch the Python wheels benchmarks/gpu_check.py needs on the GPU machine and that its
# image lacks (KINDS.md's package list): nvImageCodec and nvJPEG for --decode gpu. They go
# into .whl/ (git-ignored), which the device `run` call carries; benchmarks/README.md has
# the call. Run once here, from the repository root, where pip reaches PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# The GPU machine runs Python 3.12 on x86-64 (manylinux); the line is the device README's.
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.0.3.75
ls -l .whl
