// The C boundary (pmtiqa.h): argument checks, the per-thread last error, and the one place
// where every exception becomes a status code. Nothing thrown inside crosses it.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "backend.h"
#include "decode.h"
#include "error.h"
#include "preprocess.h"
#include "pmtiqa.h"
#include "spec.h"

#ifndef PMTIQA_VERSION
#define PMTIQA_VERSION "0.0.0"
#endif

struct pmtiqa_model {
    pmtiqa::ModelSpec spec;
    std::string directory;
    std::unique_ptr<pmtiqa::Backend> backend;
    std::mutex mutex;
};

namespace {

thread_local std::string last_error;

// Images per pmtiqa_score_batch call (their crops are not all held at once, but their
// results are): a bound that keeps every size computation far from overflow.
constexpr size_t kMaxBatch = size_t(1) << 24;

using pmtiqa::fail;

// Run `body`, turning whatever it throws into a status and this thread's message.
template <typename Body>
pmtiqa_status guarded(const char* function, Body&& body) noexcept {
    try {
        last_error.clear();
        body();
        return PMTIQA_OK;
    } catch (const pmtiqa::Error& exc) {
        last_error = exc.what();
        return exc.status();
    } catch (const cv::Exception& exc) {
        last_error = std::string(function) + ": OpenCV error: " + exc.what();
        return PMTIQA_ERROR_BACKEND;
    } catch (const std::bad_alloc&) {
        last_error = std::string(function) + ": out of memory";
        return PMTIQA_ERROR_OUT_OF_MEMORY;
    } catch (const std::exception& exc) {
        last_error = std::string(function) + ": internal error: " + exc.what();
        return PMTIQA_ERROR_INTERNAL;
    } catch (...) {
        last_error = std::string(function) + ": internal error (unknown exception)";
        return PMTIQA_ERROR_INTERNAL;
    }
}

// A caller's struct of `given` bytes whose first `known` bytes we understand: the caller
// may be older (fewer fields: the rest keep their defaults) or newer (more fields: they
// must be zero, or the caller asks for something this library cannot do).
void check_struct_size(const void* data, uint32_t given, size_t minimum, size_t known, const char* what) {
    if (given < minimum)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, std::string(what) + ".struct_size is " + std::to_string(given) +
                                                "; set it to sizeof(" + what + ") (call " + what + "_init)");
    const unsigned char* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = known; i < given; ++i)
        if (bytes[i] != 0)
            fail(PMTIQA_ERROR_INVALID_ARGUMENT, std::string(what) + " has fields this library (ABI " +
                                                    std::to_string(PMTIQA_ABI_VERSION) +
                                                    ") does not know set to nonzero values; upgrade the library");
}

pmtiqa::OpenOptions read_options(const pmtiqa_options* given) {
    pmtiqa_options options;
    pmtiqa_options_init(&options);
    if (given) {
        check_struct_size(given, given->struct_size, offsetof(pmtiqa_options, backend) + sizeof(int32_t),
                          sizeof(pmtiqa_options), "pmtiqa_options");
        std::memcpy(&options, given, std::min<size_t>(given->struct_size, sizeof(pmtiqa_options)));
    }
    pmtiqa::OpenOptions out;
    if (options.backend < PMTIQA_BACKEND_AUTO || options.backend > PMTIQA_BACKEND_TENSORRT)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "unknown backend " + std::to_string(options.backend) +
                                                "; use PMTIQA_BACKEND_AUTO, _CPU or _TENSORRT");
    if (options.precision < PMTIQA_PRECISION_AUTO || options.precision > PMTIQA_PRECISION_FP16)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "unknown precision " + std::to_string(options.precision) +
                                                "; use PMTIQA_PRECISION_AUTO, _FP32 or _FP16");
    if (options.device_id < 0)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "device_id must be 0 or more, got " + std::to_string(options.device_id));
    if (options.threads < 0)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "threads must be 0 (OpenCV's default) or more, got " +
                                                std::to_string(options.threads));
    out.backend = static_cast<pmtiqa_backend>(options.backend);
    out.precision = static_cast<pmtiqa_precision>(options.precision);
    out.device_id = options.device_id;
    out.threads = options.threads;
    out.verify_hash = options.verify_hash != 0;
    return out;
}

std::unique_ptr<pmtiqa::Backend> open_backend(const pmtiqa::ModelSpec& spec, const std::string& directory,
                                              const pmtiqa::OpenOptions& options) {
    switch (options.backend) {
        case PMTIQA_BACKEND_CPU: return pmtiqa::open_cpu_backend(spec, directory, options);
        case PMTIQA_BACKEND_TENSORRT: return pmtiqa::open_tensorrt_backend(spec, directory, options);
        default: break;
    }
    // AUTO picks TensorRT only where it can run and the spec lists an engine; once picked,
    // a failure to load it is reported, never papered over with the CPU backend.
    bool engine = false;
    for (const pmtiqa::Artifact& a : spec.artifacts) engine = engine || a.format == "tensorrt";
    if (engine && pmtiqa::tensorrt_usable(options.device_id, nullptr))
        return pmtiqa::open_tensorrt_backend(spec, directory, options);
    return pmtiqa::open_cpu_backend(spec, directory, options);
}

