/*
 * pmtiqa.h - the C ABI of the PMT-IQA image quality runtime.
 *
 * Open an exported model directory (model.json beside model.onnx / model.engine), score
 * decoded images held in host memory (or, on the TensorRT backend, in GPU memory), close.
 * Scores are in the spec's units (MOS); the level is the spec's quality level of the score.
 *
 * Stability rules:
 * - Plain C: no C++ types cross this boundary and no exception escapes it; every call
 *   that can fail returns a pmtiqa_status, and pmtiqa_last_error() says why in words.
 * - Structs that may grow (pmtiqa_options, pmtiqa_model_info) start with `struct_size`,
 *   set by the caller to sizeof() as it compiled them: an older library ignores nothing
 *   silently (a newer caller's extra fields must be zero), a newer library reads only
 *   the fields the caller knows. pmtiqa_image and pmtiqa_result are frozen for ABI 1.
 * - PMTIQA_ABI_VERSION changes only when an existing signature or frozen struct changes.
 *
 * Threads: a model handle serialises its own calls (one call at a time runs; others
 * wait), so it may be shared between threads. pmtiqa_last_error() is per thread.
 */
#ifndef PMTIQA_H
#define PMTIQA_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(PMTIQA_BUILDING)
#    define PMTIQA_API __declspec(dllexport)
#  else
#    define PMTIQA_API __declspec(dllimport)
#  endif
#else
#  define PMTIQA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define PMTIQA_ABI_VERSION 1

typedef enum pmtiqa_status {
    PMTIQA_OK = 0,
    PMTIQA_ERROR_INVALID_ARGUMENT = 1,   /* null pointer, bad size/stride/format/option */
    PMTIQA_ERROR_SPEC = 2,               /* model.json missing, invalid, newer schema; a model
                                            file missing or not matching its sha256 */
    PMTIQA_ERROR_IO = 3,                 /* a file could not be read */
    PMTIQA_ERROR_DECODE = 4,             /* an image file is not a readable image */
    PMTIQA_ERROR_IMAGE_TOO_SMALL = 5,    /* shorter side below the spec's min_side */
    PMTIQA_ERROR_NOT_SUPPORTED = 6,      /* the backend cannot do this (GPU input on CPU) */
    PMTIQA_ERROR_BACKEND_UNAVAILABLE = 7, /* backend not built in, or no usable GPU */
    PMTIQA_ERROR_BACKEND = 8,            /* inference failed (OpenCV, TensorRT, CUDA) */
    PMTIQA_ERROR_OUT_OF_MEMORY = 9,
    PMTIQA_ERROR_INTERNAL = 10           /* a bug: please report it with the message */
} pmtiqa_status;

typedef enum pmtiqa_pixel_format {       /* interleaved 8-bit samples; alpha is ignored */
    PMTIQA_FORMAT_RGB = 0,
    PMTIQA_FORMAT_BGR = 1,
    PMTIQA_FORMAT_RGBA = 2,
    PMTIQA_FORMAT_BGRA = 3,
    PMTIQA_FORMAT_GRAY = 4
} pmtiqa_pixel_format;

typedef enum pmtiqa_backend {
    PMTIQA_BACKEND_AUTO = 0,     /* TensorRT when built in, a GPU is present and the spec
                                    lists an engine; the CPU backend otherwise */
    PMTIQA_BACKEND_CPU = 1,      /* model.onnx through OpenCV's DNN module */
    PMTIQA_BACKEND_TENSORRT = 2  /* model.engine, preprocessing on the GPU */
} pmtiqa_backend;

typedef enum pmtiqa_precision {
    PMTIQA_PRECISION_AUTO = 0,   /* TensorRT: the fp16 engine if listed, else fp32; CPU: fp32 */
    PMTIQA_PRECISION_FP32 = 1,
    PMTIQA_PRECISION_FP16 = 2    /* TensorRT only */
} pmtiqa_precision;

typedef struct pmtiqa_options {
    uint32_t struct_size;   /* sizeof(pmtiqa_options); pmtiqa_options_init sets it */
    int32_t backend;        /* pmtiqa_backend */
    int32_t precision;      /* pmtiqa_precision */
    int32_t device_id;      /* CUDA device for TensorRT */
    int32_t threads;        /* CPU backend: OpenCV's thread count, process-wide
                               (cv::setNumThreads); 0 leaves OpenCV's default */
    int32_t verify_hash;    /* nonzero: check the model file's sha256 against model.json */
} pmtiqa_options;

