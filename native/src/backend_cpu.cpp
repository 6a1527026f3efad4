// The CPU backend: model.onnx through OpenCV's DNN module (Debian's OpenCV 4.6), with the
// host preprocessing of preprocess.cpp.
//
// Two limits of OpenCV 4.6's ONNX importer shape this file:
// - ReduceMean (the mean over each image's crops) is imported as a Reshape whose target
//   shape is fixed when the graph is read, with the dynamic batch taken as 1; a forward
//   pass with more than one image then fails. So the network runs one image at a time
//   (max_batch 1); batches are split here. The mean over crops is still the graph's.
// - A Mul by a per-channel constant is imported as a Scale layer on axis 1 whatever the
//   broadcast says; in the uint8 graphs (normalisation in the graph, channels last) the
//   channel axis is the last one, and the forward pass fails. repair_scale_axes points such
//   layers at the axis their constant actually broadcasts along (what the Sub beside it
//   already gets right).
#include <opencv2/dnn.hpp>
#include <opencv2/dnn/all_layers.hpp>

#include <cmath>
#include <sstream>
#include <vector>

#include "backend.h"
#include "error.h"
#include "preprocess.h"

namespace pmtiqa {
namespace {

std::string shape_text(const cv::dnn::MatShape& shape) {
    std::ostringstream out;
    out << "[";
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    return out.str() + "]";
}

void repair_scale_axes(cv::dnn::Net& net, const cv::dnn::MatShape& input_shape) {
    for (const std::string& name : net.getLayerNames()) {
        int id = net.getLayerId(name);
        cv::Ptr<cv::dnn::ScaleLayer> scale = net.getLayer(id).dynamicCast<cv::dnn::ScaleLayer>();
        if (!scale || scale->blobs.size() != 1) continue;
        std::vector<cv::Ptr<cv::dnn::Layer>> inputs = net.getLayerInputs(id);
        if (inputs.size() != 1) continue;
        std::vector<cv::dnn::MatShape> in_shapes, out_shapes;
        net.getLayerShapes(input_shape, net.getLayerId(inputs[0]->name), in_shapes, out_shapes);
        if (out_shapes.empty()) continue;
        const cv::dnn::MatShape& shape = out_shapes[0];
        int values = static_cast<int>(scale->blobs[0].total());
        int axis = scale->axis;
        bool fits = axis >= 0 && axis < static_cast<int>(shape.size()) && shape[axis] == values;
        if (!fits && values > 1 && !shape.empty() && shape.back() == values)
            scale->axis = static_cast<int>(shape.size()) - 1;
    }
}

class CpuBackend : public Backend {
public:
    CpuBackend(const ModelSpec& spec, const std::string& directory, const OpenOptions& options) : spec_(spec) {
        if (options.precision == PMTIQA_PRECISION_FP16)
            fail(PMTIQA_ERROR_NOT_SUPPORTED, "the CPU backend runs the fp32 ONNX graph (model.onnx) only; "
                                             "open with precision AUTO or FP32");
        const Artifact* artifact = spec.find_artifact("onnx", "fp32");
        if (!artifact)
            fail(PMTIQA_ERROR_SPEC, "the spec lists no onnx fp32 artifact (model.onnx), which the CPU backend "
                                    "runs; re-export with pmtiqa-export");
        model_file = verify_artifact(directory, *artifact, options.verify_hash);
        kind = PMTIQA_BACKEND_CPU;
        precision = PMTIQA_PRECISION_FP32;
        max_batch = 1;
        if (options.threads > 0) cv::setNumThreads(options.threads);

        const int n = static_cast<int>(spec.preprocess.crop_count), s = static_cast<int>(spec.preprocess.crop_size);
        shape_ = spec.input.layout == "BNHWC" ? cv::dnn::MatShape{1, n, s, s, 3} : cv::dnn::MatShape{1, n, 3, s, s};
        for (const OutputSpec& out : spec.outputs)
            if (out.name == "score" || out.name == "level_probs") outputs_.push_back(out.name);
        try {
            net_ = cv::dnn::readNetFromONNX(model_file);
            net_.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
            net_.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
            repair_scale_axes(net_, shape_);
        } catch (const cv::Exception& exc) {
            fail(PMTIQA_ERROR_SPEC, "OpenCV " CV_VERSION " cannot read " + model_file + " (" + exc.err +
                                        "); re-export the model (opset 17 is what OpenCV 4.6 reads)");
        }
        // One pass over a blank image: a graph OpenCV cannot run, or outputs that do not
        // match the spec, fail here at open rather than at the first image.
        blob_.create(static_cast<int>(shape_.size()), shape_.data(), CV_32F);
        blob_.setTo(0);
        std::vector<float> score(1), probs(static_cast<size_t>(spec.score.num_levels));
        run(score.data(), probs.data(), "checking the graph on a blank image");
    }

    void score(const pmtiqa_image* images, size_t count, float* scores, float* probs) override {
        const size_t levels = static_cast<size_t>(spec_.score.num_levels);
        for (size_t i = 0; i < count; ++i) {
            cv::Mat rgb = to_rgb(images[i]);
            crops_as_float(rgb, spec_, blob_.ptr<float>());
            run(scores + i, probs + i * levels, "scoring");
        }
    }

private:
    void run(float* score, float* probs, const char* doing) {
        std::vector<cv::Mat> outs;
        try {
            net_.setInput(blob_, spec_.input.name);
            net_.forward(outs, outputs_);
        } catch (const cv::Exception& exc) {
            fail(PMTIQA_ERROR_BACKEND, "OpenCV " CV_VERSION " failed running " + model_file + " while " + doing +
                                           " (" + exc.err + ", input " + shape_text(shape_) + ")");
        }
        const size_t levels = static_cast<size_t>(spec_.score.num_levels);
        for (size_t i = 0; i < outputs_.size(); ++i) {
            const cv::Mat& out = outs.at(i);
            size_t want = outputs_[i] == "score" ? 1 : levels;
            if (out.total() != want || out.depth() != CV_32F)
                fail(PMTIQA_ERROR_SPEC, model_file + ": output '" + outputs_[i] + "' has " +
                                            std::to_string(out.total()) + " values for one image, the spec says " +
                                            std::to_string(want) + "; re-export so model.json and the file agree");
            const float* data = out.ptr<float>();
            if (outputs_[i] == "score") *score = data[0];
            else std::copy(data, data + levels, probs);
        }
    }

    const ModelSpec spec_;
    cv::dnn::Net net_;
    cv::dnn::MatShape shape_;
    cv::Mat blob_;
    std::vector<cv::String> outputs_;
};

}  // namespace

std::unique_ptr<Backend> open_cpu_backend(const ModelSpec& spec, const std::string& directory,
                                          const OpenOptions& options) {
    check_spec_outputs(spec);
    return std::make_unique<CpuBackend>(spec, directory, options);
}

}  // namespace pmtiqa
