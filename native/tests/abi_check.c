/*
 * Bad input through the C ABI: each call must return the expected error status with a
 * message, never crash or write into the caller's outputs. Built by CMake as
 * pmtiqa_abi_check and run by tests/native/test_cabi.py, also under AddressSanitizer.
 *
 *   pmtiqa_abi_check MODEL_DIR NEWER_SCHEMA_DIR SCRATCH_DIR [ENGINE_DIR_WITHOUT_GPU]
 *
 * MODEL_DIR: an exported model; NEWER_SCHEMA_DIR: a copy whose model.json has a newer
 * schema major; SCRATCH_DIR: a writable folder for the broken image files made here.
 * ENGINE_DIR_WITHOUT_GPU (given only on a machine without a CUDA device): a copy whose
 * model.json also lists a TensorRT engine: opening it with the TensorRT backend must be
 * PMTIQA_ERROR_BACKEND_UNAVAILABLE (whether or not the backend was built), and AUTO must
 * fall back to the CPU backend.
 * Prints one line per check and "N passed, M failed"; exits 1 if any failed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pmtiqa.h"

static int passed = 0, failed = 0;

static void expect(const char* what, pmtiqa_status got, pmtiqa_status want, const char* needle) {
    const char* message = pmtiqa_last_error();
    int ok = got == want && (want == PMTIQA_OK ? message[0] == '\0' : message[0] != '\0');
    if (ok && needle && !strstr(message, needle)) ok = 0;
    printf("%s %s: %s (%s)\n", ok ? "ok  " : "FAIL", what, pmtiqa_status_name(got), message);
    if (!ok) printf("     expected %s%s%s\n", pmtiqa_status_name(want), needle ? " mentioning " : "", needle ? needle : "");
    ok ? ++passed : ++failed;
}

static void check(const char* what, int condition) {
    printf("%s %s\n", condition ? "ok  " : "FAIL", what);
    condition ? ++passed : ++failed;
}

static void write_file(const char* dir, const char* name, const void* data, size_t size, char* path) {
    FILE* f;
    sprintf(path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (size) fwrite(data, 1, size, f);
    fclose(f);
}

int main(int argc, char** argv) {
    pmtiqa_model* model = (pmtiqa_model*)&passed; /* not NULL: open must reset it */
    pmtiqa_options options;
    pmtiqa_model_info info;
    pmtiqa_result result = {-1.0f, -1}, results[2] = {{-1.0f, -1}, {-1.0f, -1}};
    pmtiqa_image image, images[2];
    unsigned char* pixels;
    float probs[64], sum = 0;
    char path[4096], missing[4096];
    unsigned char options_v2[sizeof(pmtiqa_options) + 8];
    static const unsigned char truncated_jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 'J', 'F', 'I', 'F', 0x00};
    static const unsigned char garbage[] = "this is not an image at all";
    int i;

    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s MODEL_DIR NEWER_SCHEMA_DIR SCRATCH_DIR [ENGINE_DIR_WITHOUT_GPU]\n", argv[0]);
        return 2;
    }
    check("ABI version matches the header", pmtiqa_abi_version() == PMTIQA_ABI_VERSION);
    check("unknown status has a name", strcmp(pmtiqa_status_name((pmtiqa_status)999), "PMTIQA_STATUS_UNKNOWN") == 0);

    /* Opening. */
    expect("open(NULL dir)", pmtiqa_open(NULL, NULL, &model), PMTIQA_ERROR_INVALID_ARGUMENT, "model_dir");
    check("failed open leaves *model NULL", model == NULL);
    expect("open(empty dir)", pmtiqa_open("", NULL, &model), PMTIQA_ERROR_INVALID_ARGUMENT, "model_dir");
    expect("open(NULL out)", pmtiqa_open(argv[1], NULL, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "NULL");
    sprintf(missing, "%s/no-such-model", argv[3]);
    expect("open(missing dir)", pmtiqa_open(missing, NULL, &model), PMTIQA_ERROR_SPEC, "no spec at");
    expect("open(newer schema)", pmtiqa_open(argv[2], NULL, &model), PMTIQA_ERROR_SPEC, "newer");
    check("failed open leaves *model NULL", model == NULL);
    pmtiqa_options_init(&options);
    options.struct_size = 0;
    expect("open(struct_size 0)", pmtiqa_open(argv[1], &options, &model), PMTIQA_ERROR_INVALID_ARGUMENT, "struct_size");
    pmtiqa_options_init(&options);
    options.backend = 7;
    expect("open(unknown backend)", pmtiqa_open(argv[1], &options, &model), PMTIQA_ERROR_INVALID_ARGUMENT, "backend");
    pmtiqa_options_init(&options);
    options.threads = -1;
    expect("open(threads -1)", pmtiqa_open(argv[1], &options, &model), PMTIQA_ERROR_INVALID_ARGUMENT, "threads");
    pmtiqa_options_init(&options);
    options.backend = PMTIQA_BACKEND_CPU;
    options.precision = PMTIQA_PRECISION_FP16;
    expect("open(cpu fp16)", pmtiqa_open(argv[1], &options, &model), PMTIQA_ERROR_NOT_SUPPORTED, "fp32");
    /* A newer caller's struct: a larger size is fine while the unknown tail is zero. */
    memset(options_v2, 0, sizeof(options_v2));
    pmtiqa_options_init((pmtiqa_options*)options_v2);
    ((pmtiqa_options*)options_v2)->struct_size = sizeof(options_v2);
    ((pmtiqa_options*)options_v2)->backend = PMTIQA_BACKEND_CPU;
    options_v2[sizeof(pmtiqa_options) + 3] = 1;
    expect("open(unknown nonzero option field)", pmtiqa_open(argv[1], (pmtiqa_options*)options_v2, &model),
           PMTIQA_ERROR_INVALID_ARGUMENT, "upgrade");
    if (!pmtiqa_backend_available(PMTIQA_BACKEND_TENSORRT)) {
        pmtiqa_options_init(&options);
        options.backend = PMTIQA_BACKEND_TENSORRT;
        expect("open(tensorrt, not built)", pmtiqa_open(argv[1], &options, &model),
               PMTIQA_ERROR_BACKEND_UNAVAILABLE, "TensorRT");
    }

    if (argc > 4) {
        int built = pmtiqa_backend_available(PMTIQA_BACKEND_TENSORRT);
        pmtiqa_options_init(&options);
        options.backend = PMTIQA_BACKEND_TENSORRT;
        expect(built ? "open(tensorrt, built, no GPU)" : "open(tensorrt, not built, engine listed)",
               pmtiqa_open(argv[4], &options, &model), PMTIQA_ERROR_BACKEND_UNAVAILABLE,
               built ? "no usable CUDA device" : "built without the TensorRT backend");
        check("failed open leaves *model NULL", model == NULL);
        pmtiqa_options_init(&options);
        expect("open(auto, engine listed, no GPU)", pmtiqa_open(argv[4], &options, &model), PMTIQA_OK, NULL);
        if (model) {
            info.struct_size = sizeof(info);
            expect("get_info(auto)", pmtiqa_get_info(model, &info), PMTIQA_OK, NULL);
            check("auto fell back to the CPU backend", info.backend == PMTIQA_BACKEND_CPU);
            pmtiqa_close(model);
            model = NULL;
        }
    }

    options_v2[sizeof(pmtiqa_options) + 3] = 0;
    expect("open(model, larger zeroed options)", pmtiqa_open(argv[1], (pmtiqa_options*)options_v2, &model),
           PMTIQA_OK, NULL);
    if (!model) {
        printf("%d passed, %d failed\n", passed, failed + 1);
        return 1;
    }

    /* Info. */
    expect("get_info(NULL model)", pmtiqa_get_info(NULL, &info), PMTIQA_ERROR_INVALID_ARGUMENT, "model");
    expect("get_info(NULL info)", pmtiqa_get_info(model, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "info");
    memset(&info, 0, sizeof(info));
    expect("get_info(struct_size 0)", pmtiqa_get_info(model, &info), PMTIQA_ERROR_INVALID_ARGUMENT, "struct_size");
    info.struct_size = sizeof(info);
    expect("get_info", pmtiqa_get_info(model, &info), PMTIQA_OK, NULL);
    check("info: CPU backend, levels fit the buffer", info.backend == PMTIQA_BACKEND_CPU && info.num_levels > 0 &&
                                                          info.num_levels <= 64 && info.units && info.model_file);

    /* Images. */
    pixels = calloc(300 * 4 * 260, 1);
    for (i = 0; i < 300 * 4 * 260; ++i) pixels[i] = (unsigned char)((i * 31) % 251);
    image.data = pixels;
    image.width = 257;
    image.height = 260;
    image.stride = 300 * 4;
    image.format = PMTIQA_FORMAT_BGRA;
    expect("score(NULL model)", pmtiqa_score(NULL, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "model");
    expect("score(NULL image)", pmtiqa_score(model, NULL, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "image");
    expect("score(NULL result)", pmtiqa_score(model, &image, NULL, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "result");
    image.data = NULL;
    expect("score(NULL data)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "data");
    image.data = pixels;
    image.width = 0;
    expect("score(zero width)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "size");
    image.width = 257;
    image.height = -5;
    expect("score(negative height)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "size");
    image.height = 260;
    image.stride = 257 * 4 - 1;
    expect("score(stride < row)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "stride");
    image.stride = 300 * 4;
    image.format = 99;
    expect("score(unknown format)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "format");
    image.format = -1;
    expect("score(negative format)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "format");
    image.format = PMTIQA_FORMAT_GRAY;
    image.width = 20;
    image.height = 250;
    expect("score(too small)", pmtiqa_score(model, &image, &result, NULL), PMTIQA_ERROR_IMAGE_TOO_SMALL, "shorter side");
    check("failed calls left the result untouched", result.score == -1.0f && result.level == -1);
    image.width = 257;
    image.height = 260;
    image.format = PMTIQA_FORMAT_BGRA;
    expect("score_device on the CPU backend", pmtiqa_score_device(model, &image, NULL, &result, NULL),
           PMTIQA_ERROR_NOT_SUPPORTED, "GPU");

    /* Batches: one bad image fails the call and nothing is written. */
    images[0] = image;
    images[1] = image;
    images[1].stride = 3;
    expect("score_batch(second image bad)", pmtiqa_score_batch(model, images, 2, results, probs),
           PMTIQA_ERROR_INVALID_ARGUMENT, "image 1");
    check("failed batch wrote no result", results[0].level == -1 && results[1].level == -1);
    expect("score_batch(NULL images)", pmtiqa_score_batch(model, NULL, 2, results, NULL),
           PMTIQA_ERROR_INVALID_ARGUMENT, "images");
    expect("score_batch(count 0)", pmtiqa_score_batch(model, NULL, 0, NULL, NULL), PMTIQA_OK, NULL);

    /* Files. */
    expect("score_file(NULL path)", pmtiqa_score_file(model, NULL, &result, NULL), PMTIQA_ERROR_INVALID_ARGUMENT, "path");
    expect("score_file(missing)", pmtiqa_score_file(model, missing, &result, NULL), PMTIQA_ERROR_IO, "cannot read");
    write_file(argv[3], "empty.png", "", 0, path);
    expect("score_file(empty)", pmtiqa_score_file(model, path, &result, NULL), PMTIQA_ERROR_DECODE, "empty");
    write_file(argv[3], "truncated.jpg", truncated_jpeg, sizeof(truncated_jpeg), path);
    expect("score_file(truncated JPEG)", pmtiqa_score_file(model, path, &result, NULL), PMTIQA_ERROR_DECODE, "truncated");
    write_file(argv[3], "garbage.png", garbage, sizeof(garbage), path);
    expect("score_file(not an image)", pmtiqa_score_file(model, path, &result, NULL), PMTIQA_ERROR_DECODE, "readable");
    expect("score_file(a directory)", pmtiqa_score_file(model, argv[3], &result, NULL), PMTIQA_ERROR_IO, NULL);

    /* And the model still works, with a padded stride and alpha. */
    expect("score(valid BGRA image)", pmtiqa_score(model, &image, &result, probs), PMTIQA_OK, NULL);
    for (i = 0; i < info.num_levels; ++i) sum += probs[i];
    check("valid score: finite, level in range, probabilities sum to 1",
          isfinite(result.score) && result.level >= 0 && result.level < info.num_levels && fabsf(sum - 1.0f) < 1e-3f);
    images[1].stride = images[0].stride;
    expect("score_batch(two valid images)", pmtiqa_score_batch(model, images, 2, results, NULL), PMTIQA_OK, NULL);
    check("batch scores equal the single score", results[0].score == result.score && results[1].score == result.score);

    free(pixels);
    pmtiqa_close(model);
    pmtiqa_close(NULL);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