pmtiqa_model* checked_model(pmtiqa_model* model) {
    if (!model) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "model is NULL; open one with pmtiqa_open");
    return model;
}

// Scores and probabilities into the caller's arrays, after every check has passed.
void deliver(const pmtiqa_model& model, const std::vector<float>& scores, const std::vector<float>& probs,
             pmtiqa_result* results, float* level_probs) {
    for (size_t i = 0; i < scores.size(); ++i)
        if (!std::isfinite(scores[i]))
            fail(PMTIQA_ERROR_BACKEND, "the model produced a non-finite score for image " + std::to_string(i) +
                                           "; the model file is broken: re-export it");
    for (size_t i = 0; i < scores.size(); ++i) results[i] = {scores[i], model.spec.score.level(scores[i])};
    if (level_probs) std::copy(probs.begin(), probs.end(), level_probs);
}

void score_host(pmtiqa_model* model, const pmtiqa_image* images, size_t count, pmtiqa_result* results,
                float* level_probs) {
    checked_model(model);
    if (!images) fail(PMTIQA_ERROR_INVALID_ARGUMENT, count == 1 ? "image is NULL" : "images is NULL");
    if (!results) fail(PMTIQA_ERROR_INVALID_ARGUMENT, count == 1 ? "result is NULL" : "results is NULL");
    if (count > kMaxBatch)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "count " + std::to_string(count) + " is more than " +
                                                std::to_string(kMaxBatch) + " images in one call; split the batch");
    for (size_t i = 0; i < count; ++i) {
        std::string what = count == 1 ? "image" : "image " + std::to_string(i);
        pmtiqa::check_image(&images[i], what);
        try {  // the size policy's checks, before any pixel is read
            pmtiqa::resized_size(images[i].height, images[i].width, model->spec.preprocess);
        } catch (const pmtiqa::Error& exc) {
            fail(exc.status(), count == 1 ? exc.what() : what + ": " + exc.what());
        }
    }
    const size_t levels = static_cast<size_t>(model->spec.score.num_levels);
    std::vector<float> scores(count), probs(count * levels);
    std::lock_guard<std::mutex> lock(model->mutex);
    model->backend->score(images, count, scores.data(), probs.data());
    deliver(*model, scores, probs, results, level_probs);
}

}  // namespace

extern "C" {

uint32_t pmtiqa_abi_version(void) { return PMTIQA_ABI_VERSION; }

const char* pmtiqa_version(void) { return PMTIQA_VERSION; }

int pmtiqa_backend_available(int32_t backend) {
    if (backend == PMTIQA_BACKEND_CPU || backend == PMTIQA_BACKEND_AUTO) return 1;
    if (backend == PMTIQA_BACKEND_TENSORRT) return pmtiqa::tensorrt_built() ? 1 : 0;
    return 0;
}

const char* pmtiqa_status_name(pmtiqa_status status) {
    switch (status) {
        case PMTIQA_OK: return "PMTIQA_OK";
        case PMTIQA_ERROR_INVALID_ARGUMENT: return "PMTIQA_ERROR_INVALID_ARGUMENT";
        case PMTIQA_ERROR_SPEC: return "PMTIQA_ERROR_SPEC";
        case PMTIQA_ERROR_IO: return "PMTIQA_ERROR_IO";
        case PMTIQA_ERROR_DECODE: return "PMTIQA_ERROR_DECODE";
        case PMTIQA_ERROR_IMAGE_TOO_SMALL: return "PMTIQA_ERROR_IMAGE_TOO_SMALL";
        case PMTIQA_ERROR_NOT_SUPPORTED: return "PMTIQA_ERROR_NOT_SUPPORTED";
        case PMTIQA_ERROR_BACKEND_UNAVAILABLE: return "PMTIQA_ERROR_BACKEND_UNAVAILABLE";
        case PMTIQA_ERROR_BACKEND: return "PMTIQA_ERROR_BACKEND";
        case PMTIQA_ERROR_OUT_OF_MEMORY: return "PMTIQA_ERROR_OUT_OF_MEMORY";
        case PMTIQA_ERROR_INTERNAL: return "PMTIQA_ERROR_INTERNAL";
    }
    return "PMTIQA_STATUS_UNKNOWN";
}

const char* pmtiqa_last_error(void) { return last_error.c_str(); }

void pmtiqa_options_init(pmtiqa_options* options) {
    if (!options) return;
    std::memset(options, 0, sizeof(*options));
    options->struct_size = sizeof(pmtiqa_options);
    options->backend = PMTIQA_BACKEND_AUTO;
    options->precision = PMTIQA_PRECISION_AUTO;
    options->device_id = 0;
    options->threads = 0;
    options->verify_hash = 1;
}

pmtiqa_status pmtiqa_open(const char* model_dir, const pmtiqa_options* options, pmtiqa_model** model) {
    if (model) *model = nullptr;
    return guarded("pmtiqa_open", [&] {
        if (!model) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "model (the output pointer) is NULL");
        if (!model_dir || !*model_dir) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "model_dir is NULL or empty");
        pmtiqa::OpenOptions opened = read_options(options);
        auto handle = std::make_unique<pmtiqa_model>();
        handle->directory = model_dir;
        handle->spec = pmtiqa::load_spec(handle->directory);
        handle->backend = open_backend(handle->spec, handle->directory, opened);
        *model = handle.release();
    });
}

