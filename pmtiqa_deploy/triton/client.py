"""Scoring image files through a server: `ServerScorer`, what `pmtiqa-score --server URL`
runs. It works against both servers of this package (the Triton repository's `pmtiqa`
ensemble and `pmtiqa-serve`), over HTTP (`http://host:8000`, or `host:8000`) or gRPC
(`grpc://host:8001`), with tritonclient.

It gives the rows local scoring gives (`Scorer.score_files`): one `ScoreRow` per path, in
input order, a file that cannot be read or decoded costing its own error row with the
same text (the server runs the runtime's preprocessing on the bytes; see `stages`).
Requests of up to `batch_size` images are sent by `concurrency` threads, each with its own
connection, at most 2 x `concurrency` requests ahead of the rows handed out, so memory
stays flat in the number of files. A request the server fails (or a lost connection)
raises ServerError: the rows before it have been handed out.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tritonclient.grpc
import tritonclient.http
from tritonclient.utils import InferenceServerException

from pmtiqa_deploy.errors import ServerError
from pmtiqa_deploy.preprocess import read_image_file
from pmtiqa_deploy.score import ScoreRow, load_or_error
from pmtiqa_deploy.triton import contract, stages

PROTOCOLS = {"http": tritonclient.http, "grpc": tritonclient.grpc}
# What a failed connection raises besides tritonclient's own exception.
_CONNECTION_ERRORS = (InferenceServerException, ConnectionError, OSError, TimeoutError)


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, host:port) of `http://host:port`, `grpc://host:port` or `host:port` (HTTP)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in PROTOCOLS or not parts.netloc or parts.path not in ("", "/"):
        raise ServerError(f"server URL {url!r} is not of the form http://HOST:PORT or "
                          "grpc://HOST:PORT (Triton's defaults: HTTP 8000, gRPC 8001)")
    return parts.scheme, parts.netloc


class ServerScorer:
    """Scores image files through a server's `pmtiqa` model (see the module docstring).
    Use `ServerScorer.open` (it checks the server first) and as a context manager."""

    def __init__(self, url: str, *, batch_size: int = 8, concurrency: int = 4,
                 timeout: float = 120.0, model: str = contract.MODEL_NAME):
        self.protocol, self.address = parse_url(url)
        self.url, self.model = url, model
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.batch_size, self.concurrency, self.timeout = batch_size, concurrency, timeout
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, url: str, *, batch_size: int | None = None, concurrency: int = 4,
             timeout: float = 120.0, model: str = contract.MODEL_NAME) -> ServerScorer:
        """A ServerScorer after checking that the server's model is ready and is ours
        (input and outputs of `contract`); batch_size defaults to min(8, the model's
        max_batch_size) and may not exceed it."""
        scorer = cls(url, batch_size=1, concurrency=concurrency, timeout=timeout, model=model)
        try:
            largest = scorer.check()
            if batch_size is not None and batch_size > largest:
                raise ServerError(f"--batch {batch_size} is more than the server's model takes "
                                  f"per request ({largest}); choose at most {largest}")
            scorer.batch_size = batch_size or min(8, largest)
            return scorer
        except BaseException:
            scorer.close()
            raise

    def check(self) -> int:
        """Raise ServerError unless the model is ready and has the contract's tensors;
        returns its max_batch_size."""
        client = self._client()
        try:
            if not client.is_model_ready(self.model):
                raise ServerError(f"the server at {self.url} has no ready model {self.model!r}; "
                                  "start it with pmtiqa-serve or tritonserver --model-repository")
            metadata = client.get_model_metadata(self.model)
            config = client.get_model_config(self.model)
        except _CONNECTION_ERRORS as exc:
            raise ServerError(f"cannot reach the server at {self.url} ({exc}); check the URL "
                              "and that the server is running") from None
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            metadata, config = MessageToDict(metadata), MessageToDict(config)["config"]
        inputs = [tensor["name"] for tensor in metadata.get("inputs", [])]
        outputs = {tensor["name"] for tensor in metadata.get("outputs", [])}
        if inputs != [contract.IMAGE] or not set(contract.OUTPUTS) <= outputs:
            raise ServerError(f"model {self.model!r} at {self.url} takes {inputs} and gives "
                              f"{sorted(outputs)}, not {contract.IMAGE!r} -> {list(contract.OUTPUTS)}: "
                              "it is not a pmtiqa model")
        return int(config.get("max_batch_size") or config.get("maxBatchSize") or 1)

    # --- requests --------------------------------------------------------------------------

    def infer(self, images: Sequence[bytes]) -> dict[str, np.ndarray]:
        """One request: the served outputs for encoded image files."""
        module = PROTOCOLS[self.protocol]
        array = np.array(list(images), dtype=object).reshape(-1, 1)
        request = module.InferInput(contract.IMAGE, list(array.shape), "BYTES")
        request.set_data_from_numpy(array)
        wanted = [module.InferRequestedOutput(name) for name in contract.OUTPUTS]
        options = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self._client().infer(self.model, [request], outputs=wanted, **options)
        except _CONNECTION_ERRORS as exc:
            raise ServerError(f"the server at {self.url} failed a request of {len(images)} "
                              f"image(s): {exc}") from None
        return {name: result.as_numpy(name) for name in contract.OUTPUTS}

    def score_chunk(self, paths: Sequence[str]) -> list[ScoreRow]:
        """Rows for a few paths: files read here, the readable ones scored in one request."""
        loaded = [load_or_error(read_image_file, path) for path in paths]
        rows = [ScoreRow(path, error=error) for path, (_, error) in zip(paths, loaded)]
        sent = {index: data for index, (data, _) in enumerate(loaded) if data is not None}
        if sent:
            outputs = self.infer(list(sent.values()))
            for index, row in zip(sent, stages.rows_from_tensors([paths[i] for i in sent], outputs)):
                rows[index] = row
        return rows

    def score_files(self, paths: Iterable[str | os.PathLike]) -> Iterator[ScoreRow]:
        """One row per path, in input order (see the module docstring)."""
        pool = self._executor()
        source = iter(paths)
        window: deque[Future] = deque()
        try:
            while True:
                while len(window) < 2 * self.concurrency:
                    chunk = [os.fspath(p) for _, p in zip(range(self.batch_size), source)]
                    if not chunk:
                        break
                    window.append(pool.submit(self.score_chunk, chunk))
                if not window:
                    return
                yield from window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    # --- connections -----------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            module = PROTOCOLS[self.protocol]
            options = ({"connection_timeout": self.timeout, "network_timeout": self.timeout}
                       if self.protocol == "http" else {})
            client = module.InferenceServerClient(self.address, **options)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pmtiqa-client")
            return self._pool

    def close(self) -> None:
        """Wait for requests in flight and close every connection. Safe to call twice."""
        with self._lock:
            pool, self._pool = self._pool, None
            clients, self._clients = self._clients, []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()

    def __enter__(self) -> ServerScorer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
