"""End to end on `pmtiqa-serve` (PyTriton), run from the server-side environment, through
the same client and checks as the repository on tritonserver. One server for the module."""

import pytest
from click.testing import CliRunner

from served import check_broken_image_alone, check_burst, check_same_as_local

from pmtiqa_deploy.triton.serve import serve_command

pytest.importorskip("tritonclient", reason="the triton extra (tritonclient) is not installed")


@pytest.fixture(scope="module")
def server(triton_install, exported, tmp_path_factory):
    from pmtiqa_deploy.triton.server import pmtiqa_serve

    process = pmtiqa_serve(triton_install, exported[0], tmp_path_factory.mktemp("pmtiqa-serve"),
                           "--threads", "2")
    with process:
        yield process.start(timeout=180)


def test_scores_equal_local_scoring(server, exported, inputs):
    check_same_as_local(server.url, exported[0], inputs)
    check_same_as_local(server.grpc_url, exported[0], inputs)


def test_a_broken_image_fails_alone(server, inputs):
    check_broken_image_alone(server.url, inputs)


def test_a_burst_of_concurrent_requests_is_answered(server, inputs):
    check_burst(server.url, inputs)


def test_a_missing_model_directory_is_exit_2(tmp_path):
    result = CliRunner().invoke(serve_command, ["--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2
