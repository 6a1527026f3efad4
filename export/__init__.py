"""Export side: checkpoint -> ONNX (FP32, FP16) -> TensorRT engine, the spec beside them and
a parity check against PyTorch after every export. Installed as `pmtiqa_deploy.export`;
needs the `export` extra."""
