// Strict model.json reading, mirroring pmtiqa_deploy/spec.py key for key: every key
// required except those pmtiqa_deploy/spec_defaults.json lists (compiled in as
// spec_defaults.h), the same type rules (an int is a JSON integer, a float any JSON
// number, never a bool), the same checks of combinations, the same schema rule. Artifact
// hashes are checked with OpenSSL's libcrypto (EVP), as Python checks them with hashlib.
#include "spec.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <sys/stat.h>
#include <vector>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "error.h"
#include "spec_defaults.h"

namespace pmtiqa {
namespace {

using json = nlohmann::json;

[[noreturn]] void spec_error(const std::string& message) { fail(PMTIQA_ERROR_SPEC, message); }

std::string type_name(const json& value) {
    if (value.is_number_integer()) return "int";
    if (value.is_number_float()) return "float";
    if (value.is_boolean()) return "bool";
    if (value.is_null()) return "None";
    if (value.is_string()) return "str";
    if (value.is_array()) return "list";
    return "dict";
}

std::string join(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
    return out + "]";
}

// spec_defaults.json's optional keys for the object at `where` ("spec.outputs[1]" looks
// up "outputs[].<key>"), with their defaults.
std::map<std::string, json> optional_keys(const std::string& where) {
    static const json table = json::parse(kSpecDefaultsJson).at("optional");
    std::string prefix = std::regex_replace(where, std::regex(R"(\[\d+\])"), "[]");
    prefix = prefix == "spec" ? "" : prefix.substr(prefix.rfind("spec.", 0) == 0 ? 5 : 0);
    std::map<std::string, json> found;
    for (auto it = table.begin(); it != table.end(); ++it) {
        const std::string& path = it.key();
        size_t dot = path.rfind('.');
        std::string parent = dot == std::string::npos ? "" : path.substr(0, dot);
        if (parent == prefix) found[path.substr(dot == std::string::npos ? 0 : dot + 1)] = it.value();
    }
    return found;
}

// One JSON object read field by field: unknown keys and missing keys (all but the
// optional ones, which read as their defaults) are rejected up front.
class Fields {
public:
    Fields(const json& data, std::string where, std::initializer_list<const char*> known)
        : data_(data), where_(std::move(where)), defaults_(optional_keys(where_)) {
        if (!data.is_object()) spec_error(where_ + ": expected an object, got " + type_name(data));
        std::set<std::string> names(known.begin(), known.end());
        std::vector<std::string> unknown, missing;
        for (auto it = data.begin(); it != data.end(); ++it)
            if (!names.count(it.key())) unknown.push_back(it.key());
        if (!unknown.empty())
            spec_error(where_ + ": unknown key(s) " + join(unknown) + "; this spec was written by a "
                       "different pmtiqa-deploy version or edited by hand");
        for (const std::string& name : names)
            if (!data.contains(name) && !defaults_.count(name)) missing.push_back(name);
        if (!missing.empty())
            spec_error(where_ + ": missing key(s) " + join(missing) + " (schema " + kSchemaVersion +
                       " requires them); re-export the model with pmtiqa-export");
    }

    const json* get(const char* key) const {
        auto it = data_.find(key);
        if (it != data_.end()) return &*it;
        auto fallback = defaults_.find(key);
        return fallback == defaults_.end() ? nullptr : &fallback->second;
    }
    std::string at(const char* key) const { return where_ + "." + key; }

    void number(const char* key, double& out) const {
        if (const json* v = get(key)) out = as_number(*v, at(key));
    }
    void integer(const char* key, int64_t& out) const {
        if (const json* v = get(key)) out = as_integer(*v, at(key));
    }
    void boolean(const char* key, bool& out) const {
        if (const json* v = get(key)) {
            if (!v->is_boolean()) spec_error(at(key) + ": expected bool, got " + v->dump());
            out = v->get<bool>();
        }
    }
    void string(const char* key, std::string& out) const {
        if (const json* v = get(key)) out = as_string(*v, at(key));
    }
    void optional_integer(const char* key, std::optional<int64_t>& out) const {
        if (const json* v = get(key)) out = v->is_null() ? std::nullopt : std::optional(as_integer(*v, at(key)));
    }
    void optional_string(const char* key, std::optional<std::string>& out) const {
        if (const json* v = get(key)) out = v->is_null() ? std::nullopt : std::optional(as_string(*v, at(key)));
    }
    void optional_boolean(const char* key, std::optional<bool>& out) const {
        if (const json* v = get(key)) {
            if (v->is_null()) { out = std::nullopt; return; }
            if (!v->is_boolean()) spec_error(at(key) + ": expected bool, got " + v->dump());
            out = v->get<bool>();
        }
    }
    void triple(const char* key, std::array<double, 3>& out) const {
        const json* v = get(key);
        if (!v) return;
        if (!v->is_array()) spec_error(at(key) + ": expected a list, got " + type_name(*v));
        if (v->size() != 3) spec_error(at(key) + ": expected 3 values, got " + std::to_string(v->size()));
        for (size_t i = 0; i < 3; ++i) out[i] = as_number((*v)[i], at(key) + "[" + std::to_string(i) + "]");
    }

