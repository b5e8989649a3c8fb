/* tests/test_fuzz_corpus.c: replays the fuzzer's corpus as a regression test.
 *
 * tests/fuzz/corpus/ holds the minimised corpus of the frontend fuzzer (seed
 * models, the golden diagnostics cases and what libFuzzer found interesting).
 * Each file goes through lipc_fuzz_one, the very function the fuzzer runs: the
 * test fails when the verifier calls a graph broken (a compiler bug), and the
 * sanitizer build (-DLIPC_SANITIZE=ON) turns any memory error or leak on these
 * inputs into a failure as well.
 */
#include "tests/fuzz/fuzz_body.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CORPUS_DIR LIPC_SOURCE_DIR "/tests/fuzz/corpus"

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    size_t cap = 4096, n = 0, got;
    unsigned char *buf = malloc(cap);
    while (buf && (got = fread(buf + n, 1, cap - n, fp)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(fp);
    *len = n;
    return buf;
}

Test(fuzz_corpus, replays_without_verifier_failures, .timeout = 300)
{
    DIR *dir = opendir(CORPUS_DIR);
    cr_assert_not_null(dir, "cannot open %s", CORPUS_DIR);
    int n_files = 0, n_bad = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", CORPUS_DIR, e->d_name);
        size_t len;
        unsigned char *data = read_all(path, &len);
        cr_assert_not_null(data, "cannot read %s", path);
        char *diags = NULL;
        if (!lipc_fuzz_one(data, len, &diags)) {
            n_bad++;
            cr_log_error("%s: the verifier rejected the graph:\n%s", e->d_name, diags ? diags : "");
        }
        free(diags);
        free(data);
        n_files++;
    }
    closedir(dir);
    cr_assert_gt(n_files, 0, "the corpus %s is empty", CORPUS_DIR);
    cr_assert_eq(n_bad, 0, "%d of %d corpus files broke an invariant", n_bad, n_files);
}
