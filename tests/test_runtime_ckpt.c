/* tests/test_runtime_ckpt.c: safetensors checkpoints.
 *
 * Round trips of every dtype and of metadata; the atomic write (no temporary
 * file left, an old file replaced whole); damaged files rejected with a
 * diagnostic naming the file (each hand-built to break one rule); and an
 * independent reader in Python (struct + json, or the safetensors package if
 * it is installed) must see the same numbers.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/runtime.h"
#include "testutil.h"

static void make_tmp(void) { test_tmp_make("/tmp/lipc-rtckpt"); }

TestSuite(runtime_ckpt, .init = make_tmp, .fini = test_tmp_remove);

static void write_raw(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f);
    cr_assert(len == 0 || fwrite(data, 1, len, f) == len);
    cr_assert(fclose(f) == 0);
}

static size_t read_raw(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

/* A file from a header text and data bytes: the length field, the header as
 * given (no padding added), the data. */
static void write_st(const char *path, const char *header, const void *data, size_t len)
{
    size_t hl = strlen(header);
    uint8_t *b = malloc(8 + hl + len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (len)
        memcpy(b + 8 + hl, data, len);
    write_raw(path, b, 8 + hl + len);
    free(b);
}

static lipc_status read_expect(const char *path, lipc_status want, const char *const *subs)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_st_file f;
    lipc_status st = lipc_st_read(path, &f, &d);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_assert_eq(st, want, "%s: status %s; diagnostics:\n%s", path, lipc_status_name(st),
                 lipc_buf_str(&b));
    if (want != LIPC_OK) {
        cr_assert(strstr(lipc_buf_str(&b), path), "file name missing in:\n%s", lipc_buf_str(&b));
        cr_assert_eq(f.tensors, NULL);
    }
    for (int i = 0; subs[i]; i++)
        cr_assert(strstr(lipc_buf_str(&b), subs[i]), "missing '%s' in:\n%s", subs[i],
                  lipc_buf_str(&b));
    if (st == LIPC_OK)
        lipc_st_free(&f);
    lipc_buf_free(&b);
    lipc_diags_free(&d);
    return st;
}

#define REJECT(path, ...) \
    read_expect(path, LIPC_ERR_INPUT, (const char *const[]){__VA_ARGS__, NULL})

/* The tensors of the round trip. */
static float w[6] = {1.5f, -2.25f, 3.0f, 0.0f, 1e-30f, -7.0f};
static double v[4] = {0.1, -1e300, 3.14159265358979, 42.0};
static int64_t step = 123456789012345;
static uint8_t u[5] = {0, 1, 127, 128, 255};

static void write_sample(const char *path)
{
    lipc_st_tensor t[] = {
        {.name = "layer1.weight", .dtype = LIPC_ST_F32, .rank = 2, .dims = {2, 3}, .data = w},
        {.name = "power.v", .dtype = LIPC_ST_F64, .rank = 1, .dims = {4}, .data = v},
        {.name = "step", .dtype = LIPC_ST_I64, .rank = 0, .data = &step},
        {.name = "mask", .dtype = LIPC_ST_U8, .rank = 1, .dims = {5}, .data = u},
        {.name = "empty", .dtype = LIPC_ST_F32, .rank = 2, .dims = {0, 3}, .data = NULL},
    };
    lipc_st_meta m[] = {{"format", "pt"}, {"model", "liresnet \"x\" é"}, {"epoch", "3"}};
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status st = lipc_st_write(path, t, 5, m, 3, &d);
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK);
    lipc_diags_free(&d);
}