    static double as_number(const json& v, const std::string& where) {
        if (!v.is_number()) spec_error(where + ": expected a number, got " + v.dump());
        return v.get<double>();
    }
    static int64_t as_integer(const json& v, const std::string& where) {
        if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX))
            spec_error(where + ": expected int, got " + v.dump());
        return v.get<int64_t>();
    }
    static std::string as_string(const json& v, const std::string& where) {
        if (!v.is_string()) spec_error(where + ": expected str, got " + v.dump());
        return v.get<std::string>();
    }

private:
    const json& data_;
    std::string where_;
    std::map<std::string, json> defaults_;
};

bool one_of(const std::string& value, std::initializer_list<const char*> options) {
    return std::any_of(options.begin(), options.end(), [&](const char* o) { return value == o; });
}

std::string repr(const std::string& value) { return "'" + value + "'"; }

ScoreSpec parse_score(const json& data, const std::string& where) {
    Fields f(data, where, {"min", "max", "units", "higher_is_better", "num_levels", "level_width", "dataset"});
    ScoreSpec s;
    f.number("min", s.min);
    f.number("max", s.max);
    f.string("units", s.units);
    f.boolean("higher_is_better", s.higher_is_better);
    f.integer("num_levels", s.num_levels);
    f.number("level_width", s.level_width);
    f.string("dataset", s.dataset);
    std::ostringstream msg;
    if (!(s.max > s.min)) {
        msg << "score range is empty: min=" << s.min << " max=" << s.max;
        spec_error(where + ": " + msg.str());
    }
    if (!(s.level_width > 0)) {
        msg << "level_width must be positive, got " << s.level_width;
        spec_error(where + ": " + msg.str());
    }
    double expected = std::ceil((s.max - s.min) / s.level_width - 1e-9);
    if (static_cast<double>(s.num_levels) != expected) {
        msg << "num_levels=" << s.num_levels << " disagrees with the range: ceil((" << s.max << " - "
            << s.min << ") / " << s.level_width << ") = " << expected;
        spec_error(where + ": " + msg.str());
    }
    return s;
}

PreprocessSpec parse_preprocess(const json& data, const std::string& where) {
    Fields f(data, where, {"colour_order", "resize", "width", "height", "shorter_side", "interpolation",
                           "min_side", "crop_size", "crop_count", "crop_grid", "combine", "mean", "std"});
    PreprocessSpec p;
    f.string("colour_order", p.colour_order);
    f.string("resize", p.resize);
    f.optional_integer("width", p.width);
    f.optional_integer("height", p.height);
    f.optional_integer("shorter_side", p.shorter_side);
    f.string("interpolation", p.interpolation);
    f.integer("min_side", p.min_side);
    f.integer("crop_size", p.crop_size);
    f.integer("crop_count", p.crop_count);
    f.string("crop_grid", p.crop_grid);
    f.string("combine", p.combine);
    f.triple("mean", p.mean);
    f.triple("std", p.std);
    auto bad = [&](const std::string& message) { spec_error(where + ": " + message); };
    if (p.colour_order != "RGB") bad("colour_order must be 'RGB', got " + repr(p.colour_order));
    if (!one_of(p.resize, {"none", "fixed", "shorter_side"}))
        bad("resize must be one of ('none', 'fixed', 'shorter_side'), got " + repr(p.resize));
    bool fixed = p.width.has_value() || p.height.has_value();
    if (p.resize == "fixed" && !(p.width.value_or(0) && p.height.value_or(0)))
        bad("resize='fixed' needs both width and height");
    if (p.resize != "fixed" && fixed) bad("width/height are only valid with resize='fixed', not " + repr(p.resize));
    if ((p.resize == "shorter_side") != p.shorter_side.has_value())
        bad("shorter_side must be set exactly when resize='shorter_side'");
    if (p.interpolation != "bilinear") bad("interpolation must be 'bilinear', got " + repr(p.interpolation));
    if (p.crop_grid != "uniform" || p.combine != "mean") bad("crop_grid must be 'uniform' and combine must be 'mean'");
    if (p.crop_count < 1 || p.crop_size < 1 || p.min_side < 1)
        bad("crop_count, crop_size and min_side must be positive");
    if (*std::min_element(p.std.begin(), p.std.end()) <= 0) bad("mean and std need three values each, std positive");
    // Beyond spec.py (which has no size limits): sizes that would overflow int arithmetic.
    if (p.crop_size > 8192 || p.crop_count > 4096 || p.width.value_or(1) < 1 || p.height.value_or(1) < 1 ||
        p.width.value_or(1) > 65536 || p.height.value_or(1) > 65536 || p.shorter_side.value_or(1) < 1 ||
        p.shorter_side.value_or(1) > 65536)
        bad("a size is out of range (crop_size <= 8192, crop_count <= 4096, resize sizes 1..65536)");
    return p;
}

