// The reference preprocessing (pmtiqa_deploy/preprocess.py) on the GPU: one decoded image
// in, its crops out, written straight into that image's slot of the engine's input buffer.
//
// One source, two compilers: NVRTC compiles it at run time from Python
// (pmtiqa_deploy/cuda_preprocess.py) and nvcc compiles it into the native library
// (native/src/cuda_preprocess.cu includes this file). So: no headers at all (NVRTC has no
// host headers; the float -> half conversion is one PTX instruction), plain C types, and
// extern "C" so both sides find the unmangled symbol `pmtiqa_crops`.
//
// Geometry is decided on the host with the reference functions: `dst_w`/`dst_h` come from
// resized_size and `boxes` from crop_boxes. The kernel only samples, resizes and
// normalises. Launch: block (16, 16, 1), grid (ceil(crop/16), ceil(crop/16), n_crops).
// KERNEL.md (beside this file) has the launch geometry, the rounding and the tolerance.
//
// Semantics, for output pixel (cy, cx) of crop k, with (y, x) = (box_y + cy, box_x + cx)
// in the resized image:
// - dst size == src size: the source pixel itself;
// - otherwise the spec's resize, chosen by `resize_mode` (one device function per mode,
//   pmtiqa_resample_*). PMTIQA_RESIZE_BILINEAR_EXACT is OpenCV's bit-exact bilinear
//   resize (cv::resize with INTER_LINEAR_EXACT, which the reference calls): per axis, the
//   source position f = (d + 0.5) * (1 / (dst / src)) - 0.5 in IEEE double, lower index
//   floor(f) with an 8-bit weight round_half_even((f - floor(f)) * 256) on the upper one
//   (positions left of the first pixel or right of the last take that edge pixel whole),
//   a horizontal pass h = w0 * a + w1 * b in integers (8 fractional bits), a vertical pass
//   v = w0 * h0 + w1 * h1 (16 fractional bits) and the uint8 level (v + 2^15) >> 16. The
//   same integers as OpenCV on every CPU and GPU, so the kernel equals the reference;
// - then normalised from that uint8 value: (v - m_c) * s_c in float32, the operations of
//   preprocess.normalize in its order; channel order RGB whatever the source order; GRAY
//   replicates its one channel, alpha is ignored.
//
// Double-precision steps use the _rn intrinsics so the compiler cannot fuse a multiply and
// an add (FMA would round once where OpenCV rounds twice).

#define PMTIQA_SRC_RGB 0
#define PMTIQA_SRC_BGR 1
#define PMTIQA_SRC_RGBA 2
#define PMTIQA_SRC_BGRA 3
#define PMTIQA_SRC_GRAY 4

#define PMTIQA_OUT_F32_NCHW 0
#define PMTIQA_OUT_F16_NCHW 1
#define PMTIQA_OUT_U8_NHWC 2

#define PMTIQA_RESIZE_BILINEAR_EXACT 0

// One axis of PMTIQA_RESIZE_BILINEAR_EXACT for destination index `d`: the two source
// indices and their weights in 1/256 (w0 + w1 == 256), as OpenCV's INTER_LINEAR_EXACT
// computes them (interpolationLinear::getCoeffs: softdouble, i.e. IEEE double).
__device__ __forceinline__ void pmtiqa_linear_exact_axis(int d, int dst_size, int src_size,
                                                         int* i0, int* i1, int* w0, int* w1) {
    double scale = __ddiv_rn(1.0, __ddiv_rn((double)dst_size, (double)src_size));
    double f = __dsub_rn(__dmul_rn(scale, __dadd_rn((double)d, 0.5)), 0.5);
    double lower = floor(f);
    int lo = (int)lower;
    if (lo < 0 || src_size == 1) {  // left of the first pixel's centre: the first pixel
        *i0 = *i1 = 0;
        *w0 = 256, *w1 = 0;
    } else if (lo >= src_size - 1) {  // right of the last pixel's centre: the last pixel
        *i0 = *i1 = src_size - 1;
        *w0 = 256, *w1 = 0;
    } else {
        *i0 = lo;
        *i1 = lo + 1;
        *w1 = (int)rint(__dmul_rn(__dsub_rn(f, lower), 256.0));  // ties to even, as cvRound
        *w0 = 256 - *w1;
    }
}

// The three RGB values of source pixel (x, y), whatever the source format.
__device__ __forceinline__ void pmtiqa_load_rgb(const unsigned char* src, int pitch, int format,
                                                int x, int y, int rgb[3]) {
    const unsigned char* row = src + (long long)y * pitch;
    if (format == PMTIQA_SRC_GRAY) {
        rgb[0] = rgb[1] = rgb[2] = row[x];
        return;
    }
    int channels = (format == PMTIQA_SRC_RGBA || format == PMTIQA_SRC_BGRA) ? 4 : 3;
    const unsigned char* p = row + (long long)x * channels;
    bool bgr = format == PMTIQA_SRC_BGR || format == PMTIQA_SRC_BGRA;
    rgb[0] = p[bgr ? 2 : 0];
    rgb[1] = p[1];
    rgb[2] = p[bgr ? 0 : 2];
}

