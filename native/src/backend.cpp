// What the backends share, and the answers for a library built without TensorRT.
#include "backend.h"

#include <algorithm>

#include "error.h"

namespace pmtiqa {

void Backend::score_device(const pmtiqa_image&, void*, float*, float*) {
    fail(PMTIQA_ERROR_NOT_SUPPORTED, "the CPU backend cannot read images in GPU memory; copy the image to host "
                                     "memory and call pmtiqa_score, or open the model with the TensorRT backend");
}

void check_spec_outputs(const ModelSpec& spec) {
    for (const char* name : {"score", "level_probs"}) {
        bool listed = std::any_of(spec.outputs.begin(), spec.outputs.end(),
                                  [&](const OutputSpec& out) { return out.name == name; });
        if (!listed)
            fail(PMTIQA_ERROR_SPEC, std::string("the spec lists no output '") + name +
                                        "'; re-export the model with pmtiqa-export");
    }
}

#ifndef PMTIQA_WITH_TENSORRT
bool tensorrt_built() { return false; }

bool tensorrt_usable(int, std::string* why) {
    if (why) *why = "this library was built without TensorRT (CMake found no TensorRT headers and libraries)";
    return false;
}

std::unique_ptr<Backend> open_tensorrt_backend(const ModelSpec&, const std::string&, const OpenOptions&) {
    fail(PMTIQA_ERROR_BACKEND_UNAVAILABLE,
         "this library was built without the TensorRT backend: install TensorRT (headers and libnvinfer) and "
         "the CUDA toolkit, then rebuild with -DPMTIQA_WITH_TENSORRT=ON (and -DTENSORRT_ROOT=... if needed)");
}
#endif

}  // namespace pmtiqa
