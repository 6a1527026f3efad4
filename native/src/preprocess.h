// The reference preprocessing (pmtiqa_deploy/preprocess.py) for host buffers: the resize
// policy, the fixed crop grid, bilinear resizing with cv::resize INTER_LINEAR_EXACT (the
// bit-exact fixed-point resize, the same integers on every CPU), and normalisation
// (x - mean*255) / (std*255) in float32, RGB order. The GPU path shares the geometry
// (resized_size, crop_boxes) and runs pmtiqa_deploy/kernels/preprocess.cu, whose resize
// computes the same integers (pmtiqa_deploy/kernels/KERNEL.md).
#pragma once

#include <array>
#include <vector>

#include <opencv2/core.hpp>

#include "pmtiqa.h"
#include "spec.h"

namespace pmtiqa {

struct Size2 {
    int height, width;
};

// Samples per pixel of a pixel format; PMTIQA_ERROR_INVALID_ARGUMENT for an unknown one.
int format_channels(int32_t format);
// Check an image descriptor (null data, sizes, stride, format); `what` prefixes messages.
void check_image(const pmtiqa_image* image, const std::string& what);

// preprocess.resized_size: the (height, width) the resize policy gives; the image must
// have at least min_side pixels on its shorter side (PMTIQA_ERROR_IMAGE_TOO_SMALL).
Size2 resized_size(int height, int width, const PreprocessSpec& spec);
// preprocess.crop_boxes: top-left (y, x) corners of the fixed grid, row-major.
std::vector<std::array<int, 2>> crop_boxes(int height, int width, int size, int count);

// The spec's resize of an RGB image to `size`: the interpolation it names, or
// PMTIQA_ERROR_NOT_SUPPORTED for one this library does not implement.
cv::Mat resize_rgb(const cv::Mat& rgb, Size2 size, const PreprocessSpec& spec);
// The CUDA kernel's resize mode for the spec's interpolation (CropsResizeMode), or
// PMTIQA_ERROR_NOT_SUPPORTED when the kernel does not implement it (never a substitute).
int kernel_resize_mode(const PreprocessSpec& spec);

// A host image as contiguous 8-bit RGB (gray replicated, alpha dropped).
cv::Mat to_rgb(const pmtiqa_image& image);

// One RGB image's crops as the values the graph input holds, in its layout, as float32:
// BNCHW normalised (rounded to half precision for a float16 input), or BNHWC 0..255 for a
// uint8 input. `out` has spec.input_elements_per_image() floats.
void crops_as_float(const cv::Mat& rgb, const ModelSpec& spec, float* out);

}  // namespace pmtiqa
