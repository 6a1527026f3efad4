// The C++ reader's view of model.json files: for each path given, one JSON line with the
// spec as pmtiqa_deploy.spec.ModelSpec.to_dict lays it out, or the error it raised.
// tests/native/test_cabi.py compares these with Python's reading of tests/spec_cases.json.
#include <iostream>

#include <nlohmann/json.hpp>

#include "error.h"
#include "spec.h"

using json = nlohmann::json;
using namespace pmtiqa;

template <typename T>
json nullable(const std::optional<T>& value) {
    return value ? json(*value) : json(nullptr);
}

json quantization(const std::optional<Quantization>& q) {
    if (!q) return nullptr;
    return {{"method", q->method}, {"activations", q->activations}, {"weights", q->weights},
            {"calibration", q->calibration}, {"calibration_images", q->calibration_images},
            {"quantized_convolutions", q->quantized_convolutions}, {"convolutions", q->convolutions},
            {"fp32_nodes", q->fp32_nodes}, {"fp32_op_types", q->fp32_op_types}};
}

json dump(const ModelSpec& spec) {
    const ScoreSpec& s = spec.score;
    const PreprocessSpec& p = spec.preprocess;
    const InputSpec& i = spec.input;
    json outputs = json::array(), artifacts = json::array();
    for (const OutputSpec& o : spec.outputs)
        outputs.push_back({{"name", o.name}, {"dtype", o.dtype}, {"shape", o.shape}, {"meaning", o.meaning}});
    for (const Artifact& a : spec.artifacts)
        artifacts.push_back({{"file", a.file}, {"format", a.format}, {"precision", a.precision},
                             {"sha256", a.sha256}, {"opset", nullable(a.opset)},
                             {"tensorrt_version", nullable(a.tensorrt_version)},
                             {"compute_capability", nullable(a.compute_capability)},
                             {"version_compatible", nullable(a.version_compatible)},
                             {"quantization", quantization(a.quantization)}});
    return {
        {"score", {{"min", s.min}, {"max", s.max}, {"units", s.units}, {"higher_is_better", s.higher_is_better},
                   {"num_levels", s.num_levels}, {"level_width", s.level_width}, {"dataset", s.dataset}}},
        {"preprocess", {{"colour_order", p.colour_order}, {"resize", p.resize}, {"width", nullable(p.width)},
                        {"height", nullable(p.height)}, {"shorter_side", nullable(p.shorter_side)},
                        {"interpolation", p.interpolation}, {"min_side", p.min_side}, {"crop_size", p.crop_size},
                        {"crop_count", p.crop_count}, {"crop_grid", p.crop_grid}, {"combine", p.combine},
                        {"mean", p.mean}, {"std", p.std}}},
        {"input", {{"name", i.name}, {"dtype", i.dtype}, {"layout", i.layout},
                   {"normalize_in_graph", i.normalize_in_graph}, {"batch_min", i.batch_min},
                   {"batch_opt", i.batch_opt}, {"batch_max", i.batch_max}}},
        {"outputs", outputs},
        {"backbone", spec.backbone},
        {"checkpoint_sha256", spec.checkpoint_sha256},
        {"artifacts", artifacts},
        {"producer", spec.producer},
        {"schema_version", spec.schema_version},
    };
}

int main(int argc, char** argv) {
    for (int k = 1; k < argc; ++k) {
        json line = {{"path", argv[k]}};
        try {
            line["spec"] = dump(load_spec(argv[k]));
        } catch (const Error& exc) {
            line["status"] = static_cast<int>(exc.status());
            line["message"] = exc.what();
        }
        std::cout << line.dump() << "\n";
    }
    return 0;
}
