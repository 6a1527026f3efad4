"""Local server processes for the tests and benchmarks/bench_serve.py: the tritonserver that
nvidia-pytriton ships, over a repository pmtiqa-export wrote, and `pmtiqa-serve`.

Both run from a Python environment that has nvidia-pytriton (it needs numpy<2, so it is
usually not the environment the client runs in; scripts/triton_env.sh makes one). Every
server listens on 127.0.0.1 only, on free ports, in its own process group; `start` waits
a bounded time for the `pmtiqa` model to be ready and `stop` ends the group (SIGTERM,
then SIGKILL after a bounded wait), so no server outlives its owner's `with` block.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pmtiqa_deploy.errors import BackendUnavailable, ServerError
from pmtiqa_deploy.triton import contract

# Run by the environment's Python: where pytriton's tritonserver and the Python library are.
_LOCATE = """
import json, sys, sysconfig
try:
    import pytriton
except ImportError as exc:
    print(json.dumps({"error": str(exc)})); sys.exit(0)
from pathlib import Path
root = Path(pytriton.__file__).parent
print(json.dumps({"root": str(root / "tritonserver"), "libs": str(root.parent / "nvidia_pytriton.libs"),
                  "version": "%d.%d" % sys.version_info[:2], "libdir": sysconfig.get_config_var("LIBDIR"),
                  "prefix": sys.prefix}))
"""


@dataclass(frozen=True)
class TritonInstall:
    """The tritonserver of nvidia-pytriton in the environment of `python`."""

    python: Path
    root: Path
    libs: Path
    version: str
    libdir: str
    prefix: Path

    @classmethod
    def find(cls, python: str | os.PathLike) -> TritonInstall:
        """Locate it; BackendUnavailable (saying how to make the environment) when absent."""
        hint = "make the environment with: bash scripts/triton_env.sh"
        if not Path(python).is_file():
            raise BackendUnavailable(f"no Python at {python}; {hint}")
        done = subprocess.run([str(python), "-c", _LOCATE], capture_output=True, text=True, timeout=60)
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
            "error": done.stderr.strip()[-500:]}
        if "error" in found:
            raise BackendUnavailable(f"{python} has no nvidia-pytriton ({found['error']}); {hint}")
        install = cls(Path(python), Path(found["root"]), Path(found["libs"]), found["version"],
                      found["libdir"] or "", Path(found["prefix"]))
        if not install.server.is_file() or not install.stub.is_file():
            raise BackendUnavailable(f"nvidia-pytriton in {python} lacks tritonserver or the Python "
                                     f"{install.version} backend stub; {hint}")
        return install

    @property
    def server(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.version / "triton_python_backend_stub"

    def environment(self) -> dict[str, str]:
        """The server's environment: the stub runs the environment's Python (found on PATH)
        and needs libpython (from the Python's LIBDIR) and the wheel's own libraries."""
        env = dict(os.environ)
        paths = [str(self.libs), self.libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{self.prefix / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        return env

    def backends(self, folder: Path) -> Path:
        """A backend folder for tritonserver: the wheel's Python backend with the stub of
        this Python version beside it (links; nothing in the environment is changed)."""
        python = folder / "python"
        python.mkdir(parents=True, exist_ok=True)
        shipped = self.root / "backends" / "python"
        for source in [*shipped.iterdir(), self.stub]:
            target = python / source.name
            if not target.exists():
                target.symlink_to(source)
        return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """One server process (see the module docstring). `url` and `grpc_url` are for
    `ServerScorer.open`; the server's output goes to `log`."""

    def __init__(self, command: list[str], env: dict[str, str], http_port: int, grpc_port: int,
                 log: Path, what: str):
        self.command, self.env, self.log, self.what = command, env, log, what
        self.http_port, self.grpc_port = http_port, grpc_port
        self.process: subprocess.Popen | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start the process and wait until the `pmtiqa` model is ready; ServerError (with
        the end of the server's log) when it exits or is not ready within `timeout`."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log, "wb")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self._log_handle,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        ready = f"{self.url}/v2/models/{contract.MODEL_NAME}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise ServerError(f"{self.what} exited with code {self.process.returncode} before "
                                  f"its model was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"{self.what} was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """End the process group: SIGTERM, then SIGKILL after `timeout` seconds. Safe to
        call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(10)
        if process is not None:  # children the leader left behind (Python-backend stubs)
            _signal_group(process, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tritonserver(install: TritonInstall, repository: str | os.PathLike, workdir: str | os.PathLike,
                 *extra: str) -> ServerProcess:
    """tritonserver over `repository` (not started; call `start`). `workdir` holds the
    backend folder and the log; `extra` are further tritonserver options."""
    workdir = Path(workdir)
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [str(install.server), f"--model-repository={Path(repository).resolve()}",
               f"--backend-directory={install.backends(workdir / 'backends')}",
               "--http-address=127.0.0.1", f"--http-port={http}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
               "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
               "--exit-timeout-secs=10", "--log-info=true", *extra]
    return ServerProcess(command, install.environment(), http, grpc, workdir / "tritonserver.log",
                         "tritonserver")


def pmtiqa_serve(install: TritonInstall, model_dir: str | os.PathLike, workdir: str | os.PathLike,
                 *extra: str) -> ServerProcess:
    """`pmtiqa-serve --model model_dir` run by the environment's Python (not started)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [str(install.python), "-m", "pmtiqa_deploy.triton.serve", "--model", str(model_dir),
               f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", *extra]
    return ServerProcess(command, install.environment(), http, grpc,
                         Path(workdir) / "pmtiqa-serve.log", "pmtiqa-serve")
