// The one small interface both backends implement: validated images in, one score and
// num_levels level probabilities per image out. Backends load and check their model file
// in their constructor (open_*), and free everything in their destructor.
#pragma once

#include <memory>
#include <string>

#include "pmtiqa.h"
#include "spec.h"

namespace pmtiqa {

struct OpenOptions {
    pmtiqa_backend backend = PMTIQA_BACKEND_AUTO;
    pmtiqa_precision precision = PMTIQA_PRECISION_AUTO;
    int device_id = 0;
    int threads = 0;
    bool verify_hash = true;
};

class Backend {
public:
    virtual ~Backend() = default;
    // Score `count` host images (already checked with check_image): scores[count],
    // probs[count * num_levels].
    virtual void score(const pmtiqa_image* images, size_t count, float* scores, float* probs) = 0;
    // Score one image in device memory on the caller's CUDA stream.
    virtual void score_device(const pmtiqa_image& image, void* stream, float* score, float* probs);

    pmtiqa_backend kind = PMTIQA_BACKEND_CPU;
    pmtiqa_precision precision = PMTIQA_PRECISION_FP32;
    int max_batch = 1;       // images per inference run
    std::string model_file;  // the file this backend runs
};

// model.onnx (fp32) through OpenCV's DNN module.
std::unique_ptr<Backend> open_cpu_backend(const ModelSpec& spec, const std::string& directory,
                                          const OpenOptions& options);

// Whether the TensorRT backend was built in, and whether it could run here (a CUDA
// device is visible); `why` says what is missing.
bool tensorrt_built();
bool tensorrt_usable(int device_id, std::string* why);
// model.engine with the CUDA preprocessing kernel; only callable when tensorrt_built().
std::unique_ptr<Backend> open_tensorrt_backend(const ModelSpec& spec, const std::string& directory,
                                               const OpenOptions& options);

// The spec's outputs must include "score" and "level_probs" (spec.py's default outputs).
void check_spec_outputs(const ModelSpec& spec);

}  // namespace pmtiqa
