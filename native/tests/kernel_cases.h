// Shared by the kernel's two checks (kernel_check.cpp on a GPU, kernel_emulation.cpp on
// the CPU): the cases, the launch parameters the host computes, the reference crops from
// the host preprocessing, and the comparison. Tolerance (KERNEL.md): none. The kernel
// computes OpenCV's INTER_LINEAR_EXACT integers, so every value must equal the reference's
// bit for bit: sizes up and down, odd ratios, non-square, every format and output kind.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "crops_launch.h"
#include "half.h"
#include "preprocess.h"

namespace pmtiqa_test {

using namespace pmtiqa;

struct Case {
    int width, height, format;
    const char* dtype;
    const char* resize = "none";  // the spec's policy: none, shorter_side, fixed
    int target_w = 384, target_h = 288;  // fixed: width x height; shorter_side: target_w
};

constexpr int kCrops = 5;

inline const std::vector<Case>& cases() {
    static const std::vector<Case> all = {
        {320, 240, PMTIQA_FORMAT_RGB, "float32"},  {240, 320, PMTIQA_FORMAT_BGR, "float32"},
        {300, 250, PMTIQA_FORMAT_RGBA, "float16"}, {260, 400, PMTIQA_FORMAT_BGRA, "uint8"},
        {100, 150, PMTIQA_FORMAT_GRAY, "float32"}, {224, 224, PMTIQA_FORMAT_BGR, "float32"},
        {500, 224, PMTIQA_FORMAT_GRAY, "uint8"},   {1000, 333, PMTIQA_FORMAT_RGB, "float16"},
        {231, 229, PMTIQA_FORMAT_BGRA, "float16"},
        {640, 480, PMTIQA_FORMAT_RGB, "float32", "shorter_side"}, {333, 500, PMTIQA_FORMAT_BGRA, "float16", "shorter_side"},
        {1024, 768, PMTIQA_FORMAT_BGR, "uint8", "fixed"},        {200, 300, PMTIQA_FORMAT_GRAY, "float32", "fixed"},
        // Exactly 2x down on both axes (OpenCV takes its INTER_AREA path there), one pixel
        // either side of identity, 7x up from the smallest allowed image, odd ratios.
        {768, 576, PMTIQA_FORMAT_BGR, "float32", "fixed"},       {385, 289, PMTIQA_FORMAT_RGB, "float16", "fixed"},
        {383, 287, PMTIQA_FORMAT_RGBA, "uint8", "fixed"},        {32, 40, PMTIQA_FORMAT_RGB, "float32"},
        {97, 1301, PMTIQA_FORMAT_GRAY, "uint8", "shorter_side", 229},
        {2000, 1499, PMTIQA_FORMAT_BGRA, "float16", "shorter_side", 341},
        {641, 479, PMTIQA_FORMAT_BGR, "float32", "fixed", 227, 1000},
    };
    return all;
}

// One case's input image (padded rows), its reference crops and the kernel's arguments
// (pointers left for the runner to fill).
struct Prepared {
    ModelSpec spec;
    std::vector<unsigned char> pixels;
    std::vector<int> boxes;
    std::vector<float> expected;
    size_t itemsize;
    CropsLaunch launch;
};

inline Prepared prepare(const Case& c, std::mt19937& rng) {
    Prepared p{};
    p.spec.preprocess.crop_count = kCrops;
    p.spec.preprocess.resize = c.resize;
    if (std::strcmp(c.resize, "shorter_side") == 0) p.spec.preprocess.shorter_side = c.target_w;
    if (std::strcmp(c.resize, "fixed") == 0) p.spec.preprocess.width = c.target_w, p.spec.preprocess.height = c.target_h;
    p.spec.input.dtype = c.dtype;
    p.spec.input.layout = std::strcmp(c.dtype, "uint8") == 0 ? "BNHWC" : "BNCHW";
    const int pitch = c.width * format_channels(c.format) + 13;
    p.pixels.resize(static_cast<size_t>(pitch) * c.height);
    for (auto& v : p.pixels) v = static_cast<unsigned char>(rng() & 0xff);
    pmtiqa_image image{p.pixels.data(), c.width, c.height, pitch, c.format};
    p.expected.resize(p.spec.input_elements_per_image());
    crops_as_float(to_rgb(image), p.spec, p.expected.data());
    Size2 size = resized_size(c.height, c.width, p.spec.preprocess);
    for (auto& b : crop_boxes(size.height, size.width, 224, kCrops)) p.boxes.push_back(b[0]), p.boxes.push_back(b[1]);
    p.itemsize = std::strcmp(c.dtype, "float32") == 0 ? 4 : std::strcmp(c.dtype, "float16") == 0 ? 2 : 1;
    CropsLaunch& a = p.launch;
    a.src_w = c.width, a.src_h = c.height, a.src_pitch = pitch, a.src_format = c.format;
    a.dst_w = size.width, a.dst_h = size.height;
    a.n_crops = kCrops, a.crop = 224;
    for (int k = 0; k < 3; ++k) {
        a.mean[k] = static_cast<float>(p.spec.preprocess.mean[k]) * 255.0f;
        a.inv_std[k] = 1.0f / (static_cast<float>(p.spec.preprocess.std[k]) * 255.0f);
    }
    a.out_kind = p.itemsize == 4 ? kOutFloat32 : p.itemsize == 2 ? kOutFloat16 : kOutUint8;
    a.resize_mode = kernel_resize_mode(p.spec.preprocess);
    return p;
}

// Compare the kernel's output with the reference, value by value; prints one line, returns
// success. Equal means equal: float32 bits, the float16 value, the uint8 level.
inline bool compare(const Case& c, const Prepared& p, const std::vector<unsigned char>& raw) {
    const size_t elements = p.expected.size();
    size_t differing = 0, first = elements;
    float first_got = 0;
    for (size_t i = 0; i < elements; ++i) {
        float got;
        if (p.itemsize == 4) std::memcpy(&got, &raw[i * 4], 4);
        else if (p.itemsize == 2) got = half_to_float(static_cast<uint16_t>(raw[i * 2] | (raw[i * 2 + 1] << 8)));
        else got = raw[i];
        if (std::memcmp(&got, &p.expected[i], sizeof(float)) != 0) {
            ++differing;
            if (first == elements) first = i, first_got = got;
        }
    }
    bool ok = differing == 0;
    std::printf("%s %dx%d format %d -> %dx%d (%s) %s: %zu of %zu values differ", ok ? "ok  " : "FAIL", c.width,
                c.height, c.format, p.launch.dst_w, p.launch.dst_h, c.resize, c.dtype, differing, elements);
    if (!ok) std::printf(" (first at %zu: %.9g, reference %.9g)", first, first_got, p.expected[first]);
    std::printf("\n");
    return ok;
}

}  // namespace pmtiqa_test