InputSpec parse_input(const json& data, const std::string& where) {
    Fields f(data, where, {"name", "dtype", "layout", "normalize_in_graph", "batch_min", "batch_opt", "batch_max"});
    InputSpec s;
    f.string("name", s.name);
    f.string("dtype", s.dtype);
    f.string("layout", s.layout);
    f.boolean("normalize_in_graph", s.normalize_in_graph);
    f.integer("batch_min", s.batch_min);
    f.integer("batch_opt", s.batch_opt);
    f.integer("batch_max", s.batch_max);
    auto bad = [&](const std::string& message) { spec_error(where + ": " + message); };
    if (!one_of(s.dtype, {"float32", "float16", "uint8"}))
        bad("input dtype must be one of ('float32', 'float16', 'uint8'), got " + repr(s.dtype));
    if (!one_of(s.layout, {"BNCHW", "BNHWC"})) bad("input layout must be one of ('BNCHW', 'BNHWC'), got " + repr(s.layout));
    if ((s.dtype == "uint8") != (s.layout == "BNHWC")) bad("uint8 input uses layout BNHWC; float inputs use BNCHW");
    if ((s.dtype == "uint8") != s.normalize_in_graph) bad("normalisation is in the graph exactly when the input is uint8");
    if (!(1 <= s.batch_min && s.batch_min <= s.batch_opt && s.batch_opt <= s.batch_max))
        bad("batch range must satisfy 1 <= min <= opt <= max, got " + std::to_string(s.batch_min) + "/" +
            std::to_string(s.batch_opt) + "/" + std::to_string(s.batch_max));
    return s;
}

OutputSpec parse_output(const json& data, const std::string& where) {
    Fields f(data, where, {"name", "dtype", "shape", "meaning"});
    OutputSpec o;
    f.string("name", o.name);
    f.string("dtype", o.dtype);
    f.string("meaning", o.meaning);
    const json& shape = *f.get("shape");
    if (!shape.is_array()) spec_error(f.at("shape") + ": expected a list, got " + type_name(shape));
    for (size_t i = 0; i < shape.size(); ++i) {
        const json& d = shape[i];
        if (d.is_string()) o.shape.push_back(d.get<std::string>());
        else if (d.is_number_integer()) o.shape.push_back(std::to_string(d.get<int64_t>()));
        else spec_error(f.at("shape") + "[" + std::to_string(i) + "]: no type matches " + d.dump());
    }
    return o;
}

std::vector<std::string> string_list(const json* v, const std::string& where) {
    std::vector<std::string> out;
    if (!v) return out;
    if (!v->is_array()) spec_error(where + ": expected a list, got " + type_name(*v));
    for (size_t i = 0; i < v->size(); ++i)
        out.push_back(Fields::as_string((*v)[i], where + "[" + std::to_string(i) + "]"));
    return out;
}