typedef struct pmtiqa_image {
    const uint8_t* data;    /* first byte of the top row (host memory, or device memory
                               for pmtiqa_score_device) */
    int32_t width;
    int32_t height;
    int64_t stride;         /* bytes from one row to the next, >= width * channels */
    int32_t format;         /* pmtiqa_pixel_format */
} pmtiqa_image;

typedef struct pmtiqa_result {
    float score;            /* in the spec's units (info.units), see info.higher_is_better */
    int32_t level;          /* quality level of the score, 0 .. num_levels - 1 */
} pmtiqa_result;

typedef struct pmtiqa_model_info {
    uint32_t struct_size;   /* set by the caller: sizeof(pmtiqa_model_info) */
    int32_t backend;        /* the backend in use (never AUTO) */
    int32_t precision;      /* the precision of the model file in use */
    int32_t num_levels;     /* length of each image's level probabilities */
    int32_t crop_count;
    int32_t crop_size;
    int32_t max_batch;      /* images per inference run (larger batches are split) */
    float score_min;
    float score_max;
    int32_t higher_is_better;
    const char* units;      /* owned by the model; valid until pmtiqa_close */
    const char* model_file; /* the file the backend runs; owned by the model */
} pmtiqa_model_info;

typedef struct pmtiqa_model pmtiqa_model;

/* PMTIQA_ABI_VERSION of the library (compare with the header's at run time). */
PMTIQA_API uint32_t pmtiqa_abi_version(void);
/* The library's version, such as "0.1.0". */
PMTIQA_API const char* pmtiqa_version(void);
/* Nonzero when `backend` was built into this library. */
PMTIQA_API int pmtiqa_backend_available(int32_t backend);
/* A fixed English name for a status, such as "PMTIQA_ERROR_SPEC". */
PMTIQA_API const char* pmtiqa_status_name(pmtiqa_status status);
/* The message of this thread's last failed call ("" after a successful one); valid until
   this thread's next pmtiqa call. */
PMTIQA_API const char* pmtiqa_last_error(void);

/* Defaults: backend AUTO, precision AUTO, device 0, threads 0, verify_hash 1. */
PMTIQA_API void pmtiqa_options_init(pmtiqa_options* options);

/* Open the exported model in `model_dir`; `options` may be NULL for the defaults. */
PMTIQA_API pmtiqa_status pmtiqa_open(const char* model_dir, const pmtiqa_options* options,
                                     pmtiqa_model** model);
/* Free everything the model holds. NULL is allowed. */
PMTIQA_API void pmtiqa_close(pmtiqa_model* model);
/* Describe the open model; set info->struct_size first. */
PMTIQA_API pmtiqa_status pmtiqa_get_info(const pmtiqa_model* model, pmtiqa_model_info* info);

/* Score one decoded host image. `level_probs` is NULL or room for num_levels floats. */
PMTIQA_API pmtiqa_status pmtiqa_score(pmtiqa_model* model, const pmtiqa_image* image,
                                      pmtiqa_result* result, float* level_probs);
/* Score `count` images: results[count]; level_probs NULL or count * num_levels floats
   (image i's at i * num_levels). On error nothing is written for any image. */
PMTIQA_API pmtiqa_status pmtiqa_score_batch(pmtiqa_model* model, const pmtiqa_image* images,
                                            size_t count, pmtiqa_result* results,
                                            float* level_probs);
/* Decode an image file (as pmtiqa_deploy.preprocess.decode_image does: EXIF orientation,
   gray replicated, alpha dropped, 16-bit scaled) and score it. */
PMTIQA_API pmtiqa_status pmtiqa_score_file(pmtiqa_model* model, const char* path,
                                           pmtiqa_result* result, float* level_probs);
/* Score an image already in GPU memory (image->data is a device pointer on the model's
   device) on the caller's CUDA stream (a cudaStream_t, NULL for the default stream).
   Work is enqueued on that stream, which is synchronised before returning. The CPU
   backend returns PMTIQA_ERROR_NOT_SUPPORTED. */
PMTIQA_API pmtiqa_status pmtiqa_score_device(pmtiqa_model* model, const pmtiqa_image* image,
                                             void* cuda_stream, pmtiqa_result* result,
                                             float* level_probs);

#ifdef __cplusplus
}
#endif

#endif /* PMTIQA_H */
