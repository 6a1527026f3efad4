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
// resized_size and `boxes` from crop_boxes. The kernel only samples, interpolates and
// normalises. Launch: block (16, 16, 1), grid (ceil(crop/16), ceil(crop/16), n_crops).
//
// Semantics, for output pixel (cy, cx) of crop k, with (y, x) = (box_y + cy, box_x + cx)
// in the resized image:
// - dst size == src size: the source pixel itself;
// - otherwise bilinear with half-pixel centres, OpenCV INTER_LINEAR's geometry:
//   f = (y + 0.5) * src / dst - 0.5 clamped below at 0, i0 = floor(f),
//   i1 = min(i0 + 1, src - 1), i0 = min(i0, src - 1), interpolated in float, then rounded
//   to the nearest integer and clamped to 0..255 (the reference resizes to uint8 first;
//   OpenCV's 11-bit fixed-point weights can make it differ by one level);
// - then normalised from that uint8 value: (v - m_c) * s_c in float32, the operations of
//   preprocess.normalize in its order; channel order RGB whatever the source order; GRAY
//   replicates its one channel, alpha is ignored.

#define PMTIQA_SRC_RGB 0
#define PMTIQA_SRC_BGR 1
#define PMTIQA_SRC_RGBA 2
#define PMTIQA_SRC_BGRA 3
#define PMTIQA_SRC_GRAY 4

#define PMTIQA_OUT_F32_NCHW 0
#define PMTIQA_OUT_F16_NCHW 1
#define PMTIQA_OUT_U8_NHWC 2

// Source sample position along one axis: the lower index, the upper index and the weight
// of the upper one, exactly as OpenCV's INTER_LINEAR computes them (in double, then float).
__device__ __forceinline__ void pmtiqa_axis(int dst, int dst_size, int src_size,
                                            int* i0, int* i1, float* w) {
    double scale = 1.0 / ((double)dst_size / (double)src_size);
    float f = (float)(((double)dst + 0.5) * scale - 0.5);
    if (f < 0.0f) f = 0.0f;
    int lo = (int)floorf(f);
    float frac = f - (float)lo;
    if (lo >= src_size - 1) {
        lo = src_size - 1;
        frac = 0.0f;
    }
    *i0 = lo;
    *i1 = lo + 1 < src_size ? lo + 1 : src_size - 1;
    *w = frac;
}

// The three RGB values of source pixel (x, y), whatever the source format.
__device__ __forceinline__ void pmtiqa_load_rgb(const unsigned char* src, int pitch, int format,
                                                int x, int y, float rgb[3]) {
    const unsigned char* row = src + (long long)y * pitch;
    if (format == PMTIQA_SRC_GRAY) {
        float g = (float)row[x];
        rgb[0] = g;
        rgb[1] = g;
        rgb[2] = g;
        return;
    }
    int channels = (format == PMTIQA_SRC_RGBA || format == PMTIQA_SRC_BGRA) ? 4 : 3;
    const unsigned char* p = row + (long long)x * channels;
    if (format == PMTIQA_SRC_BGR || format == PMTIQA_SRC_BGRA) {
        rgb[0] = (float)p[2];
        rgb[1] = (float)p[1];
        rgb[2] = (float)p[0];
    } else {
        rgb[0] = (float)p[0];
        rgb[1] = (float)p[1];
        rgb[2] = (float)p[2];
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

__device__ __forceinline__ float pmtiqa_to_uint8_level(float v) {
    v = rintf(v);
    return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

extern "C" __global__ void pmtiqa_crops(
    const unsigned char* src, int src_w, int src_h, int src_pitch, int src_format,
    int dst_w, int dst_h, const int* boxes, int n_crops, int crop,
    float m0, float m1, float m2, float s0, float s1, float s2,
    void* out, int out_kind) {
    int cx = blockIdx.x * blockDim.x + threadIdx.x;
    int cy = blockIdx.y * blockDim.y + threadIdx.y;
    int k = blockIdx.z;
    if (cx >= crop || cy >= crop || k >= n_crops) return;
    int y = boxes[2 * k] + cy;
    int x = boxes[2 * k + 1] + cx;

    float rgb[3];
    if (dst_w == src_w && dst_h == src_h) {
        pmtiqa_load_rgb(src, src_pitch, src_format, x, y, rgb);
    } else {
        int x0, x1, y0, y1;
        float wx, wy;
        pmtiqa_axis(x, dst_w, src_w, &x0, &x1, &wx);
        pmtiqa_axis(y, dst_h, src_h, &y0, &y1, &wy);
        float p00[3], p01[3], p10[3], p11[3];
        pmtiqa_load_rgb(src, src_pitch, src_format, x0, y0, p00);
        pmtiqa_load_rgb(src, src_pitch, src_format, x1, y0, p01);
        pmtiqa_load_rgb(src, src_pitch, src_format, x0, y1, p10);
        pmtiqa_load_rgb(src, src_pitch, src_format, x1, y1, p11);
        for (int c = 0; c < 3; ++c) {
            float top = p00[c] + (p01[c] - p00[c]) * wx;
            float bottom = p10[c] + (p11[c] - p10[c]) * wx;
            rgb[c] = pmtiqa_to_uint8_level(top + (bottom - top) * wy);
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
    float n0 = __fmul_rn(rgb[0] - m0, s0);
    float n1 = __fmul_rn(rgb[1] - m1, s1);
    float n2 = __fmul_rn(rgb[2] - m2, s2);
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
