// The arguments of one launch of the shared CUDA kernel `pmtiqa_crops`
// (pmtiqa_deploy/kernels/preprocess.cu, KERNEL.md), as plain data: no CUDA header, so the
// kernel's CPU emulation test can use it too. The host fills it with the geometry of
// preprocess.h (resized_size, crop_boxes) and the spec's normalisation constants.
#pragma once

namespace pmtiqa {

enum CropsOutKind { kOutFloat32 = 0, kOutFloat16 = 1, kOutUint8 = 2 };
// The kernel's resize modes (PMTIQA_RESIZE_* in preprocess.cu); resize_mode_for maps the
// spec's interpolation to one.
enum CropsResizeMode { kResizeBilinearExact = 0 };

struct CropsLaunch {
    const unsigned char* src;  // the decoded image (device memory for the GPU)
    int src_w, src_h, src_pitch, src_format;  // src_format: pmtiqa_pixel_format
    int dst_w, dst_h;          // resized_size
    const int* boxes;          // n_crops (y, x) pairs from crop_boxes
    int n_crops, crop;
    float mean[3];             // mean * 255 per RGB channel (float32, as the reference)
    float inv_std[3];          // 1 / (std * 255)
    void* out;                 // this image's slot in the input buffer
    int out_kind;              // CropsOutKind
    int resize_mode;           // CropsResizeMode
};

}  // namespace pmtiqa
