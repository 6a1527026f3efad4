"""What the native build promises beyond scoring: bad input survives AddressSanitizer and
UndefinedBehaviorSanitizer, the one CUDA kernel source compiles with nvcc as NVRTC sees
it (no GPU needed; required in CI) and matches the host preprocessing when run on the CPU
(always) and on a GPU (skipped without one), and the TensorRT backend is built exactly
where TensorRT is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from native_support import IN_CI, REPO, cmake_build, run_abi_check

KERNEL = REPO / "pmtiqa_deploy" / "kernels" / "preprocess.cu"
# The kernel's parameters (KERNEL.md) as PTX declares them: pointers are .u64.
KERNEL_PARAMS = ["u64", "u32", "u32", "u32", "u32", "u32", "u32", "u64", "u32", "u32",
                 "f32", "f32", "f32", "f32", "f32", "f32", "u64", "u32", "u32"]


def nvcc() -> str:
    found = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    if not found:
        if IN_CI:
            pytest.fail("nvcc (CUDA 13) must be on these machines: the shared kernel is compiled in CI")
        pytest.skip("no nvcc on PATH: the CUDA kernel cannot be compiled here")
    return found


@pytest.mark.slow
def test_bad_input_under_address_sanitizer(tmp_path_factory, model_dir, tmp_path):
    build = cmake_build(tmp_path_factory.mktemp("native-asan") / "build", "-DPMTIQA_SANITIZE=address,undefined",
                        "-DPMTIQA_WITH_CUDA=OFF", "-DPMTIQA_BUILD_EXAMPLES=OFF", "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                        targets=("pmtiqa_abi_check",))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    run_abi_check(build / "pmtiqa_abi_check", model_dir, tmp_path, env=env)


def test_kernel_source_compiles_with_nvcc_as_nvrtc_sees_it(tmp_path):
    """No #include (NVRTC has no host headers), one unmangled entry with KERNEL.md's
    parameters, and a clean compile to PTX."""
    source = KERNEL.read_text()
    assert not re.search(r"^\s*#\s*include", source, re.M), "NVRTC compiles this file: no headers"
    ptx_file = tmp_path / "preprocess.ptx"
    done = subprocess.run([nvcc(), "--ptx", "-arch=compute_75", "-Werror", "all-warnings", "-o", str(ptx_file),
                           str(KERNEL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ptx = ptx_file.read_text()
    entry = re.search(r"\.entry\s+pmtiqa_crops\s*\((.*?)\)", ptx, re.S)
    assert entry, "the entry point must be the unmangled pmtiqa_crops"
    assert re.findall(r"\.param\s+\.(\w+)", entry.group(1)) == KERNEL_PARAMS


def test_native_build_compiled_the_kernel(native_build):
    """The CMake build compiles the kernel into the library's CUDA part (required in CI)."""
    log = (native_build / "configure.log").read_text()
    if "no CUDA compiler found" in log:
        pytest.skip("CMake found no CUDA compiler here, so the kernel was not part of the build")
    assert (native_build / "libpmtiqa_kernels.a").is_file()
    assert (native_build / "preprocess.ptx").is_file()
    assert (native_build / "pmtiqa_kernel_check").is_file()


def test_kernel_source_run_on_the_cpu_matches_host_preprocessing(native_build):
    """preprocess.cu compiled as C++ and run thread by thread (native/tests/
    kernel_emulation.cpp): every pixel format, resize policy and output kind."""
    done = subprocess.run([str(native_build / "pmtiqa_kernel_emulation")], capture_output=True, text=True,
                          timeout=600)
    print(done.stdout)
    assert done.returncode == 0 and " 0 failed" in done.stdout, done.stdout + done.stderr


@pytest.mark.gpu
def test_kernel_matches_host_preprocessing_on_a_gpu(native_build):
    check = native_build / "pmtiqa_kernel_check"
    if not check.is_file():
        pytest.skip("the build has no CUDA part (no nvcc found)")
    done = subprocess.run([str(check)], capture_output=True, text=True, timeout=300)
    print(done.stdout)
    if done.returncode == 77:
        pytest.skip(f"needs a CUDA GPU ({done.stdout.strip()})")
    assert done.returncode == 0, done.stdout + done.stderr


def test_tensorrt_backend_is_built_exactly_where_tensorrt_is_found(native_build, library):
    """In CI the TensorRT backend is compiled and linked (vendored 11.1 headers, the lean
    runtime of the tensorrt-lean-cu13 wheel) and compiled against the 10.16 headers."""
    from native_abi import BACKEND_TENSORRT

    log = (native_build / "configure.log").read_text()
    built = "pmtiqa: TensorRT backend:" in log
    assert library.pmtiqa_backend_available(BACKEND_TENSORRT) == int(built)
    if built:
        assert "headers 11.1" in log and "libnvinfer_lean.so.11" in log, log
        assert "TensorRT lean runtime: version-compatible plans only" in log
        assert "also compiled against" in log and "tensorrt-10.16" in log, log
    if IN_CI and not built:
        pytest.fail("CI must compile and link the TensorRT backend: " + log[-2000:])
    if not built:
        reason = re.search(r"building without the TensorRT backend \((.*)\)", log)
        pytest.skip(f"TensorRT is not installed here, so its backend was not compiled: "
                    f"{reason.group(1) if reason else 'see the CMake log'}")


def test_model_hashes_come_from_openssl(native_build):
    """Artifact hashes are OpenSSL's (libcrypto's EVP SHA-256), not a SHA-256 of our own."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf (binutils) on PATH to list the library's dependencies")
    dynamic = subprocess.run([readelf, "-d", str(native_build / "libpmtiqa.so")], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r"NEEDED.*\[libcrypto\.so", dynamic), dynamic