void pmtiqa_close(pmtiqa_model* model) {
    try {
        delete model;
    } catch (...) {  // destructors free GPU and host memory; nothing may escape the boundary
    }
}

pmtiqa_status pmtiqa_get_info(const pmtiqa_model* model, pmtiqa_model_info* info) {
    return guarded("pmtiqa_get_info", [&] {
        if (!model) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "model is NULL; open one with pmtiqa_open");
        if (!info) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "info is NULL");
        uint32_t given = info->struct_size;
        if (given < offsetof(pmtiqa_model_info, backend) + sizeof(int32_t))
            fail(PMTIQA_ERROR_INVALID_ARGUMENT, "pmtiqa_model_info.struct_size is " + std::to_string(given) +
                                                    "; set it to sizeof(pmtiqa_model_info)");
        pmtiqa_model_info out;
        std::memset(&out, 0, sizeof(out));
        const pmtiqa::ModelSpec& spec = model->spec;
        out.struct_size = given;
        out.backend = model->backend->kind;
        out.precision = model->backend->precision;
        out.num_levels = static_cast<int32_t>(spec.score.num_levels);
        out.crop_count = static_cast<int32_t>(spec.preprocess.crop_count);
        out.crop_size = static_cast<int32_t>(spec.preprocess.crop_size);
        out.max_batch = model->backend->max_batch;
        out.score_min = static_cast<float>(spec.score.min);
        out.score_max = static_cast<float>(spec.score.max);
        out.higher_is_better = spec.score.higher_is_better ? 1 : 0;
        out.units = spec.score.units.c_str();
        out.model_file = model->backend->model_file.c_str();
        // Fields past what the caller knows stay untouched; fields past ours are zeroed.
        size_t ours = sizeof(pmtiqa_model_info);
        std::memcpy(info, &out, std::min<size_t>(given, ours));
        if (given > ours) std::memset(reinterpret_cast<unsigned char*>(info) + ours, 0, given - ours);
    });
}

pmtiqa_status pmtiqa_score(pmtiqa_model* model, const pmtiqa_image* image, pmtiqa_result* result,
                           float* level_probs) {
    return guarded("pmtiqa_score", [&] {
        score_host(model, image, 1, result, level_probs);
    });
}

pmtiqa_status pmtiqa_score_batch(pmtiqa_model* model, const pmtiqa_image* images, size_t count,
                                 pmtiqa_result* results, float* level_probs) {
    return guarded("pmtiqa_score_batch", [&] {
        if (count == 0) {
            checked_model(model);
            return;
        }
        score_host(model, images, count, results, level_probs);
    });
}

pmtiqa_status pmtiqa_score_file(pmtiqa_model* model, const char* path, pmtiqa_result* result,
                                float* level_probs) {
    return guarded("pmtiqa_score_file", [&] {
        checked_model(model);
        if (!path) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "path is NULL");
        if (!result) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "result is NULL");
        cv::Mat rgb = pmtiqa::decode_file(path);
        pmtiqa_image image{rgb.data, rgb.cols, rgb.rows, static_cast<int64_t>(rgb.step[0]), PMTIQA_FORMAT_RGB};
        try {
            score_host(model, &image, 1, result, level_probs);
        } catch (const pmtiqa::Error& exc) {
            fail(exc.status(), std::string(path) + ": " + exc.what());
        }
    });
}

pmtiqa_status pmtiqa_score_device(pmtiqa_model* model, const pmtiqa_image* image, void* cuda_stream,
                                  pmtiqa_result* result, float* level_probs) {
    return guarded("pmtiqa_score_device", [&] {
        checked_model(model);
        pmtiqa::check_image(image, "image");
        if (!result) fail(PMTIQA_ERROR_INVALID_ARGUMENT, "result is NULL");
        const size_t levels = static_cast<size_t>(model->spec.score.num_levels);
        std::vector<float> score(1), probs(levels);
        std::lock_guard<std::mutex> lock(model->mutex);
        model->backend->score_device(*image, cuda_stream, score.data(), probs.data());
        deliver(*model, score, probs, result, level_probs);
    });
}

}  // extern "C"