Quantization parse_quantization(const json& data, const std::string& where) {
    Fields f(data, where, {"method", "activations", "weights", "calibration", "calibration_images",
                           "quantized_convolutions", "convolutions", "fp32_nodes", "fp32_op_types"});
    Quantization q;
    f.string("method", q.method);
    f.string("activations", q.activations);
    f.string("weights", q.weights);
    f.string("calibration", q.calibration);
    f.integer("calibration_images", q.calibration_images);
    f.integer("quantized_convolutions", q.quantized_convolutions);
    f.integer("convolutions", q.convolutions);
    q.fp32_nodes = string_list(f.get("fp32_nodes"), f.at("fp32_nodes"));
    q.fp32_op_types = string_list(f.get("fp32_op_types"), f.at("fp32_op_types"));
    return q;
}

Artifact parse_artifact(const json& data, const std::string& where) {
    Fields f(data, where, {"file", "format", "precision", "sha256", "opset", "tensorrt_version",
                           "compute_capability", "version_compatible", "quantization"});
    Artifact a;
    f.string("file", a.file);
    f.string("format", a.format);
    f.string("precision", a.precision);
    f.string("sha256", a.sha256);
    f.optional_integer("opset", a.opset);
    f.optional_string("tensorrt_version", a.tensorrt_version);
    f.optional_string("compute_capability", a.compute_capability);
    f.optional_boolean("version_compatible", a.version_compatible);
    if (!one_of(a.format, {"onnx", "tensorrt"}))
        spec_error(where + ": artifact format must be 'onnx' or 'tensorrt', got " + repr(a.format));
    if (!one_of(a.precision, {"fp32", "fp16", "int8"}))
        spec_error(where + ": artifact precision must be one of ('fp32', 'fp16', 'int8'), got " +
                   repr(a.precision));
    // INT8 artifacts (pmtiqa-export --int8) say how they were quantized; this library runs
    // the FP32/FP16 ones, but reads the entry as strictly as spec.py does.
    const json* q = f.get("quantization");
    if (q && !q->is_null()) a.quantization = parse_quantization(*q, f.at("quantization"));
    if ((a.precision == "int8") != a.quantization.has_value())
        spec_error(where + ": an artifact records its quantization exactly when its precision is int8");
    return a;
}

// spec.py's check_schema_version: the major number must be ours.
void check_schema_version(const json& version) {
    std::string text;
    if (version.is_string()) text = version.get<std::string>();
    else if (version.is_number()) text = version.dump();
    size_t begin = text.find_first_not_of(" \t\n\r");
    std::string major = text.substr(begin == std::string::npos ? text.size() : begin);
    major = major.substr(0, major.find('.'));
    while (!major.empty() && std::isspace(static_cast<unsigned char>(major.back()))) major.pop_back();
    size_t digits = (!major.empty() && (major[0] == '+' || major[0] == '-')) ? 1 : 0;
    bool numeric = major.size() > digits && major.size() < 10 &&
                   std::all_of(major.begin() + digits, major.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!numeric) spec_error("schema_version " + version.dump() + " is not of the form MAJOR.MINOR");
    int ours = std::stoi(std::string(kSchemaVersion).substr(0, std::string(kSchemaVersion).find('.')));
    int theirs = std::stoi(major);
    std::string shown = version.is_string() ? version.get<std::string>() : version.dump();
    if (theirs > ours)
        spec_error(std::string("spec schema ") + shown + " is newer than this library understands (" + kSchemaVersion +
                   "); upgrade pmtiqa-deploy's native library or re-export the model with a matching version");
    if (theirs < ours)
        spec_error(std::string("spec schema ") + shown + " is older than " + kSchemaVersion + "; re-export the model");
}

