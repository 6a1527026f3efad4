"""Serving on NVIDIA Triton Inference Server: everything on the runtime's side of it.

- `contract`: the served model's name, inputs and outputs, which the repository that
  `pmtiqa-export --triton-repo` writes (export/triton.py), `pmtiqa-serve` and the client
  share, so one client works against both;
- `stages`: the served pipeline's steps as plain functions over the runtime's own
  preprocessing and `Scorer` (bytes -> crops or an error per image; scores -> rows);
- `models`: the Python-backend models of the repository (preprocessing, aggregation, and
  the CPU/test network), thin glue from Triton's requests to `stages`;
- `serve`: `pmtiqa-serve`, the runtime's `Scorer` behind PyTriton;
- `client`: `ServerScorer`, scoring files through a server (`pmtiqa-score --server`);
- `bench`: latency percentiles and images/s under N concurrent clients
  (`pmtiqa-bench --server`);
- `server`: starting and stopping a local tritonserver or `pmtiqa-serve` process, for the
  tests and benchmarks/bench_serve.py.
"""
