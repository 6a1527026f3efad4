// The shared CUDA kernel source compiled as host C++ and run on the CPU, thread by thread,
// against the host preprocessing (cases and tolerance in kernel_cases.h). No GPU is lent to
// CI, so this is where the kernel's indexing, format handling, bilinear geometry, rounding
// and normalisation are checked on every run; kernel_check.cpp repeats the cases on a GPU.
//
// The few CUDA names the kernel uses are defined here; everything else in it is plain C.
#include <cmath>

#include "kernel_cases.h"

namespace {
struct Dim3 {
    unsigned x, y, z;
};
Dim3 blockIdx, threadIdx, blockDim;
inline float __fmul_rn(float a, float b) { return a * b; }
// Plain IEEE double operations: ISO C++ mode (no FP contraction) rounds each one, as the
// device intrinsics do.
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
}  // namespace

#define __global__
#define __device__
#define __forceinline__ inline
#include "preprocess.cu"
#undef __global__
#undef __device__
#undef __forceinline__

// Run the kernel over its whole grid, one emulated thread at a time.
static void emulate(const pmtiqa::CropsLaunch& a) {
    blockDim = {16, 16, 1};
    const unsigned blocks = static_cast<unsigned>((a.crop + 15) / 16);
    for (unsigned z = 0; z < static_cast<unsigned>(a.n_crops); ++z)
        for (unsigned by = 0; by < blocks; ++by)
            for (unsigned bx = 0; bx < blocks; ++bx)
                for (unsigned ty = 0; ty < 16; ++ty)
                    for (unsigned tx = 0; tx < 16; ++tx) {
                        blockIdx = {bx, by, z};
                        threadIdx = {tx, ty, 0};
                        pmtiqa_crops(a.src, a.src_w, a.src_h, a.src_pitch, a.src_format, a.dst_w, a.dst_h, a.boxes,
                                     a.n_crops, a.crop, a.mean[0], a.mean[1], a.mean[2], a.inv_std[0],
                                     a.inv_std[1], a.inv_std[2], a.out, a.out_kind, a.resize_mode);
                    }
}

int main() {
    std::mt19937 rng(1234);
    int failed = 0;
    for (const auto& c : pmtiqa_test::cases()) {
        pmtiqa_test::Prepared p = pmtiqa_test::prepare(c, rng);
        std::vector<unsigned char> raw(p.expected.size() * p.itemsize, 0xAB);
        p.launch.src = p.pixels.data();
        p.launch.boxes = p.boxes.data();
        p.launch.out = raw.data();
        emulate(p.launch);
        failed += pmtiqa_test::compare(c, p, raw) ? 0 : 1;
    }
    std::printf("%d passed, %d failed\n", static_cast<int>(pmtiqa_test::cases().size()) - failed, failed);
    return failed ? 1 : 0;
}
