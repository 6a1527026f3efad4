// The TensorRT backend: model.engine (a plain TensorRT plan) with the TensorRT C++ runtime
// API (10.x and 11.x: named I/O tensors, setInputShape, setTensorAddress, enqueueV3), and
// the shared CUDA kernel writing the engine's input buffer in place.
//
// Loading mirrors pmtiqa_deploy/backends/tensorrt.py: the plan's hash, TensorRT version
// and compute capability are checked against model.json before TensorRT sees the file;
// after deserialising, the engine's input/outputs and batch profile are checked against
// the spec. Buffers are sized for the spec's largest batch once and bound once.
//
// Host images: each batch's pixels and crop corners are packed into one pinned staging
// buffer, uploaded with one copy, and one kernel launch per image writes its slot; the
// engine runs on the same stream, so no host synchronisation happens before the outputs.
// Device images: the same kernel reads the caller's buffer on the caller's stream.
// Built only where CMake finds TensorRT (PMTIQA_WITH_TENSORRT).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <sstream>
#include <vector>

#include "backend.h"
#include "cuda_preprocess.h"
#include "error.h"
#include "half.h"
#include "preprocess.h"

namespace pmtiqa {
namespace {

constexpr size_t kAlign = 256;

size_t aligned(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void check_cuda(cudaError_t err, const std::string& what) {
    if (err == cudaSuccess) return;
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    pmtiqa_status status = err == cudaErrorMemoryAllocation ? PMTIQA_ERROR_OUT_OF_MEMORY : PMTIQA_ERROR_BACKEND;
    fail(status, what + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Keeps TensorRT's warnings and errors so a failed load can say why.
class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity > Severity::kWARNING) return;
        try {
            messages_.emplace_back(message);
            if (messages_.size() > 8) messages_.erase(messages_.begin());
        } catch (...) {
        }
    }
    std::string last() const {
        std::string out;
        for (size_t i = messages_.size() > 3 ? messages_.size() - 3 : 0; i < messages_.size(); ++i)
            out += (out.empty() ? "" : "; ") + messages_[i];
        return out.empty() ? "no message" : out;
    }

private:
    std::vector<std::string> messages_;
};

struct DeviceBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    void reserve(size_t n, const char* what) {
        if (n <= bytes) return;
        release();
        check_cuda(cudaMalloc(&ptr, n), std::string("cudaMalloc for ") + what);
        bytes = n;
    }
    void release() {
        if (ptr) cudaFree(ptr);
        ptr = nullptr, bytes = 0;
    }
};

struct PinnedBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    void reserve(size_t n, const char* what) {
        if (n <= bytes) return;
        release();
        check_cuda(cudaMallocHost(&ptr, n), std::string("cudaMallocHost for ") + what);
        bytes = n;
    }
    void release() {
        if (ptr) cudaFreeHost(ptr);
        ptr = nullptr, bytes = 0;
    }
};

std::vector<int> version_numbers(const std::string& text) {
    std::vector<int> out;
    std::regex digits("\\d+");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), digits); it != std::sregex_iterator() && out.size() < 3; ++it)
        out.push_back(std::stoi(it->str()));
    return out;
}

// Why a version-compatible plan built by `built` cannot run on runtime `here`, or "" when
// it can: TensorRT 11.4's support matrix (tensorrt.py's version_compatible_plan_runs):
// same major and not older, from 8.6; across majors only 10.x plans on 11.x and 8.x on 10.x.
std::string version_compatible_refusal(const std::vector<int>& built, const std::vector<int>& here) {
    auto at_least_8_6 = [](const std::vector<int>& v) { return v.size() >= 2 && (v[0] > 8 || (v[0] == 8 && v[1] >= 6)); };
    if (built.empty() || here.empty()) return "";
    if (!at_least_8_6(built) || !at_least_8_6(here)) return "version compatibility starts with TensorRT 8.6";
    if (built[0] == here[0]) return here < built ? "newer than this runtime: upgrade TensorRT" : "";
    if ((built[0] == 10 && here[0] == 11) || (built[0] == 8 && here[0] == 10)) return "";
    if (built[0] > here[0]) return "newer than this runtime: upgrade TensorRT";
    return "TensorRT runs version-compatible plans across majors only as 10.x on 11.x and 8.x on 10.x";
}