Test(runtime_ckpt, round_trip)
{
    const char *p = test_tmp_path("model.safetensors");
    write_sample(p);
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_st_file f;
    cr_assert_eq(lipc_st_read(p, &f, &d), LIPC_OK);
    cr_assert_eq(f.n, 5);
    const lipc_st_tensor *t = lipc_st_find(&f, "layer1.weight");
    cr_assert(t && t->dtype == LIPC_ST_F32 && t->rank == 2 && t->dims[0] == 2 && t->dims[1] == 3);
    cr_assert(t->nbytes == sizeof w && memcmp(t->data, w, sizeof w) == 0);
    t = lipc_st_find(&f, "power.v");
    cr_assert(t && t->dtype == LIPC_ST_F64 && memcmp(t->data, v, sizeof v) == 0);
    t = lipc_st_find(&f, "step");
    cr_assert(t && t->dtype == LIPC_ST_I64 && t->rank == 0 && memcmp(t->data, &step, 8) == 0);
    t = lipc_st_find(&f, "mask");
    cr_assert(t && t->dtype == LIPC_ST_U8 && memcmp(t->data, u, 5) == 0);
    t = lipc_st_find(&f, "empty");
    cr_assert(t && t->nbytes == 0 && t->dims[0] == 0);
    cr_assert_eq(lipc_st_find(&f, "nope"), NULL);
    cr_assert_str_eq(lipc_st_meta_get(&f, "model"), "liresnet \"x\" é");
    cr_assert_str_eq(lipc_st_meta_get(&f, "epoch"), "3");
    cr_assert_eq(lipc_st_meta_get(&f, "nope"), NULL);

    /* Larger elements first: each tensor is aligned in the file. */
    for (int i = 0; i < f.n; i++) {
        size_t off = (size_t)((const uint8_t *)f.tensors[i].data - f.bytes);
        cr_assert(off % lipc_st_dtype_size(f.tensors[i].dtype) == 0, "%s at %zu",
                  f.tensors[i].name, off);
    }
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)f.bytes[i] << (8 * i);
    cr_assert(hl % 8 == 0 && f.bytes[8] == '{');

    /* Copies with conversion, and the checks on the way. */
    double wd[6];
    float vf[4];
    int64_t dw[2] = {2, 3}, dv[1] = {4};
    cr_assert_eq(lipc_st_copy(&f, "layer1.weight", LIPC_ST_F64, 2, dw, wd, &d), LIPC_OK);
    cr_assert_eq(lipc_st_copy(&f, "power.v", LIPC_ST_F32, 1, dv, vf, &d), LIPC_OK);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(wd[i], (double)w[i]);
    cr_assert_eq(vf[2], (float)v[2]);
    cr_assert_eq(lipc_st_copy(&f, "layer1.weight", LIPC_ST_F32, 1, dv, vf, &d), LIPC_ERR_INPUT);
    cr_assert_eq(lipc_st_copy(&f, "mask", LIPC_ST_F32, 1, (int64_t[]){5}, vf, &d),
                 LIPC_ERR_INPUT);
    cr_assert_eq(lipc_st_copy(&f, "missing", LIPC_ST_F32, 1, dv, vf, &d), LIPC_ERR_INPUT);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_assert(strstr(lipc_buf_str(&b), "model.safetensors: error: tensor 'layer1.weight' has "
                                       "shape [2, 3]; expected [4]"), "%s", lipc_buf_str(&b));
    cr_assert(strstr(lipc_buf_str(&b), "tensor 'mask' is U8; expected F32"));
    cr_assert(strstr(lipc_buf_str(&b), "no tensor named 'missing'"));
    lipc_buf_free(&b);
    lipc_st_free(&f);
    lipc_diags_free(&d);
}