// PMTIQA_RESIZE_BILINEAR_EXACT at resized pixel (x, y): three uint8 levels, in integers.
// h <= 255 * 256 and v <= 255 * 256 * 256, so int holds every intermediate.
__device__ __forceinline__ void pmtiqa_resample_bilinear_exact(
    const unsigned char* src, int src_w, int src_h, int pitch, int format, int dst_w, int dst_h,
    int x, int y, int rgb[3]) {
    int x0, x1, wx0, wx1, y0, y1, wy0, wy1;
    pmtiqa_linear_exact_axis(x, dst_w, src_w, &x0, &x1, &wx0, &wx1);
    pmtiqa_linear_exact_axis(y, dst_h, src_h, &y0, &y1, &wy0, &wy1);
    int p00[3], p01[3], p10[3], p11[3];
    pmtiqa_load_rgb(src, pitch, format, x0, y0, p00);
    pmtiqa_load_rgb(src, pitch, format, x1, y0, p01);
    pmtiqa_load_rgb(src, pitch, format, x0, y1, p10);
    pmtiqa_load_rgb(src, pitch, format, x1, y1, p11);
    for (int c = 0; c < 3; ++c) {
        int top = wx0 * p00[c] + wx1 * p01[c];
        int bottom = wx0 * p10[c] + wx1 * p11[c];
        rgb[c] = (wy0 * top + wy1 * bottom + (1 << 15)) >> 16;
    }
}

// float -> IEEE half, round to nearest even (what NumPy's astype(float16) does): one PTX
// instruction on the device; the same rounding in plain C where the file is compiled as
// host code (nvcc's host pass, and the CPU emulation test native/tests/kernel_emulation.cpp).
__device__ __forceinline__ unsigned short pmtiqa_half_bits(float value) {
#if defined(__CUDA_ARCH__)
    unsigned short bits;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    return bits;
#else
    union { float f; unsigned int u; } in;
    in.f = value;
    unsigned int sign = (in.u >> 16) & 0x8000u, mag = in.u & 0x7fffffffu;
    if (mag >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (mag > 0x7f800000u ? 0x200u : 0u));
    if (mag >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);
    if (mag < 0x38800000u) {
        if (mag < 0x33000000u) return (unsigned short)sign;
        unsigned int mant = (mag & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(mag >> 23);
        unsigned int half = mant >> shift, rest = mant & ((1u << shift) - 1u), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1u))) ++half;
        return (unsigned short)(sign | half);
    }
    unsigned int half = (mag - 0x38000000u) >> 13, rest = mag & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
    return (unsigned short)(sign | half);
#endif
}

extern "C" __global__ void pmtiqa_crops(
    const unsigned char* src, int src_w, int src_h, int src_pitch, int src_format,
    int dst_w, int dst_h, const int* boxes, int n_crops, int crop,
    float m0, float m1, float m2, float s0, float s1, float s2,
    void* out, int out_kind, int resize_mode) {
    int cx = blockIdx.x * blockDim.x + threadIdx.x;
    int cy = blockIdx.y * blockDim.y + threadIdx.y;
    int k = blockIdx.z;
    if (cx >= crop || cy >= crop || k >= n_crops) return;
    int y = boxes[2 * k] + cy;
    int x = boxes[2 * k + 1] + cx;

    int rgb[3];
    if (dst_w == src_w && dst_h == src_h) {
        pmtiqa_load_rgb(src, src_pitch, src_format, x, y, rgb);
    } else {
        switch (resize_mode) {
            case PMTIQA_RESIZE_BILINEAR_EXACT:
            default:  // the host launches only the modes above (KERNEL.md)
                pmtiqa_resample_bilinear_exact(src, src_w, src_h, src_pitch, src_format, dst_w, dst_h,
                                               x, y, rgb);
        }
    }

    long long plane = (long long)crop * crop;
    long long pixel = (long long)cy * crop + cx;
    if (out_kind == PMTIQA_OUT_U8_NHWC) {
        unsigned char* o = (unsigned char*)out + ((long long)k * plane + pixel) * 3;
        o[0] = (unsigned char)rgb[0];
        o[1] = (unsigned char)rgb[1];
        o[2] = (unsigned char)rgb[2];
        return;
    }
    // Separate multiply and subtract (no fused multiply-add): the reference's float32 ops.
    float n0 = __fmul_rn((float)rgb[0] - m0, s0);
    float n1 = __fmul_rn((float)rgb[1] - m1, s1);
    float n2 = __fmul_rn((float)rgb[2] - m2, s2);
    long long base = (long long)k * 3 * plane + pixel;
    if (out_kind == PMTIQA_OUT_F16_NCHW) {
        unsigned short* o = (unsigned short*)out + base;
        o[0] = pmtiqa_half_bits(n0);
        o[plane] = pmtiqa_half_bits(n1);
        o[2 * plane] = pmtiqa_half_bits(n2);
    } else {
        float* o = (float*)out + base;
        o[0] = n0;
        o[plane] = n1;
        o[2 * plane] = n2;
    }
}