// The plan must fit this runtime and GPU (tensorrt.py's check_plan_compatibility).
void check_plan(const Artifact& artifact, int device, const std::string& gpu_name, int major, int minor) {
    const std::string rebuild = "rebuild the engine on this machine with pmtiqa-export (or export it "
                                "version-compatible and hardware-compatible to move it between machines)";
    int lib = getInferLibVersion();  // major * 10000 + minor * 100 + patch since TensorRT 10
    std::vector<int> here{lib / 10000, (lib / 100) % 100, lib % 100};
    std::string here_text = std::to_string(here[0]) + "." + std::to_string(here[1]) + "." + std::to_string(here[2]);
#ifdef PMTIQA_TENSORRT_LEAN
    if (!artifact.version_compatible.value_or(false))
        fail(PMTIQA_ERROR_SPEC, artifact.file + " is not version-compatible and this library is linked with "
                                    "TensorRT's lean runtime, which runs only version-compatible plans: link the "
                                    "full libnvinfer or " + rebuild);
#endif
    if (artifact.tensorrt_version) {
        std::vector<int> built = version_numbers(*artifact.tensorrt_version);
        if (artifact.version_compatible.value_or(false)) {
            std::string why = version_compatible_refusal(built, here);
            if (!why.empty())
                fail(PMTIQA_ERROR_SPEC, artifact.file + " was built by TensorRT " + *artifact.tensorrt_version +
                                            " and this runtime is " + here_text + ": " + why + "; or " + rebuild);
        } else {
            size_t n = std::min(built.size(), here.size());
            if (!std::equal(built.begin(), built.begin() + n, here.begin()))
                fail(PMTIQA_ERROR_SPEC, artifact.file + " was built by TensorRT " + *artifact.tensorrt_version +
                                            " and this runtime is " + here_text + "; a plan that is not version-"
                                            "compatible runs only on the version that built it: " + rebuild);
        }
    }
    if (artifact.compute_capability && *artifact.compute_capability != "unknown") {
        std::smatch m;
        const std::string& cc = *artifact.compute_capability;
        if (!std::regex_match(cc, m, std::regex("\\s*(?:sm_?)?(\\d+)\\.?(\\d)?\\s*(\\+?)\\s*")))
            fail(PMTIQA_ERROR_SPEC, "compute_capability '" + cc + "' is not of the form '8.6' or '8.0+'");
        int want_major, want_minor;
        if (m[2].matched) {
            want_major = std::stoi(m[1].str()), want_minor = std::stoi(m[2].str());
        } else {
            std::string d = m[1].str();
            want_major = d.size() > 1 ? std::stoi(d.substr(0, d.size() - 1)) : 0;
            want_minor = d.back() - '0';
        }
        bool or_newer = m[3].length() > 0;
        auto have = std::make_pair(major, minor), want = std::make_pair(want_major, want_minor);
        if (or_newer ? have < want : have != want)
            fail(PMTIQA_ERROR_SPEC, artifact.file + " was built for compute capability " + cc + "; GPU " +
                                        std::to_string(device) + " (" + gpu_name + ") is " + std::to_string(major) +
                                        "." + std::to_string(minor) + ": " + rebuild);
    }
}

const char* dtype_name(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return "float32";
        case nvinfer1::DataType::kHALF: return "float16";
        case nvinfer1::DataType::kUINT8: return "uint8";
        case nvinfer1::DataType::kINT8: return "int8";
        case nvinfer1::DataType::kINT32: return "int32";
        case nvinfer1::DataType::kINT64: return "int64";
        case nvinfer1::DataType::kBOOL: return "bool";
        default: return "other";
    }
}

size_t dtype_size(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT:
        case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kINT64: return 8;
        default: return 1;
    }
}

std::string dims_text(const nvinfer1::Dims& dims) {
    std::ostringstream out;
    out << "[";
    for (int i = 0; i < dims.nbDims; ++i) out << (i ? ", " : "") << dims.d[i];
    return out.str() + "]";
}

struct Tensor {
    std::string name;
    nvinfer1::DataType type;
    size_t rows_per_image = 1;  // leading-axis rows per image: 1 (score, level_probs) or N (debug)
    size_t row_bytes = 0;       // bytes of one leading-axis row
    DeviceBuffer device;
    PinnedBuffer host;
};

