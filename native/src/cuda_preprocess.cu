// Builds the one kernel source into the native library: preprocess.cu is included as it
// is (the CMake target puts pmtiqa_deploy/kernels on the include path), so nvcc and
// NVRTC compile the very same text.
#include "cuda_preprocess.h"

#include "preprocess.cu"

namespace pmtiqa {

cudaError_t launch_crops(const CropsLaunch& a, cudaStream_t stream) {
    const dim3 block(16, 16, 1);
    const dim3 grid((a.crop + 15) / 16, (a.crop + 15) / 16, a.n_crops);
    pmtiqa_crops<<<grid, block, 0, stream>>>(a.src, a.src_w, a.src_h, a.src_pitch, a.src_format, a.dst_w,
                                             a.dst_h, a.boxes, a.n_crops, a.crop, a.mean[0], a.mean[1],
                                             a.mean[2], a.inv_std[0], a.inv_std[1], a.inv_std[2], a.out,
                                             a.out_kind, a.resize_mode);
    return cudaGetLastError();
}

}  // namespace pmtiqa