/* Names in test_tmp_dir that contain s. */
static int count_files_with(const char *s)
{
    DIR *dir = opendir(test_tmp_dir);
    cr_assert(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        n += strstr(e->d_name, s) != NULL;
    closedir(dir);
    return n;
}

Test(runtime_ckpt, atomic_write_replaces_and_cleans_up)
{
    const char *p = test_tmp_path("ckpt.safetensors");
    write_raw(p, "old contents", 12);
    write_sample(p);
    cr_assert_eq(count_files_with(".tmp-"), 0, "a temporary file was left behind");
    cr_assert_eq(count_files_with("ckpt"), 1);
    uint8_t buf[4096];
    size_t n = read_raw(p, buf, sizeof buf);
    cr_assert(n > 12 && memcmp(buf + 8, "{", 1) == 0);
    /* Write again with different data: the file is replaced whole. */
    float one = 1;
    lipc_st_tensor t = {.name = "a", .dtype = LIPC_ST_F32, .rank = 1, .dims = {1}, .data = &one};
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_st_write(p, &t, 1, NULL, 0, &d), LIPC_OK);
    lipc_st_file f;
    cr_assert_eq(lipc_st_read(p, &f, &d), LIPC_OK);
    cr_assert(f.n == 1 && f.n_meta == 0 && f.len == 8 + 56 + 4);
    lipc_st_free(&f);

    /* Rejected input leaves the old file alone. */
    lipc_st_tensor dup[2] = {t, t};
    cr_assert_eq(lipc_st_write(p, dup, 2, NULL, 0, &d), LIPC_ERR_INPUT);
    cr_assert_eq(read_raw(p, buf, sizeof buf), 68);
    /* A failed rename (the target is a directory) removes the temporary. */
    char *dirp = test_tmp_path("adir");
    cr_assert(mkdir(dirp, 0777) == 0);
    cr_assert_eq(lipc_st_write(dirp, &t, 1, NULL, 0, &d), LIPC_ERR_IO);
    cr_assert_eq(count_files_with(".tmp-"), 0, "a temporary file was left behind");
    /* An unwritable place. */
    cr_assert_eq(lipc_st_write("/nonexistent-dir/x.safetensors", &t, 1, NULL, 0, &d),
                 LIPC_ERR_IO);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_assert(strstr(lipc_buf_str(&b), "ckpt.safetensors: error: two tensors are named 'a'"),
              "%s", lipc_buf_str(&b));
    cr_assert(strstr(lipc_buf_str(&b), "adir: error: cannot rename"), "%s", lipc_buf_str(&b));
    cr_assert(strstr(lipc_buf_str(&b), "/nonexistent-dir/x.safetensors: error: cannot create "
                                       "/nonexistent-dir/x.safetensors.tmp-"),
              "%s", lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_diags_free(&d);
}

Test(runtime_ckpt, damaged_files_are_rejected)
{
    const char *p = test_tmp_path("bad.safetensors");
    uint8_t data[64] = {0};

    write_raw(p, "", 0);
    REJECT(p, "bad.safetensors: error: file is empty");
    write_raw(p, "\x10\0\0", 3);
    REJECT(p, "truncated at byte 3 of the 8-byte header length");
    /* Header length over the limit (here 2^40). */
    write_raw(p, "\0\0\0\0\0\x01\0\0{}", 10);
    REJECT(p, "header length 1099511627776 is over the limit");
    /* Header length past the end of the file. */
    write_raw(p, "\x40\0\0\0\0\0\0\0{}", 10);
    REJECT(p, "truncated at byte 10 of the 72 bytes that the header length 64 needs");
    write_st(p, "{\"a\": {\"dtype\": \"F32\", ", data, 0);
    REJECT(p, "invalid JSON header");
    write_st(p, "[1, 2]", data, 0);
    REJECT(p, "the JSON header is not an object");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data, 8);
    REJECT(p, "invalid JSON header", "duplicate");
    write_st(p, "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 4);
    REJECT(p, "tensor 'a': unknown dtype 'F33'");
    write_st(p, "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", data, 4);
    REJECT(p, "tensor 'a': dtype BF16 is not supported");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2, 3],\"data_offsets\":[0,20]}}", data, 20);
    REJECT(p, "tensor 'a': shape [2, 3] of F32 does not match data_offsets [0, 20] (20 bytes)");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data, 4);
    REJECT(p, "shape entries must be non-negative integers");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", data, 16);
    REJECT(p, "tensor 'a': data_offsets [8, 24] run past the end of the data (16 bytes)");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data, 12);
    REJECT(p, "tensors 'a' and 'b' overlap");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data, 8);
    REJECT(p, "bytes 0..4 of the data belong to no tensor");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data, 12);
    REJECT(p, "8 bytes after the last tensor's data belong to no tensor");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
             data, 4);
    REJECT(p, "tensor 'a': unknown key 'x'");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data, 4);
    REJECT(p, "tensor 'a': needs a string dtype, a shape array and a data_offsets array");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", data, 4);
    REJECT(p, "data_offsets must be [begin, end] with 0 <= begin <= end");
    write_st(p, "{\"__metadata__\":{\"k\":1}}", data, 0);
    REJECT(p, "__metadata__ value of 'k' is not a string");

    /* A good file cut short: the last tensor runs past the end. */
    const char *good = test_tmp_path("good.safetensors");
    write_sample(good);
    uint8_t buf[4096];
    size_t n = read_raw(good, buf, sizeof buf);
    write_raw(p, buf, n - 3);
    REJECT(p, "run past the end of the data", "the file is truncated");

    /* Still fine: an empty file of tensors, and spaces after the JSON. */
    write_st(p, "{}      ", data, 0);
    read_expect(p, LIPC_OK, (const char *const[]){NULL});
    write_st(p, "{\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", data, 1);
    read_expect(p, LIPC_OK, (const char *const[]){NULL});

    read_expect(test_tmp_path("absent.safetensors"), LIPC_ERR_IO,
                (const char *const[]){"absent.safetensors: error: cannot open: No such file",
                                      NULL});
}

