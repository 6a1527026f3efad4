// Host side of the shared CUDA preprocessing kernel (pmtiqa_deploy/kernels/preprocess.cu,
// the file NVRTC compiles from Python): one launch writes one image's crops into its slot
// of the engine's input buffer.
#pragma once

#include <cuda_runtime_api.h>

#include "crops_launch.h"

namespace pmtiqa {

// Enqueue the kernel on `stream`: block (16, 16, 1), grid (ceil(crop/16), ceil(crop/16),
// n_crops). Returns the launch's error (cudaSuccess once queued).
cudaError_t launch_crops(const CropsLaunch& launch, cudaStream_t stream);

}  // namespace pmtiqa