bool is_regular_file(const std::string& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

bool is_directory(const std::string& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

}  // namespace

int ScoreSpec::level(float score) const {
    double raw = std::floor((static_cast<double>(score) - min) / level_width);
    double top = static_cast<double>(num_levels - 1);
    return static_cast<int>(std::min(std::max(raw, 0.0), top));
}

const Artifact* ModelSpec::find_artifact(const std::string& format, const std::string& precision) const {
    for (const Artifact& a : artifacts)
        if (a.format == format && a.precision == precision) return &a;
    return nullptr;
}

size_t ModelSpec::input_elements_per_image() const {
    return static_cast<size_t>(preprocess.crop_count) * 3 * static_cast<size_t>(preprocess.crop_size) *
           static_cast<size_t>(preprocess.crop_size);
}

namespace {

ModelSpec parse_document(const json& data) {
    if (data.is_object() && data.contains("schema_version")) check_schema_version(data["schema_version"]);
    Fields f(data, "spec", {"score", "preprocess", "input", "outputs", "backbone", "checkpoint_sha256",
                            "artifacts", "producer", "schema_version"});
    ModelSpec spec;
    spec.score = parse_score(*f.get("score"), "spec.score");
    spec.preprocess = parse_preprocess(*f.get("preprocess"), "spec.preprocess");
    spec.input = parse_input(*f.get("input"), "spec.input");
    auto list = [&](const char* key) -> const json* {
        const json* v = f.get(key);
        if (v && !v->is_array()) spec_error(f.at(key) + ": expected a list, got " + type_name(*v));
        return v;
    };
    if (const json* v = list("outputs"))
        for (size_t i = 0; i < v->size(); ++i)
            spec.outputs.push_back(parse_output((*v)[i], "spec.outputs[" + std::to_string(i) + "]"));
    f.string("backbone", spec.backbone);
    f.string("checkpoint_sha256", spec.checkpoint_sha256);
    if (const json* v = list("artifacts"))
        for (size_t i = 0; i < v->size(); ++i)
            spec.artifacts.push_back(parse_artifact((*v)[i], "spec.artifacts[" + std::to_string(i) + "]"));
    if (const json* v = f.get("producer")) {
        if (!v->is_object()) spec_error("spec.producer: expected an object of strings");
        for (auto it = v->begin(); it != v->end(); ++it) {
            if (!it->is_string()) spec_error("spec.producer: expected an object of strings");
            spec.producer[it.key()] = it->get<std::string>();
        }
    }
    f.string("schema_version", spec.schema_version);
    if (spec.outputs.empty()) {  // spec.py's default_outputs
        spec.outputs.push_back({"score", "float32", {"B"}, "mean of the crop scores, in the score spec's units"});
        spec.outputs.push_back({"level_probs", "float32", {"B", std::to_string(spec.score.num_levels)},
                                "mean over crops of the softmax over quality levels"});
    }
    return spec;
}

}  // namespace

ModelSpec parse_spec(const std::string& text, const std::string& where) {
    json data;
    try {
        data = json::parse(text);
    } catch (const json::exception& exc) {
        spec_error(where + " is not valid JSON (" + exc.what() + "); re-export the model");
    }
    try {
        return parse_document(data);
    } catch (const Error& exc) {
        if (exc.status() != PMTIQA_ERROR_SPEC) throw;
        spec_error(where + ": " + exc.what());  // as ModelSpec.load: the file, then the key
    }
}

ModelSpec load_spec(const std::string& path) {
    std::string file = is_directory(path) ? path + "/" + kSpecFilename : path;
    if (!is_regular_file(file))
        spec_error("no spec at " + file + ": export a model with pmtiqa-export, which writes " + kSpecFilename +
                   " beside the model files");
    std::ifstream in(file, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in.good() && !in.eof()) fail(PMTIQA_ERROR_IO, "cannot read " + file);
    return parse_spec(text.str(), file);
}

std::string sha256_file(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!file) fail(PMTIQA_ERROR_IO, "cannot open " + path + " (" + std::strerror(errno) + ")");
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> context(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1)
        fail(PMTIQA_ERROR_INTERNAL, "OpenSSL could not start a SHA-256 digest");
    std::vector<unsigned char> chunk(1 << 20);
    size_t got;
    while ((got = std::fread(chunk.data(), 1, chunk.size(), file.get())) > 0)
        if (EVP_DigestUpdate(context.get(), chunk.data(), got) != 1)
            fail(PMTIQA_ERROR_INTERNAL, "OpenSSL's SHA-256 failed on " + path);
    if (std::ferror(file.get())) fail(PMTIQA_ERROR_IO, "cannot read " + path);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(context.get(), digest, &size) != 1)
        fail(PMTIQA_ERROR_INTERNAL, "OpenSSL's SHA-256 failed on " + path);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < size; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 0xf]};
    return out;
}

std::string verify_artifact(const std::string& directory, const Artifact& artifact, bool check_hash) {
    std::string path = directory + "/" + artifact.file;
    if (!is_regular_file(path))
        spec_error(path + " is missing: the spec lists it; re-export into " + directory);
    if (check_hash) {
        std::string digest = sha256_file(path);
        if (digest != artifact.sha256)
            spec_error(path + " does not match its spec (sha256 " + digest.substr(0, 12) + "... vs " +
                       artifact.sha256.substr(0, 12) + "...): the file was replaced or truncated after "
                       "export; re-export the model");
    }
    return path;
}

}  // namespace pmtiqa
