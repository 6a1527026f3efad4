"""The skip gate of .ci/run (.ci/skip_gate.py): on pytest's own JUnit XML, a skip whose
reason names no missing GPU or library fails, a category past its count fails, the
counts print in the file's format, and the repository's list parses."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATE = ROOT / ".ci" / "skip_gate.py"
EXPECTED = """\
# comment
2  gpu: needs a CUDA GPU
1  tensorrt: TensorRT is not installed
"""


def _junit(tmp_path: Path, body: str) -> Path:
    """Run pytest on a tiny test file and return its JUnit XML: the gate reads the very
    format pytest writes, not a hand-made imitation."""
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(body))
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
                   cwd=tmp_path, capture_output=True, check=False)
    return junit


def _gate(junit: Path, expected: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GATE), str(junit), str(expected)],
                          capture_output=True, text=True, check=False)


def test_named_skips_within_their_counts_pass(tmp_path):
    junit = _junit(tmp_path, """
        import pytest
        def test_a(): pytest.skip("needs a CUDA GPU (cudaGetDeviceCount: none)")
        def test_b(): pytest.skip("TensorRT is not installed here")
        def test_c(): pass
        @pytest.mark.xfail(reason="known")
        def test_d(): assert False
    """)
    (tmp_path / "expected").write_text(EXPECTED)
    done = _gate(junit, tmp_path / "expected")
    assert done.returncode == 0, done.stderr
    assert "  1   gpu: needs a CUDA GPU" in done.stdout and "  1   tensorrt:" in done.stdout


def test_unnamed_reason_and_growth_fail(tmp_path):
    junit = _junit(tmp_path, """
        import pytest
        @pytest.mark.parametrize("i", range(3))
        def test_gpu(i): pytest.skip("needs a CUDA GPU")
        def test_hidden():
            try:
                raise RuntimeError("boom")
            except RuntimeError as exc:
                pytest.skip(f"flaky ({exc})")
    """)
    (tmp_path / "expected").write_text(EXPECTED)
    done = _gate(junit, tmp_path / "expected")
    assert done.returncode == 1
    assert "test_hidden skipped for a reason that names no missing GPU or library: 'flaky (boom)'" in done.stderr
    assert "3 tests skipped as 'gpu', " in done.stderr and "raise the count there to 3" in done.stderr


def test_the_repository_list_parses_and_every_category_names_a_gpu_or_library():
    spec = importlib.util.spec_from_file_location("skip_gate", GATE)
    gate = importlib.util.module_from_spec(spec)
    sys.modules["skip_gate"] = gate  # dataclasses look their module up there
    spec.loader.exec_module(gate)
    categories = gate.read_categories(ROOT / ".ci" / "expected-skips")
    assert categories and len({c.name for c in categories}) == len(categories)
    words = ("gpu", "cuda", "nvcc", "tensorrt", "library", "installed", "not found")
    assert all(any(w in c.pattern.pattern.lower() for w in words) for c in categories)
