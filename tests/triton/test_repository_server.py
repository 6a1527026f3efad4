"""End to end on a real tritonserver (the one nvidia-pytriton ships, Python backend only)
over the repository `pmtiqa-export --triton-repo ... --triton-network python` wrote:
preprocessing, aggregation and the ensemble exactly as shipped, the network the CPU/test
variant (the runtime's Scorer on ONNX Runtime). One server for the module, on 127.0.0.1."""

import pytest

from served import check_broken_image_alone, check_burst, check_same_as_local

pytest.importorskip("tritonclient", reason="the triton extra (tritonclient) is not installed")


@pytest.fixture(scope="module")
def server(triton_install, exported, tmp_path_factory):
    from pmtiqa_deploy.triton.server import tritonserver

    process = tritonserver(triton_install, exported[1], tmp_path_factory.mktemp("tritonserver"))
    with process:
        yield process.start(timeout=120)


def test_scores_equal_local_scoring_over_http(server, exported, inputs):
    check_same_as_local(server.url, exported[0], inputs)


def test_scores_equal_local_scoring_over_grpc(server, exported, inputs):
    check_same_as_local(server.grpc_url, exported[0], inputs)


def test_a_broken_image_fails_alone(server, inputs):
    check_broken_image_alone(server.url, inputs)


def test_a_burst_of_concurrent_requests_is_answered(server, inputs):
    check_burst(server.url, inputs)