Test(runtime_ckpt, python_reads_our_files)
{
    if (system("python3 -c pass >/dev/null 2>&1") != 0)
        cr_skip_test("python3 is not available");
    /* A tensor with a known sum, stored among others so offsets matter. */
    float big[3 * 4];
    double sum = 0;
    for (int i = 0; i < 12; i++) {
        big[i] = 0.5f * (float)i - 1.25f;
        sum += big[i];
    }
    double dd[3] = {1e-3, 2.5, -4.0};
    lipc_st_tensor t[] = {
        {.name = "m", .dtype = LIPC_ST_F64, .rank = 1, .dims = {3}, .data = dd},
        {.name = "w", .dtype = LIPC_ST_F32, .rank = 2, .dims = {3, 4}, .data = big},
        {.name = "b", .dtype = LIPC_ST_U8, .rank = 1, .dims = {5}, .data = u},
    };
    lipc_st_meta m = {"epoch", "7"};
    const char *p = test_tmp_path("py.safetensors");
    lipc_diags d;
    lipc_diags_init(&d);
    cr_assert_eq(lipc_st_write(p, t, 3, &m, 1, &d), LIPC_OK);
    lipc_diags_free(&d);

    /* The official package if present, else a reader of the published format:
     * length, JSON, little-endian data at 8 + length + begin. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 -c '\n"
             "import json, struct, sys\n"
             "p = sys.argv[1]\n"
             "try:\n"
             "    from safetensors.numpy import load_file\n"
             "    t = load_file(p)\n"
             "    print(\"package\", float(t[\"w\"].sum()), float(t[\"m\"].sum()))\n"
             "except ImportError:\n"
             "    b = open(p, \"rb\").read()\n"
             "    n = struct.unpack(\"<Q\", b[:8])[0]\n"
             "    h = json.loads(b[8:8 + n])\n"
             "    base = 8 + n\n"
             "    def get(k, fmt, size):\n"
             "        s, e = h[k][\"data_offsets\"]\n"
             "        return struct.unpack(\"<%%d%%s\" %% ((e - s) // size, fmt), b[base + s:base + e])\n"
             "    assert h[\"w\"][\"shape\"] == [3, 4] and h[\"w\"][\"dtype\"] == \"F32\"\n"
             "    assert h[\"__metadata__\"] == {\"epoch\": \"7\"}\n"
             "    assert sorted(x for k in h if k != \"__metadata__\" for x in h[k][\"data_offsets\"])[-1] == len(b) - base\n"
             "    print(\"struct\", sum(get(\"w\", \"f\", 4)), sum(get(\"m\", \"d\", 8)))\n"
             "' '%s' 2>&1",
             p);
    FILE *pipe = popen(cmd, "r");
    cr_assert(pipe);
    char out[512] = "";
    size_t n = fread(out, 1, sizeof out - 1, pipe);
    out[n] = '\0';
    int rc = pclose(pipe);
    cr_assert_eq(rc, 0, "python failed:\n%s", out);
    char how[32];
    double got_w, got_m;
    cr_assert_eq(sscanf(out, "%31s %lf %lf", how, &got_w, &got_m), 3, "python said: %s", out);
    cr_assert(fabs(got_w - sum) < 1e-6, "python sum %g, want %g", got_w, sum);
    cr_assert(fabs(got_m - (dd[0] + dd[1] + dd[2])) < 1e-12);
}

Test(runtime_ckpt, out_of_memory_paths)
{
    const char *p = test_tmp_path("oom.safetensors");
    write_sample(p);
    for (long k = 1; k < 60; k++) {
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_st_file f;
        lipc_alloc_fail_after(k);
        lipc_status st = lipc_st_read(p, &f, &d);
        lipc_alloc_fail_after(0);
        lipc_diags_free(&d);
        if (st == LIPC_OK) {
            lipc_st_free(&f);
            break;
        }
        cr_assert_eq(st, LIPC_ERR_NOMEM, "failing allocation %ld: %s", k, lipc_status_name(st));
    }
    /* Writing: a failure never leaves a temporary file or a changed target. */
    uint8_t before[4096], after[4096];
    size_t n_before = read_raw(p, before, sizeof before);
    float one = 1;
    lipc_st_tensor t = {.name = "a", .dtype = LIPC_ST_F32, .rank = 1, .dims = {1}, .data = &one};
    for (long k = 1; k < 60; k++) {
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_alloc_fail_after(k);
        lipc_status st = lipc_st_write(p, &t, 1, NULL, 0, &d);
        lipc_alloc_fail_after(0);
        lipc_diags_free(&d);
        cr_assert_eq(count_files_with(".tmp-"), 0);
        if (st == LIPC_OK)
            break;
        cr_assert_eq(st, LIPC_ERR_NOMEM, "failing allocation %ld: %s", k, lipc_status_name(st));
        size_t n_after = read_raw(p, after, sizeof after);
        cr_assert(n_after == n_before && memcmp(before, after, n_before) == 0);
    }
}
