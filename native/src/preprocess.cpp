// Host preprocessing, a line-by-line port of pmtiqa_deploy/preprocess.py (see the header).
#include "preprocess.h"

#include <cmath>
#include <limits>
#include <string>

#include <opencv2/imgproc.hpp>

#include "crops_launch.h"
#include "error.h"
#include "half.h"

namespace pmtiqa {
namespace {

// Python's round() on a float: to nearest, ties to even (the default FP rounding mode).
int round_half_even(double value) { return static_cast<int>(std::nearbyint(value)); }

// grid_shape: the most square factorisation of `count`, more columns on landscape images.
std::array<int, 2> grid_shape(int count, int height, int width) {
    int rows = 1;
    for (int r = 1; static_cast<long long>(r) * r <= count; ++r)
        if (count % r == 0) rows = r;
    int cols = count / rows;
    return width >= height ? std::array<int, 2>{rows, cols} : std::array<int, 2>{cols, rows};
}

std::vector<int> starts(int extent, int size, int k) {
    if (k == 1) return {(extent - size) / 2};
    std::vector<int> out;
    for (int i = 0; i < k; ++i)
        out.push_back(static_cast<int>(std::floor(static_cast<double>(i) * (extent - size) / (k - 1) + 0.5)));
    return out;
}

}  // namespace

int format_channels(int32_t format) {
    switch (format) {
        case PMTIQA_FORMAT_RGB:
        case PMTIQA_FORMAT_BGR: return 3;
        case PMTIQA_FORMAT_RGBA:
        case PMTIQA_FORMAT_BGRA: return 4;
        case PMTIQA_FORMAT_GRAY: return 1;
        default:
            fail(PMTIQA_ERROR_INVALID_ARGUMENT,
                 "unknown pixel format " + std::to_string(format) +
                     "; use PMTIQA_FORMAT_RGB, _BGR, _RGBA, _BGRA or _GRAY");
    }
}

void check_image(const pmtiqa_image* image, const std::string& what) {
    if (!image) fail(PMTIQA_ERROR_INVALID_ARGUMENT, what + " is NULL");
    if (!image->data) fail(PMTIQA_ERROR_INVALID_ARGUMENT, what + ": data is NULL");
    if (image->width <= 0 || image->height <= 0)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, what + ": size " + std::to_string(image->width) + "x" +
                                                std::to_string(image->height) + " is empty or negative");
    int channels;
    try {
        channels = format_channels(image->format);
    } catch (const Error& exc) {
        fail(exc.status(), what + ": " + exc.what());
    }
    int64_t row = static_cast<int64_t>(image->width) * channels;
    if (image->stride < row)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, what + ": stride " + std::to_string(image->stride) +
                                                " bytes is smaller than a row (" + std::to_string(image->width) +
                                                " pixels x " + std::to_string(channels) + " bytes)");
    if (image->stride > std::numeric_limits<int32_t>::max() / 2 ||
        static_cast<double>(image->stride) * image->height > 1e12)
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, what + ": stride x height is implausibly large");
}

Size2 resized_size(int height, int width, const PreprocessSpec& spec) {
    if (std::min(height, width) < spec.min_side)
        fail(PMTIQA_ERROR_IMAGE_TOO_SMALL, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                               "; quality needs at least " + std::to_string(spec.min_side) +
                                               " pixels on the shorter side");
    double h = height, w = width;
    if (spec.resize == "fixed") {
        h = static_cast<double>(*spec.height);
        w = static_cast<double>(*spec.width);
    } else if (spec.resize == "shorter_side") {
        double scale = static_cast<double>(*spec.shorter_side) / std::min(h, w);
        h = std::max(1, round_half_even(h * scale));
        w = std::max(1, round_half_even(w * scale));
    }
    if (std::min(h, w) < spec.crop_size) {
        double crop = static_cast<double>(spec.crop_size);
        double scale = crop / std::min(h, w);
        h = std::max(crop, std::nearbyint(h * scale));
        w = std::max(crop, std::nearbyint(w * scale));
    }
    if (std::max(h, w) > static_cast<double>(1 << 30))
        fail(PMTIQA_ERROR_INVALID_ARGUMENT, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                                ": resized for the crops its longer side would exceed 2^30 "
                                                "pixels; its aspect ratio is too extreme");
    return {static_cast<int>(h), static_cast<int>(w)};
}