class TensorRTBackend : public Backend {
public:
    TensorRTBackend(const ModelSpec& spec, const std::string& directory, const OpenOptions& options)
        : spec_(spec), device_(options.device_id), resize_mode_(kernel_resize_mode(spec.preprocess)) {
        const Artifact* artifact = pick_artifact(options.precision);
        kind = PMTIQA_BACKEND_TENSORRT;
        precision = artifact->precision == "fp16" ? PMTIQA_PRECISION_FP16 : PMTIQA_PRECISION_FP32;
        max_batch = static_cast<int>(spec.input.batch_max);
        std::string why;
        if (!tensorrt_usable(device_, &why)) fail(PMTIQA_ERROR_BACKEND_UNAVAILABLE, why);
        check_cuda(cudaSetDevice(device_), "cudaSetDevice(" + std::to_string(device_) + ")");
        cudaDeviceProp prop{};
        check_cuda(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
        check_plan(*artifact, device_, prop.name, prop.major, prop.minor);
        model_file = verify_artifact(directory, *artifact, options.verify_hash);
        try {
            load(*artifact, prop);
        } catch (...) {
            release();
            throw;
        }
    }

    ~TensorRTBackend() override { release(); }

    void score(const pmtiqa_image* images, size_t count, float* scores, float* probs) override {
        check_cuda(cudaSetDevice(device_), "cudaSetDevice");
        const size_t levels = static_cast<size_t>(spec_.score.num_levels);
        for (size_t start = 0; start < count; start += static_cast<size_t>(max_batch)) {
            size_t n = std::min(count - start, static_cast<size_t>(max_batch));
            run_host(images + start, n, scores + start, probs + start * levels);
        }
    }

    void score_device(const pmtiqa_image& image, void* stream_handle, float* score, float* probs) override {
        check_cuda(cudaSetDevice(device_), "cudaSetDevice");
        cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
        cudaPointerAttributes attributes{};
        check_cuda(cudaPointerGetAttributes(&attributes, image.data), "cudaPointerGetAttributes(image.data)");
        if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
            fail(PMTIQA_ERROR_INVALID_ARGUMENT, "image.data is not device memory; use pmtiqa_score for host images");
        if (attributes.device != device_)
            fail(PMTIQA_ERROR_INVALID_ARGUMENT, "image.data lives on GPU " + std::to_string(attributes.device) +
                                                    " but the model runs on GPU " + std::to_string(device_));
        Plan plan = plan_image(image);
        staging_.reserve(aligned(plan.boxes.size() * sizeof(int)), "the crop corners");
        boxes_device_.reserve(staging_.bytes, "the crop corners");
        std::memcpy(staging_.ptr, plan.boxes.data(), plan.boxes.size() * sizeof(int));
        check_cuda(cudaMemcpyAsync(boxes_device_.ptr, staging_.ptr, plan.boxes.size() * sizeof(int),
                                   cudaMemcpyHostToDevice, stream), "uploading the crop corners");
        size_t batch = std::max<size_t>(1, static_cast<size_t>(spec_.input.batch_min));
        for (size_t slot = 0; slot < batch; ++slot)
            launch(image.data, image, plan, static_cast<const int*>(boxes_device_.ptr), slot, stream);
        execute(batch, 1, stream, score, probs);
    }

private:
    struct Plan {
        int dst_w, dst_h;
        std::vector<int> boxes;  // (y, x) pairs
    };

    const Artifact* pick_artifact(pmtiqa_precision wanted) const {
        const Artifact* fp16 = spec_.find_artifact("tensorrt", "fp16");
        const Artifact* fp32 = spec_.find_artifact("tensorrt", "fp32");
        const Artifact* chosen = wanted == PMTIQA_PRECISION_FP16 ? fp16 : wanted == PMTIQA_PRECISION_FP32 ? fp32
                                                                                                    : (fp16 ? fp16 : fp32);
        if (!chosen)
            fail(PMTIQA_ERROR_SPEC, std::string("the spec lists no TensorRT ") +
                                        (wanted == PMTIQA_PRECISION_FP16 ? "fp16 " : wanted == PMTIQA_PRECISION_FP32 ? "fp32 " : "") +
                                        "engine; build one with pmtiqa-export on a machine with TensorRT and a GPU");
        return chosen;
    }

    void load(const Artifact& artifact, const cudaDeviceProp& prop) {
        std::ifstream in(model_file, std::ios::binary);
        std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (plan.empty()) fail(PMTIQA_ERROR_IO, "cannot read " + model_file);
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) fail(PMTIQA_ERROR_BACKEND, "TensorRT could not create a runtime: " + logger_.last());
        // A version-compatible plan carries the lean runtime as host code; its hash was
        // just checked against model.json, so it is the file export wrote.
        if (artifact.version_compatible.value_or(false)) runtime_->setEngineHostCodeAllowed(true);
        engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine_)
            fail(PMTIQA_ERROR_SPEC, "TensorRT " + std::to_string(getInferLibVersion()) + " could not load " + model_file +
                                        " on " + prop.name + ": " + logger_.last() + ". Rebuild the engine with pmtiqa-export");
        check_io();
        context_.reset(engine_->createExecutionContext());
        if (!context_)
            fail(PMTIQA_ERROR_OUT_OF_MEMORY, "TensorRT could not create an execution context for " + model_file + " (" +
                                                 logger_.last() + "); is the GPU out of memory?");
        check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        allocate();
    }

    void check_io() {
        const std::string& input = spec_.input.name;
        bool found_input = false;
        for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
            std::string name = engine_->getIOTensorName(i);
            nvinfer1::DataType type = engine_->getTensorDataType(name.c_str());
            if (engine_->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT) {
                if (name != input)
                    fail(PMTIQA_ERROR_SPEC, model_file + " has input '" + name + "' but the spec says '" + input + "'");
                if (spec_.input.dtype != dtype_name(type))
                    fail(PMTIQA_ERROR_SPEC, model_file + ": input '" + name + "' is " + dtype_name(type) +
                                                " but the spec says " + spec_.input.dtype);
                nvinfer1::Dims dims = engine_->getTensorShape(name.c_str());
                std::vector<int64_t> want = expected_shape(-1);
                bool same = dims.nbDims == static_cast<int>(want.size());
                for (int d = 1; same && d < dims.nbDims; ++d) same = dims.d[d] == want[d];
                if (!same)
                    fail(PMTIQA_ERROR_SPEC, model_file + ": input shape " + dims_text(dims) + " does not match the spec's " +
                                                spec_.input.layout + " with " + std::to_string(spec_.preprocess.crop_count) +
                                                " crops of " + std::to_string(spec_.preprocess.crop_size));
                nvinfer1::Dims low = engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
                nvinfer1::Dims high = engine_->getProfileShape(name.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
                if (dims.d[0] < 0 && low.nbDims > 0 &&
                    (low.d[0] > spec_.input.batch_min || high.d[0] < spec_.input.batch_max))
                    fail(PMTIQA_ERROR_SPEC, model_file + " accepts batches " + std::to_string(low.d[0]) + ".." +
                                                std::to_string(high.d[0]) + " but the spec promises " +
                                                std::to_string(spec_.input.batch_min) + ".." +
                                                std::to_string(spec_.input.batch_max) + ": rebuild the engine");
                input_type_ = type;
                found_input = true;
            } else {
                if (type != nvinfer1::DataType::kFLOAT && type != nvinfer1::DataType::kHALF)
                    fail(PMTIQA_ERROR_SPEC, model_file + ": output '" + name + "' is " + dtype_name(type) +
                                                "; the runtime reads float32 or float16 outputs");
                Tensor tensor;
                tensor.name = name;
                tensor.type = type;
                outputs_.push_back(std::move(tensor));
            }
        }
        if (!found_input) fail(PMTIQA_ERROR_SPEC, model_file + " has no input '" + input + "'");
        for (const char* name : {"score", "level_probs"})
            if (std::none_of(outputs_.begin(), outputs_.end(), [&](const Tensor& t) { return t.name == name; }))
                fail(PMTIQA_ERROR_SPEC, model_file + " has no output '" + name + "'; re-export the model");
    }

    std::vector<int64_t> expected_shape(int64_t batch) const {
        int64_t n = spec_.preprocess.crop_count, s = spec_.preprocess.crop_size;
        if (spec_.input.layout == "BNHWC") return {batch, n, s, s, 3};
        return {batch, n, 3, s, s};
    }

    void set_batch(size_t batch) {
        if (batch == batch_) return;
        std::vector<int64_t> shape = expected_shape(static_cast<int64_t>(batch));
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int>(shape.size());
        for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
        if (!context_->setInputShape(spec_.input.name.c_str(), dims))
            fail(PMTIQA_ERROR_BACKEND, model_file + ": the engine does not accept input shape " + dims_text(dims) +
                                           " (" + logger_.last() + ")");
        batch_ = batch;
    }

    void allocate() {
        const size_t batch = static_cast<size_t>(spec_.input.batch_max);
        set_batch(batch);
        slot_bytes_ = spec_.input_elements_per_image() * dtype_size(input_type_);
        input_.reserve(slot_bytes_ * batch, "the engine input");
        if (!context_->setTensorAddress(spec_.input.name.c_str(), input_.ptr))
            fail(PMTIQA_ERROR_BACKEND, model_file + ": TensorRT refused the input address");
        for (Tensor& t : outputs_) {
            nvinfer1::Dims dims = context_->getTensorShape(t.name.c_str());
            if (dims.nbDims < 1 || dims.d[0] <= 0 || static_cast<size_t>(dims.d[0]) % batch)
                fail(PMTIQA_ERROR_SPEC, model_file + ": output '" + t.name + "' has shape " + dims_text(dims) +
                                            " at batch " + std::to_string(batch));
            size_t per_row = 1;
            for (int d = 1; d < dims.nbDims; ++d) per_row *= static_cast<size_t>(dims.d[d]);
            t.rows_per_image = static_cast<size_t>(dims.d[0]) / batch;
            t.row_bytes = per_row * dtype_size(t.type);
            size_t expected = t.name == "score" ? 1 : t.name == "level_probs" ? static_cast<size_t>(spec_.score.num_levels) : 0;
            if (expected && (t.rows_per_image != 1 || per_row != expected))
                fail(PMTIQA_ERROR_SPEC, model_file + ": output '" + t.name + "' has shape " + dims_text(dims) +
                                            " at batch " + std::to_string(batch) + "; the spec expects " +
                                            std::to_string(expected) + " value(s) per image");
            size_t bytes = t.rows_per_image * t.row_bytes * batch;
            t.device.reserve(bytes, "an engine output");
            t.host.reserve(bytes, "an engine output");
            if (!context_->setTensorAddress(t.name.c_str(), t.device.ptr))
                fail(PMTIQA_ERROR_BACKEND, model_file + ": TensorRT refused the address of output '" + t.name + "'");
        }
        for (int c = 0; c < 3; ++c) {
            mean_[c] = static_cast<float>(spec_.preprocess.mean[c]) * 255.0f;
            inv_std_[c] = 1.0f / (static_cast<float>(spec_.preprocess.std[c]) * 255.0f);
        }
    }

    Plan plan_image(const pmtiqa_image& image) const {
        Size2 size = resized_size(image.height, image.width, spec_.preprocess);
        Plan plan{size.width, size.height, {}};
        for (const auto& box : crop_boxes(size.height, size.width, static_cast<int>(spec_.preprocess.crop_size),
                                          static_cast<int>(spec_.preprocess.crop_count))) {
            plan.boxes.push_back(box[0]);
            plan.boxes.push_back(box[1]);
        }
        return plan;
    }

    void launch(const unsigned char* src, const pmtiqa_image& image, const Plan& plan, const int* boxes, size_t slot,
                cudaStream_t stream) {
        CropsLaunch a{};
        a.src = src;
        a.src_w = image.width, a.src_h = image.height, a.src_pitch = static_cast<int>(image.stride);
        a.src_format = image.format;
        a.dst_w = plan.dst_w, a.dst_h = plan.dst_h;
        a.boxes = boxes;
        a.n_crops = static_cast<int>(spec_.preprocess.crop_count);
        a.crop = static_cast<int>(spec_.preprocess.crop_size);
        std::copy(mean_, mean_ + 3, a.mean);
        std::copy(inv_std_, inv_std_ + 3, a.inv_std);
        a.out = static_cast<unsigned char*>(input_.ptr) + slot * slot_bytes_;
        a.out_kind = input_type_ == nvinfer1::DataType::kHALF ? kOutFloat16
                     : input_type_ == nvinfer1::DataType::kUINT8 ? kOutUint8 : kOutFloat32;
        a.resize_mode = resize_mode_;
        check_cuda(launch_crops(a, stream), "launching pmtiqa_crops");
    }

    // Host images: one packed upload, one kernel per slot (padding slots repeat the last
    // image up to the engine's minimum batch), then the engine.
    void run_host(const pmtiqa_image* images, size_t count, float* scores, float* probs) {
        std::vector<Plan> plans;
        std::vector<size_t> image_at, boxes_at;
        size_t offset = 0;
        for (size_t i = 0; i < count; ++i) {
            plans.push_back(plan_image(images[i]));
            size_t row = static_cast<size_t>(images[i].width) * format_channels(images[i].format);
            image_at.push_back(offset);
            offset = aligned(offset + row * images[i].height);
            boxes_at.push_back(offset);
            offset = aligned(offset + plans.back().boxes.size() * sizeof(int));
        }
        staging_.reserve(offset, "staging the images");
        upload_.reserve(offset, "the uploaded images");
        unsigned char* host = static_cast<unsigned char*>(staging_.ptr);
        for (size_t i = 0; i < count; ++i) {
            size_t row = static_cast<size_t>(images[i].width) * format_channels(images[i].format);
            for (int y = 0; y < images[i].height; ++y)
                std::memcpy(host + image_at[i] + row * y, images[i].data + images[i].stride * y, row);
            std::memcpy(host + boxes_at[i], plans[i].boxes.data(), plans[i].boxes.size() * sizeof(int));
        }
        check_cuda(cudaMemcpyAsync(upload_.ptr, staging_.ptr, offset, cudaMemcpyHostToDevice, stream_),
                   "uploading the images");
        size_t batch = std::max(count, static_cast<size_t>(spec_.input.batch_min));
        unsigned char* device = static_cast<unsigned char*>(upload_.ptr);
        for (size_t slot = 0; slot < batch; ++slot) {
            size_t i = std::min(slot, count - 1);
            pmtiqa_image packed = images[i];
            packed.stride = static_cast<int64_t>(packed.width) * format_channels(packed.format);
            launch(device + image_at[i], packed, plans[i], reinterpret_cast<const int*>(device + boxes_at[i]), slot,
                   stream_);
        }
        execute(batch, count, stream_, scores, probs);
    }

    // Run the engine on `batch` filled slots and read back the first `count` images.
    void execute(size_t batch, size_t count, cudaStream_t stream, float* scores, float* probs) {
        set_batch(batch);
        if (!context_->enqueueV3(stream))
            fail(PMTIQA_ERROR_BACKEND, "TensorRT failed to enqueue " + model_file + ": " + logger_.last());
        for (Tensor& t : outputs_)
            check_cuda(cudaMemcpyAsync(t.host.ptr, t.device.ptr, t.rows_per_image * t.row_bytes * count,
                                       cudaMemcpyDeviceToHost, stream), "copying output '" + t.name + "'");
        check_cuda(cudaStreamSynchronize(stream), "running " + model_file);
        const size_t levels = static_cast<size_t>(spec_.score.num_levels);
        for (const Tensor& t : outputs_) {
            float* target = t.name == "score" ? scores : t.name == "level_probs" ? probs : nullptr;
            if (!target) continue;
            size_t values = count * (t.name == "score" ? 1 : levels);
            if (t.type == nvinfer1::DataType::kHALF) {
                const uint16_t* half = static_cast<const uint16_t*>(t.host.ptr);
                for (size_t i = 0; i < values; ++i) target[i] = half_to_float(half[i]);
            } else {
                std::memcpy(target, t.host.ptr, values * sizeof(float));
            }
        }
    }

    void release() noexcept {
        if (stream_) cudaStreamSynchronize(stream_);
        context_.reset();
        engine_.reset();
        runtime_.reset();
        input_.release();
        upload_.release();
        boxes_device_.release();
        staging_.release();
        for (Tensor& t : outputs_) t.device.release(), t.host.release();
        outputs_.clear();
        if (stream_) cudaStreamDestroy(stream_);
        stream_ = nullptr;
    }

    const ModelSpec spec_;
    const int device_;
    const int resize_mode_;  // CropsResizeMode of the spec's interpolation
    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    nvinfer1::DataType input_type_ = nvinfer1::DataType::kFLOAT;
    size_t slot_bytes_ = 0, batch_ = 0;
    float mean_[3] = {}, inv_std_[3] = {};
    DeviceBuffer input_, upload_, boxes_device_;
    PinnedBuffer staging_;
    std::vector<Tensor> outputs_;
};

}  // namespace

bool tensorrt_built() { return true; }

bool tensorrt_usable(int device_id, std::string* why) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        cudaGetLastError();
        if (why) *why = std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(err) + ")";
        return false;
    }
    if (device_id >= count) {
        if (why) *why = "CUDA device " + std::to_string(device_id) + " does not exist (" + std::to_string(count) + " visible)";
        return false;
    }
    return true;
}

std::unique_ptr<Backend> open_tensorrt_backend(const ModelSpec& spec, const std::string& directory,
                                               const OpenOptions& options) {
    check_spec_outputs(spec);
    if (options.threads > 0)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "threads applies to the CPU backend only; leave it 0 for TensorRT");
    return std::make_unique<TensorRTBackend>(spec, directory, options);
}

}  // namespace pmtiqa
