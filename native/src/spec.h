// model.json in C++: the same contract and the same strictness as pmtiqa_deploy/spec.py.
// An unknown key, a missing key (all are required but those pmtiqa_deploy/spec_defaults.json
// lists), a wrong type, an invalid combination or a newer major schema version is a
// PMTIQA_ERROR_SPEC naming the file and the key. The struct defaults below are for building
// a spec in code; they never fill a gap in a file.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pmtiqa {

constexpr const char* kSchemaVersion = "1.0";
constexpr const char* kSpecFilename = "model.json";

struct ScoreSpec {
    double min = 0;
    double max = 0;
    std::string units = "MOS";
    bool higher_is_better = true;
    int64_t num_levels = 10;
    double level_width = 10.0;
    std::string dataset;

    // The quality level of a score: floor((score - min) / level_width), clamped.
    int level(float score) const;
};

struct PreprocessSpec {
    std::string colour_order = "RGB";
    std::string resize = "none";  // none | fixed | shorter_side
    std::optional<int64_t> width, height, shorter_side;
    std::string interpolation = "bilinear";
    int64_t min_side = 32;
    int64_t crop_size = 224;
    int64_t crop_count = 9;
    std::string crop_grid = "uniform";
    std::string combine = "mean";
    std::array<double, 3> mean{0.485, 0.456, 0.406};
    std::array<double, 3> std{0.229, 0.224, 0.225};
};

struct InputSpec {
    std::string name = "images";
    std::string dtype = "float32";  // float32 | float16 | uint8
    std::string layout = "BNCHW";   // BNCHW (float) | BNHWC (uint8)
    bool normalize_in_graph = false;
    int64_t batch_min = 1, batch_opt = 8, batch_max = 32;
};

struct OutputSpec {
    std::string name, dtype;
    std::vector<std::string> shape;  // ints written as their decimal text
    std::string meaning;
};

// How an INT8 artifact was made (pmtiqa-export --int8); read and checked, never used to run.
struct Quantization {
    std::string method, activations, weights, calibration;
    int64_t calibration_images = 0, quantized_convolutions = 0, convolutions = 0;
    std::vector<std::string> fp32_nodes, fp32_op_types;
};

struct Artifact {
    std::string file, format, precision, sha256;
    std::optional<int64_t> opset;
    std::optional<std::string> tensorrt_version, compute_capability;
    std::optional<bool> version_compatible;
    std::optional<Quantization> quantization;  // exactly for precision "int8"
};

struct ModelSpec {
    ScoreSpec score;
    PreprocessSpec preprocess;
    InputSpec input;
    std::vector<OutputSpec> outputs;
    std::string backbone = "resnet50";
    std::string checkpoint_sha256;
    std::vector<Artifact> artifacts;
    std::map<std::string, std::string> producer;
    std::string schema_version = kSchemaVersion;

    // The artifact of this format and precision, or nullptr.
    const Artifact* find_artifact(const std::string& format, const std::string& precision) const;
    // Bytes of one image's crops in the graph input's dtype and layout.
    size_t input_elements_per_image() const;
};

// Parse and validate model.json's text; `where` names the file in messages.
ModelSpec parse_spec(const std::string& text, const std::string& where);
// Read `directory`/model.json (or a path to the JSON file itself).
ModelSpec load_spec(const std::string& path);
// The SHA-256 of a file's bytes as lower-case hex (OpenSSL EVP); PMTIQA_ERROR_IO when it
// cannot be read.
std::string sha256_file(const std::string& path);
// The path of an artifact after checking the file exists and (if asked) its sha256.
std::string verify_artifact(const std::string& directory, const Artifact& artifact, bool check_hash);

}  // namespace pmtiqa