std::vector<std::array<int, 2>> crop_boxes(int height, int width, int size, int count) {
    auto grid = grid_shape(count, height, width);
    std::vector<std::array<int, 2>> boxes;
    for (int y : starts(height, size, grid[0]))
        for (int x : starts(width, size, grid[1])) boxes.push_back({y, x});
    return boxes;
}

cv::Mat resize_rgb(const cv::Mat& rgb, Size2 size, const PreprocessSpec& spec) {
    if (spec.interpolation != "bilinear")
        fail(PMTIQA_ERROR_NOT_SUPPORTED, "interpolation '" + spec.interpolation +
                                             "' is not implemented by this library (it has 'bilinear'); "
                                             "update libpmtiqa or re-export the model with bilinear resizing");
    if (size.height == rgb.rows && size.width == rgb.cols) return rgb;
    cv::Mat resized;
    cv::resize(rgb, resized, cv::Size(size.width, size.height), 0, 0, cv::INTER_LINEAR_EXACT);
    return resized;
}

int kernel_resize_mode(const PreprocessSpec& spec) {
    if (spec.interpolation == "bilinear") return kResizeBilinearExact;
    fail(PMTIQA_ERROR_NOT_SUPPORTED, "the CUDA preprocessing kernel does not implement interpolation '" +
                                         spec.interpolation + "' (it has 'bilinear'); use the CPU backend");
}

cv::Mat to_rgb(const pmtiqa_image& image) {
    int channels = format_channels(image.format);
    cv::Mat view(image.height, image.width, CV_8UC(channels), const_cast<uint8_t*>(image.data),
                 static_cast<size_t>(image.stride));
    cv::Mat rgb;
    switch (image.format) {
        case PMTIQA_FORMAT_RGB: rgb = view.clone(); break;
        case PMTIQA_FORMAT_BGR: cv::cvtColor(view, rgb, cv::COLOR_BGR2RGB); break;
        case PMTIQA_FORMAT_RGBA: cv::cvtColor(view, rgb, cv::COLOR_RGBA2RGB); break;
        case PMTIQA_FORMAT_BGRA: cv::cvtColor(view, rgb, cv::COLOR_BGRA2RGB); break;
        default: cv::cvtColor(view, rgb, cv::COLOR_GRAY2RGB); break;
    }
    return rgb;
}

void crops_as_float(const cv::Mat& rgb, const ModelSpec& spec, float* out) {
    const PreprocessSpec& pre = spec.preprocess;
    Size2 size = resized_size(rgb.rows, rgb.cols, pre);
    const cv::Mat resized = resize_rgb(rgb, size, pre);
    const int crop = static_cast<int>(pre.crop_size);
    const auto boxes = crop_boxes(size.height, size.width, crop, static_cast<int>(pre.crop_count));
    const size_t plane = static_cast<size_t>(crop) * crop;
    if (spec.input.dtype == "uint8") {  // [N, H, W, 3], normalised inside the graph
        for (size_t k = 0; k < boxes.size(); ++k)
            for (int y = 0; y < crop; ++y) {
                const uint8_t* row = resized.ptr<uint8_t>(boxes[k][0] + y) + boxes[k][1] * 3;
                float* dst = out + (k * plane + static_cast<size_t>(y) * crop) * 3;
                for (int i = 0; i < crop * 3; ++i) dst[i] = row[i];
            }
        return;
    }
    // preprocess.normalize: float32 mean*255 and 1/(std*255), then (x - m) * s.
    float mean[3], scale[3];
    for (int c = 0; c < 3; ++c) {
        mean[c] = static_cast<float>(pre.mean[c]) * 255.0f;
        scale[c] = 1.0f / (static_cast<float>(pre.std[c]) * 255.0f);
    }
    const bool half = spec.input.dtype == "float16";
    for (size_t k = 0; k < boxes.size(); ++k)
        for (int y = 0; y < crop; ++y) {
            const uint8_t* row = resized.ptr<uint8_t>(boxes[k][0] + y) + boxes[k][1] * 3;
            for (int c = 0; c < 3; ++c) {
                float* dst = out + (k * 3 + c) * plane + static_cast<size_t>(y) * crop;
                for (int x = 0; x < crop; ++x) {
                    float value = (static_cast<float>(row[x * 3 + c]) - mean[c]) * scale[c];
                    dst[x] = half ? round_to_half(value) : value;
                }
            }
        }
}

}  // namespace pmtiqa
