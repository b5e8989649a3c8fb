/* tests/fuzz/fuzz_frontend.c: libFuzzer entry point for the model frontend.
 *
 * Everything happens in lipc_fuzz_one (fuzz_body.c), which the corpus test
 * also runs; here a verifier failure becomes an abort so libFuzzer records the
 * input as a crash. Build and run: tests/fuzz/README.md. */
#include "tests/fuzz/fuzz_body.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *diags = NULL;
    if (!lipc_fuzz_one(data, size, &diags)) {
        fprintf(stderr, "lipc fuzz: the verifier rejected a graph (compiler bug):\n%s",
                diags ? diags : "(no diagnostics)\n");
        abort();
    }
    free(diags);
    return 0;
}
