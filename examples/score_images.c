/*
 * score_images: score image files with an exported PMT-IQA model through the C ABI.
 *
 *   score_images [--backend auto|cpu|tensorrt] [--threads N] [--device N] [--probs]
 *                MODEL_DIR IMAGE...
 *
 * Prints one tab-separated line per image: path, score (the model's units), level, and
 * with --probs the level probabilities; a file that fails prints its error instead and
 * the exit status is 1. Build: cmake -S native -B build && cmake --build build.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pmtiqa.h"

static int usage(const char* program) {
    fprintf(stderr, "usage: %s [--backend auto|cpu|tensorrt] [--threads N] [--device N] [--probs] "
                    "MODEL_DIR IMAGE...\n", program);
    return 2;
}

static int parse_backend(const char* name) {
    if (strcmp(name, "auto") == 0) return PMTIQA_BACKEND_AUTO;
    if (strcmp(name, "cpu") == 0) return PMTIQA_BACKEND_CPU;
    if (strcmp(name, "tensorrt") == 0) return PMTIQA_BACKEND_TENSORRT;
    return -1;
}

int main(int argc, char** argv) {
    pmtiqa_options options;
    pmtiqa_model* model = NULL;
    pmtiqa_model_info info;
    pmtiqa_status status;
    float* probs = NULL;
    int show_probs = 0, failures = 0, i = 1, k;

    if (pmtiqa_abi_version() != PMTIQA_ABI_VERSION) {
        fprintf(stderr, "libpmtiqa has ABI %u, this program was built for %d\n",
                (unsigned)pmtiqa_abi_version(), PMTIQA_ABI_VERSION);
        return 2;
    }
    pmtiqa_options_init(&options);
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; ++i) {
        if (strcmp(argv[i], "--probs") == 0) {
            show_probs = 1;
        } else if (i + 1 < argc && strcmp(argv[i], "--backend") == 0) {
            options.backend = parse_backend(argv[++i]);
            if (options.backend < 0) return usage(argv[0]);
        } else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) {
            options.threads = atoi(argv[++i]);
        } else if (i + 1 < argc && strcmp(argv[i], "--device") == 0) {
            options.device_id = atoi(argv[++i]);
        } else {
            return usage(argv[0]);
        }
    }
    if (argc - i < 2) return usage(argv[0]);

    status = pmtiqa_open(argv[i], &options, &model);
    if (status != PMTIQA_OK) {
        fprintf(stderr, "cannot open %s: %s: %s\n", argv[i], pmtiqa_status_name(status), pmtiqa_last_error());
        return 2;
    }
    memset(&info, 0, sizeof(info));
    info.struct_size = sizeof(info);
    if (pmtiqa_get_info(model, &info) != PMTIQA_OK) {
        fprintf(stderr, "pmtiqa_get_info: %s\n", pmtiqa_last_error());
        pmtiqa_close(model);
        return 2;
    }
    fprintf(stderr, "%s: %s backend, %s, scores %g..%g %s (%s is better)\n", argv[i],
            info.backend == PMTIQA_BACKEND_TENSORRT ? "TensorRT" : "CPU", info.model_file,
            info.score_min, info.score_max, info.units, info.higher_is_better ? "higher" : "lower");
    probs = malloc(sizeof(float) * (size_t)info.num_levels);
    if (!probs) {
        pmtiqa_close(model);
        return 2;
    }
    for (++i; i < argc; ++i) {
        pmtiqa_result result;
        status = pmtiqa_score_file(model, argv[i], &result, probs);
        if (status != PMTIQA_OK) {
            printf("%s\terror\t%s: %s\n", argv[i], pmtiqa_status_name(status), pmtiqa_last_error());
            failures = 1;
            continue;
        }
        printf("%s\t%.6f\t%d", argv[i], result.score, (int)result.level);
        for (k = 0; show_probs && k < info.num_levels; ++k) printf("%s%.6f", k ? "," : "\t", probs[k]);
        printf("\n");
    }
    free(probs);
    pmtiqa_close(model);
    return failures;
}
