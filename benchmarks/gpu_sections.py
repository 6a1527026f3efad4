"""The sections of benchmarks/gpu_check.py (see its docstring): one function per section,
each a list of `steps.run(name, body, needs_gpu)` calls, and `targets`, which reads the
figures of all sections against issue 14's targets. Heavy imports (torch, CUDA) happen
inside the steps, so a section's process loads only what it uses."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KERNEL = REPO / "pmtiqa_deploy" / "kernels" / "preprocess.cu"
GFLOP_PER_CROP = 8.2  # ResNet-50 forward on one 224-pixel crop (issue 14's figure)
BATCHES = (1, 8, 64)
PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "onnxruntime", "cupy-cuda13x",
            "cuda-bindings", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg", "scikit-image", "pmtiqa-deploy")


class Skip(Exception):
    """A step that cannot run here for a reason other than a missing GPU."""


def _command(*args: str, timeout: float = 60, cwd: Path = REPO) -> tuple[int, str]:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        return 127, f"{args[0]}: not found"
    return done.returncode, done.stdout + done.stderr


def _spec(crop_count: int = 9, resize: dict | None = None, dtype: str = "float32"):
    from pmtiqa_deploy.spec import InputSpec, ModelSpec, PreprocessSpec, ScoreSpec

    layout = "BNHWC" if dtype == "uint8" else "BNCHW"
    return ModelSpec(score=ScoreSpec.from_levels(0.0, 100.0, 10),
                     preprocess=PreprocessSpec(crop_count=crop_count, **(resize or {})),
                     input=InputSpec(dtype=dtype, layout=layout, normalize_in_graph=dtype == "uint8",
                                     batch_min=1, batch_opt=8, batch_max=64))


def _photos(count: int, height: int = 480, width: int = 640) -> list[np.ndarray]:
    """`count` distinct RGB photographs (scikit-image's, resized, flipped and noised)."""
    import cv2
    from skimage import data

    sources = [getattr(data, n)()[..., :3] for n in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = cv2.resize(sources[i % len(sources)], (width, height), interpolation=cv2.INTER_AREA)
        image = image[:, ::-1] if (i // len(sources)) % 2 else image
        noise = rng.normal(0, 2 + i % 7, image.shape)
        out.append(np.clip(image + noise, 0, 255).astype(np.uint8))
    return out


def _write_jpegs(folder: Path, images: list[np.ndarray]) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"photo_{i:04d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def _checkpoint(work: Path, crop_count: int, cpu_only: bool) -> Path:
    """An untrained PMT-IQA, calibrated on photographs' crops (BatchNorm statistics, a
    score head spread over 12..87), saved as a checkpoint: the trained model's graph and
    speed, finite scores in every precision. ResNet-50 on the GPU; ResNet-18 on two
    images under --cpu-only, which only exercises the code path."""
    import torch

    from pmtiqa_deploy.preprocess import crops_uint8, normalize
    from pmtiqa_deploy.train.calibration import calibrate_untrained
    from pmtiqa_deploy.train.checkpoint import CheckpointInfo, save_checkpoint
    from pmtiqa_deploy.train.model import PMTIQA, ModelConfig

    torch.manual_seed(0)
    spec = _spec(crop_count)
    device = "cpu" if cpu_only else "cuda"
    model = PMTIQA(ModelConfig(backbone="resnet18" if cpu_only else "resnet50")).to(device)
    crops = np.concatenate([normalize(crops_uint8(p, spec.preprocess), spec.preprocess)
                            for p in _photos(2 if cpu_only else 8)])
    calibrate_untrained(model, torch.from_numpy(crops).to(device), crop_count, 12.0, 87.0)
    info = CheckpointInfo(config=model.config, preprocess=spec.preprocess, score=spec.score,
                          training={"dataset": "none", "note": "untrained, calibrated for timing"})
    return save_checkpoint(model.cpu(), work / "checkpoint", info)


def _torch_backend(checkpoint: Path, precision: str, cuda_graph: bool, device: str = "cuda"):
    from pmtiqa_deploy.backends.torch import TorchBackend
    from pmtiqa_deploy.spec import InputSpec

    return TorchBackend.from_checkpoint(checkpoint, input=InputSpec(batch_min=1, batch_opt=8, batch_max=64),
                                        device=device, precision=precision, cuda_graph=cuda_graph)


def _median_seconds(call, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# --- sections -----------------------------------------------------------------------------

def environment(steps, work: Path, cpu_only: bool) -> None:
    def versions():
        found = {}
        for name in PACKAGES:
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = None
        return found

    def machine():
        text = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
        model = re.search(r"model name\s*:\s*(.*)", text)
        return {"python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                "cpu_model": model.group(1) if model else None,
                "cpu_flags": " ".join(sorted(set(re.findall(r"\b(avx2|avx512f|avx512_vnni|amx_tile)\b", text)))),
                "load_average": list(os.getloadavg()),
                "nvcc": _command("nvcc", "--version")[1].strip().splitlines()[-1:]}

    def runtime_imports():
        import pmtiqa_deploy.export.tensorrt  # noqa: F401  (export/ installed as a subpackage)
        import pmtiqa_deploy.train.model  # noqa: F401
        return {"pmtiqa_deploy": "importable with train and export"}

    def gpu():
        import torch

        code, smi = _command("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                             "clocks.max.sm,temperature.gpu,power.draw", "--format=csv")
        props = torch.cuda.get_device_properties(0)
        return {"nvidia_smi": smi.strip() if code == 0 else None, "torch": torch.__version__,
                "torch_cuda": torch.version.cuda, "name": props.name,
                "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}

    steps.run("packages", versions)
    steps.run("machine", machine)
    steps.run("runtime_imports", runtime_imports)
    steps.run("gpu", gpu, needs_gpu=True)


def pytest_gpu(steps, work: Path, cpu_only: bool) -> None:
    base = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
            "--continue-on-collection-errors", "tests/runtime", "tests/native"]

    def collect():
        code, output = _command(*base, "--collect-only", "-q", timeout=80)
        found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", output)
        if code != 0 or not found:
            raise RuntimeError(f"collection failed (exit {code}): {output[-1500:]}")
        return {"gpu_tests": int(found.group(1))}

    def run():
        code, output = _command(*base, "-q", timeout=85)
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", output)}
        if code != 0 or counts.get("failed") or counts.get("error") or counts.get("errors"):
            raise RuntimeError(f"pytest -m gpu exited {code}: {counts}; {output[-2500:]}")
        return {"counts": counts, "skips": re.findall(r"SKIPPED \[\d+\] (.*)", output)[:20]}

    steps.run("collect", collect)
    steps.run("run", run, needs_gpu=True)


def native_kernel(steps, work: Path, cpu_only: bool) -> None:
    cubin = work / "preprocess.sm_90.cubin"

    def nvcc_cubin():
        if shutil.which("nvcc") is None:
            raise Skip("no nvcc on PATH")
        code, output = _command("nvcc", "-cubin", "-arch=sm_90", "-Xptxas", "-v", "-o", str(cubin), str(KERNEL))
        if code != 0:
            raise RuntimeError(output[-2000:])
        used = re.search(r"Used (\d+) registers", output)
        spill = re.search(r"(\d+) bytes spill stores", output)
        return {"cubin_bytes": cubin.stat().st_size, "registers": used and int(used.group(1)),
                "spill_store_bytes": spill and int(spill.group(1))}

    def cubin_equals_reference():
        from pmtiqa_deploy import device as cuda
        from pmtiqa_deploy.cuda_preprocess import GpuPreprocessor
        from pmtiqa_deploy.preprocess import preprocess

        if not cubin.is_file():
            raise Skip("the sm_90 cubin was not built")
        rng = np.random.default_rng(1)
        images = _photos(3) + [rng.integers(0, 256, (333, 517, 3), dtype=np.uint8),
                              rng.integers(0, 256, (1024, 768, 3), dtype=np.uint8)]
        checked = []
        for resize in ({}, {"resize": "shorter_side", "shorter_side": 256},
                       {"resize": "fixed", "width": 512, "height": 384}):
            for dtype in ("float32", "float16", "uint8"):
                spec = _spec(5, resize, dtype)
                with GpuPreprocessor(spec, kernel_image=cubin.read_bytes()) as gpu:
                    stream = cuda.create_stream()
                    out, host = cuda.DeviceBuffer(gpu.slot_bytes * len(images)), cuda.PinnedBuffer(gpu.slot_bytes * len(images))
                    gpu.fill(images, out.ptr, stream)
                    cuda.copy_to_host(host.ptr, out.ptr, gpu.slot_bytes * len(images), stream)
                    cuda.synchronize(stream)
                    got = host.view(np.dtype(dtype), (len(images),) + spec.input_shape(1)[1:]).copy()
                    out.free(), host.free(), cuda.destroy_stream(stream)
                want = np.stack([preprocess(i, spec.preprocess, spec.input) for i in images])
                differing = int((got != want).sum())
                checked.append({"resize": resize.get("resize", "none"), "dtype": dtype, "differing": differing})
        bad = [c for c in checked if c["differing"]]
        if bad:
            raise RuntimeError(f"the nvcc-built kernel differs from the reference: {bad}")
        return {"cases": len(checked), "all_equal": True}

    def cmake_kernel_check():
        build = work / "native"
        code, output = _command("cmake", "-S", str(REPO / "native"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                "-DPMTIQA_WITH_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90-real",
                                "-DPMTIQA_WITH_TENSORRT=OFF", "-DPMTIQA_BUILD_EXAMPLES=OFF", timeout=60)
        if code != 0 and ("OpenCV" in output or "nlohmann_json" in output):
            raise Skip("this machine lacks OpenCV's or nlohmann-json's C++ development files, which the "
                       "C++ reference needs (the nvcc cubin above is checked against the Python reference)")
        if code != 0:
            raise RuntimeError(output[-2000:])
        code, output = _command("cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target",
                                "pmtiqa_kernel_check", "--target", "pmtiqa_kernel_emulation", timeout=120)
        if code != 0:
            raise RuntimeError(output[-2000:])
        results = {}
        for name in ("pmtiqa_kernel_check", "pmtiqa_kernel_emulation"):
            code, output = _command(str(build / name), timeout=60)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}: {output[-2000:]}")
            results[name] = output.strip().splitlines()[-1]
        return results

    steps.run("nvcc_sm90_cubin", nvcc_cubin)
    steps.run("cubin_equals_reference", cubin_equals_reference, needs_gpu=True)
    steps.run("cmake_kernel_check", cmake_kernel_check, needs_gpu=True)


def _gemm_tflops(dtype_name: str, size: int = 8192) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(10):
        start.record()
        torch.matmul(a, b)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / float(np.median(times)) / 1e12


def torch_model(steps, work: Path, cpu_only: bool) -> None:
    crop_count = 2 if cpu_only else 9
    state: dict[str, Any] = {}

    def build():
        state["checkpoint"] = _checkpoint(work, crop_count, cpu_only)
        return {"checkpoint": str(state["checkpoint"]), "crop_count": crop_count}

    def gemm():
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        state["gemm"] = {"fp16": _gemm_tflops("float16"), "fp32": _gemm_tflops("float32")}
        return {f"{k}_tflops": round(v, 1) for k, v in state["gemm"].items()}

    def rows():
        import torch

        from pmtiqa_deploy import device as cuda

        if "checkpoint" not in state:
            raise Skip("the model was not built")
        table = []
        for precision in ("fp32", "fp16"):
            for graph in (False, True):
                with _torch_backend(state["checkpoint"], precision, graph) as backend:
                    for batch in BATCHES:
                        pointer = backend.input_device_buffer(batch)
                        crops = np.random.default_rng(batch).normal(0, 1, backend.spec.input_shape(batch))
                        crops = crops.astype(np.float32)
                        cuda.copy_to_device(pointer, crops.ctypes.data, crops.nbytes, 0)
                        torch.cuda.synchronize()
                        seconds = _median_seconds(lambda: backend.infer_device(batch), 3, 20 if batch < 64 else 10)
                        images = batch / seconds
                        gflops = images * crop_count * GFLOP_PER_CROP
                        rate = state.get("gemm", {}).get(precision)
                        table.append({"precision": precision, "cuda_graph": graph, "batch": batch,
                                      "ms": round(seconds * 1000, 3), "images_per_s": round(images, 1),
                                      "crops_per_s": round(images * crop_count, 1),
                                      "tflops": round(gflops / 1000, 2),
                                      "fraction_of_gemm": rate and round(gflops / 1000 / rate, 3)})
        return {"rows": table, "input": "device (the crops already in the backend's input, as GPU "
                                         "preprocessing leaves them); outputs copied back each call"}

    steps.run("build_model", build)
    steps.run("gemm_rate", gemm, needs_gpu=True)
    steps.run("model_rows", rows, needs_gpu=True)


def preprocess_kernel(steps, work: Path, cpu_only: bool) -> None:
    def nvrtc():
        from pmtiqa_deploy.cuda_preprocess import compile_kernel, kernel_source, supported_architectures

        archs = supported_architectures()
        start = time.perf_counter()
        cubin = compile_kernel(kernel_source(), 90 if 90 in archs else max(archs), binary=True)
        return {"architectures": archs, "compile_s": round(time.perf_counter() - start, 3),
                "cubin_bytes": len(cubin)}

    def throughput():
        from pmtiqa_deploy import device as cuda
        from pmtiqa_deploy.cuda_preprocess import GpuPreprocessor

        images = _photos(64)
        table = []
        for resize in ({}, {"resize": "shorter_side", "shorter_side": 256}):
            for dtype in ("float16", "float32"):
                spec = _spec(9, resize, dtype)
                with GpuPreprocessor(spec, timing=True) as gpu:
                    stream = cuda.create_stream()
                    out = cuda.DeviceBuffer(gpu.slot_bytes * len(images))
                    for _ in range(3):
                        gpu.fill(images, out.ptr, stream)
                    kernel, upload = [], []
                    for _ in range(10):
                        gpu.fill(images, out.ptr, stream)
                        kernel.append(gpu.timings["preprocess_ms"])
                        upload.append(gpu.timings["upload_ms"])
                    out.free()
                    cuda.destroy_stream(stream)
                crops = len(images) * spec.preprocess.crop_count
                table.append({"resize": resize.get("resize", "none"), "dtype": dtype, "images": len(images),
                              "kernel_ms": round(float(np.median(kernel)), 3),
                              "upload_ms": round(float(np.median(upload)), 3),
                              "kernel_crops_per_s": round(crops / (np.median(kernel) / 1000), 1),
                              "with_upload_crops_per_s": round(crops / ((np.median(kernel) + np.median(upload)) / 1000), 1)})
        return {"rows": table, "image": "640x480 RGB, 9 crops of 224"}

    steps.run("nvrtc_compile", nvrtc)
    steps.run("kernel_throughput", throughput, needs_gpu=True)


def end_to_end(steps, work: Path, cpu_only: bool) -> None:
    count = 4 if cpu_only else 256
    state: dict[str, Any] = {}

    def files():
        state["paths"] = _write_jpegs(work / "jpeg", _photos(count))
        return {"files": len(state["paths"]), "bytes": sum(p.stat().st_size for p in state["paths"])}

    def cpu_decode():
        from pmtiqa_deploy.preprocess import decode_image

        threads = os.cpu_count() or 1
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(decode_image, state["paths"][:threads]))  # warm
            start = time.perf_counter()
            state["cpu_decoded"] = list(pool.map(decode_image, state["paths"]))
            seconds = time.perf_counter() - start
        return {"threads": threads, "images_per_s": round(len(state["paths"]) / seconds, 1)}

    def gpu_decode():
        from pmtiqa_deploy import device as cuda
        from pmtiqa_deploy.gpu_decoder import GpuDecoder

        blobs = [p.read_bytes() for p in state["paths"]]
        with GpuDecoder(0) as decoder:
            stream = cuda.create_stream()
            decoder.decode(blobs[:64], stream)
            cuda.synchronize(stream)
            start = time.perf_counter()
            decoded = []
            for i in range(0, len(blobs), 64):
                decoded += decoder.decode(blobs[i:i + 64], stream)
            cuda.synchronize(stream)
            seconds = time.perf_counter() - start
            pixels = [np.asarray(image.cpu()) for image in decoded[:16]]
            cuda.destroy_stream(stream)
        diff = [np.abs(g.astype(int) - c.astype(int)) for g, c in zip(pixels, state.get("cpu_decoded", []))]
        return {"images_per_s": round(len(blobs) / seconds, 1), "batch": 64,
                "vs_opencv_max_abs": int(max(d.max() for d in diff)) if diff else None,
                "vs_opencv_mean_abs": round(float(np.mean([d.mean() for d in diff])), 4) if diff else None,
                "vs_opencv_fraction_differing": round(float(np.mean([(d > 0).mean() for d in diff])), 4) if diff else None}

    def scoring():
        from pmtiqa_deploy.score import Scorer

        device = "cpu" if cpu_only else "cuda"
        checkpoint = _checkpoint(work, 2 if cpu_only else 9, cpu_only)
        batch = 2 if cpu_only else 64
        results = {}
        ways = [("cpu", "cpu"), ("auto", "cpu")] if cpu_only else [("cpu", "cpu"), ("gpu", "cpu"), ("gpu", "gpu")]
        scores = {}
        with _torch_backend(checkpoint, "fp32" if cpu_only else "fp16", not cpu_only, device) as backend:
            for preprocess, decode in ways:
                with Scorer(backend, batch_size=batch, workers=os.cpu_count(), preprocess=preprocess,
                            decode=decode) as scorer:
                    list(scorer.score_files(state["paths"][:batch]))  # warm: graphs, kernels, decoders
                    start = time.perf_counter()
                    rows = list(scorer.score_files(state["paths"]))
                    seconds = time.perf_counter() - start
                    scores[(preprocess, decode)] = np.array([r.score if r.error is None else np.nan for r in rows])
                    results[f"preprocess_{preprocess}_decode_{decode}"] = {
                        "images_per_s": round(len(rows) / seconds, 1), "failed": sum(r.error is not None for r in rows),
                        "stage": scorer.stage.name, "reason": scorer.stage.reason}
            if not cpu_only:
                seconds = _median_seconds(lambda: backend.infer_device(batch), 3, 10)
                results["model_only_images_per_s"] = round(batch / seconds, 1)
                for key, value in list(results.items()):
                    if isinstance(value, dict):
                        value["ratio_to_model_only"] = round(value["images_per_s"] / results["model_only_images_per_s"], 3)
        reference = scores[("cpu", "cpu")]
        for key, value in scores.items():
            results[f"max_abs_score_diff_{key[0]}_{key[1]}_vs_cpu"] = float(np.nanmax(np.abs(value - reference)))
        return results

    def gpu_refused_here():
        from pmtiqa_deploy.errors import BackendUnavailable
        from pmtiqa_deploy.gpu_decoder import GpuDecoder

        try:
            GpuDecoder(0)
        except BackendUnavailable as exc:
            raise Skip(f"needs a CUDA GPU: the GPU decoder says: {exc}") from None
        raise RuntimeError("the GPU decoder opened although no GPU step may run here")

    steps.run("write_jpegs", files)
    steps.run("cpu_decode_rate", cpu_decode)
    if cpu_only:
        steps.run("gpu_decoder_without_gpu", gpu_refused_here)
    steps.run("gpu_decode_rate", gpu_decode, needs_gpu=True)
    steps.run("scoring", scoring)


# --- targets ------------------------------------------------------------------------------

def _results(sections: dict, section: str, step: str) -> Any:
    for record in sections.get(section, {}).get("steps", []):
        if record["step"] == step and record["status"] == "ok":
            return record.get("results")
    return None


def targets(sections: dict) -> dict[str, Any]:
    """Issue 14's targets for the first GPU run, read off the figures (None: not measured)."""
    out: dict[str, Any] = {}
    equal = _results(sections, "native_kernel", "cubin_equals_reference")
    out["kernel_equals_cpu_reference"] = equal and equal.get("all_equal")
    rows = (_results(sections, "torch_model", "model_rows") or {}).get("rows", [])
    best = [r for r in rows if r["precision"] == "fp16" and r["cuda_graph"] and r["batch"] == 64]
    kernel = [r for r in (_results(sections, "preprocess_kernel", "kernel_throughput") or {}).get("rows", [])
              if r["dtype"] == "float16" and r["resize"] == "shorter_side"]
    if best:
        out["torch_fp16_graphs_b64_images_per_s"] = best[0]["images_per_s"]
        out["torch_fp16_graphs_b64_fraction_of_fp16_gemm"] = best[0]["fraction_of_gemm"]
    if best and kernel:
        ratio = kernel[0]["with_upload_crops_per_s"] / best[0]["crops_per_s"]
        out["kernel_over_model_crops_per_s (target >= 10)"] = round(ratio, 1)
    scoring = _results(sections, "end_to_end", "scoring") or {}
    for key in ("preprocess_gpu_decode_cpu", "preprocess_gpu_decode_gpu"):
        if isinstance(scoring.get(key), dict) and "ratio_to_model_only" in scoring[key]:
            out[f"end_to_end_{key}_over_model_only (target >= 0.8)"] = scoring[key]["ratio_to_model_only"]
    return out
