"""pmtiqa-deploy: the PMT-IQA blind image quality model from PyTorch training to a
verified TensorRT FP16 engine.

This package is the runtime (spec, preprocessing, backends, scoring, benchmark). It never
imports torch at module level; `pmtiqa_deploy.train` and `pmtiqa_deploy.export` do.
"""

__version__ = "0.1.0"
