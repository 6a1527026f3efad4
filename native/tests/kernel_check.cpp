// The shared CUDA kernel (pmtiqa_deploy/kernels/preprocess.cu, built by nvcc) against the
// host preprocessing on a GPU: every pixel format, resized and unresized images, all three
// output kinds (cases and tolerance in kernel_cases.h). Exits 77 ("skipped") when no CUDA
// device is visible.
#include <cuda_runtime_api.h>

#include <cstdlib>

#include "cuda_preprocess.h"
#include "kernel_cases.h"

#define CUDA_OK(call)                                                              \
    do {                                                                           \
        cudaError_t err_ = (call);                                                 \
        if (err_ != cudaSuccess) {                                                 \
            std::printf("FAIL %s: %s\n", #call, cudaGetErrorString(err_));         \
            std::exit(1);                                                          \
        }                                                                          \
    } while (0)

int main() {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    std::mt19937 rng(1234);
    int failed = 0;
    for (const auto& c : pmtiqa_test::cases()) {
        pmtiqa_test::Prepared p = pmtiqa_test::prepare(c, rng);
        void *src, *dst, *boxes;
        std::vector<unsigned char> raw(p.expected.size() * p.itemsize);
        CUDA_OK(cudaMalloc(&src, p.pixels.size()));
        CUDA_OK(cudaMalloc(&dst, raw.size()));
        CUDA_OK(cudaMalloc(&boxes, p.boxes.size() * sizeof(int)));
        CUDA_OK(cudaMemcpy(src, p.pixels.data(), p.pixels.size(), cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(boxes, p.boxes.data(), p.boxes.size() * sizeof(int), cudaMemcpyHostToDevice));
        p.launch.src = static_cast<unsigned char*>(src);
        p.launch.boxes = static_cast<int*>(boxes);
        p.launch.out = dst;
        CUDA_OK(pmtiqa::launch_crops(p.launch, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        CUDA_OK(cudaMemcpy(raw.data(), dst, raw.size(), cudaMemcpyDeviceToHost));
        cudaFree(src), cudaFree(dst), cudaFree(boxes);
        failed += pmtiqa_test::compare(c, p, raw) ? 0 : 1;
    }
    std::printf("%d passed, %d failed\n", static_cast<int>(pmtiqa_test::cases().size()) - failed, failed);
    return failed ? 1 : 0;
}
