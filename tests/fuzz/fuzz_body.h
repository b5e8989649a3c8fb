/* tests/fuzz/fuzz_body.h: one fuzz input through the whole front half of lipc.
 *
 * Shared by the libFuzzer harness (fuzz_frontend.c) and the corpus regression
 * test (tests/test_fuzz_corpus.c), so the test replays exactly what the fuzzer
 * ran. */
#ifndef LIPC_FUZZ_BODY_H
#define LIPC_FUZZ_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Loads data as a model (small limits), runs the pipeline with the verifier,
 * prints the IR in every format and formats the diagnostics, then frees it all.
 * Returns false when the verifier reported an internal error: a compiler bug
 * that user input must never be able to cause. When `diag_out` is not NULL it
 * receives a malloc'ed copy of the formatted diagnostics (for messages). */
bool lipc_fuzz_one(const uint8_t *data, size_t size, char **diag_out);

#endif
