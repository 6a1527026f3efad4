"""The client's and the command lines' behaviour without a server: URLs, an unreachable
server (exit 2, nothing scored), and options that do not go together."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient", reason="the triton extra (tritonclient) is not installed")

from pmtiqa_deploy.cli import bench_command, score_command  # noqa: E402
from pmtiqa_deploy.errors import ServerError  # noqa: E402
from pmtiqa_deploy.triton.client import ServerScorer, parse_url  # noqa: E402
from pmtiqa_deploy.triton.server import free_port  # noqa: E402


def test_urls():
    assert parse_url("http://127.0.0.1:8000") == ("http", "127.0.0.1:8000")
    assert parse_url("localhost:8000") == ("http", "localhost:8000")
    assert parse_url("grpc://server:8001/") == ("grpc", "server:8001")
    for bad in ("ftp://server:21", "http://server:8000/v2/models", "grpc://"):
        with pytest.raises(ServerError, match="not of the form"):
            parse_url(bad)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_an_unreachable_server_is_a_clear_error(scheme):
    with pytest.raises(ServerError, match="cannot reach the server"):
        ServerScorer.open(f"{scheme}://127.0.0.1:{free_port()}", timeout=5)


def test_score_with_an_unreachable_server_exits_2(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"whatever")
    result = CliRunner().invoke(score_command, [str(image), "--server", f"http://127.0.0.1:{free_port()}",
                                                "--no-progress"])
    assert result.exit_code == 2 and "cannot reach the server" in result.output and result.stdout == ""


@pytest.mark.parametrize("command, args, message", [
    (score_command, ["a.png", "--server", "http://h:1", "--backend", "null"], "--backend choose(s) a local"),
    (score_command, ["a.png", "--server", "http://h:1", "--model", "m", "--pad"], "--model, --pad"),
    (score_command, ["a.png"], "give --model DIR (or --server URL)"),
    (bench_command, ["--builtin", "--model", "m", "--concurrency", "4"], "--concurrency go(es) with --server"),
    (bench_command, ["--builtin", "--server", "http://h:1", "--checkpoint", "."], "--checkpoint measure(s)"),
    (bench_command, ["--builtin"], "give --model DIR (or --server URL)"),
])
def test_options_that_do_not_go_together(command, args, message):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2 and message in result.output, result.output
