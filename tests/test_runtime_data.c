/* tests/test_runtime_data.c: datasets, the batcher and augmentation.
 *
 * Small IDX (gzipped and raw) and CIFAR-10/100 binary files are written into a
 * fresh temporary directory, loaded, and compared with what was written; each
 * kind of damage (bad magic, truncation, labels out of range, count mismatch,
 * missing and empty files, no known format) must be rejected with a
 * diagnostic that names the file. The batcher must visit each example once per
 * epoch in an order fixed by (seed, epoch), and crop/flip must move pixels
 * exactly as documented.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "runtime/runtime.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------- */

static char data_dir[128];      /* where write_bytes puts files: test_tmp_dir or below */

static void make_tmp(void)
{
    test_tmp_make("/tmp/lipc-rtdata");
    snprintf(data_dir, sizeof data_dir, "%s", test_tmp_dir);
}

/* Makes test_tmp_dir/name and writes the following files there. */
static void use_subdir(const char *name)
{
    snprintf(data_dir, sizeof data_dir, "%s/%s", test_tmp_dir, name);
    cr_assert(mkdir(data_dir, 0777) == 0, "mkdir %s", data_dir);
}

TestSuite(runtime_data, .init = make_tmp, .fini = test_tmp_remove);

/* data_dir/name */
static char *data_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, 512, "%s/%s", data_dir, name);
    return p;
}

/* Writes bytes to test_tmp_dir/name, gzipped when the name ends in ".gz". */
static void write_bytes(const char *name, const void *data, size_t len)
{
    const char *path = data_path(name);
    size_t nl = strlen(name);
    if (nl > 3 && strcmp(name + nl - 3, ".gz") == 0) {
        gzFile g = gzopen(path, "wb");
        cr_assert(g);
        cr_assert(len == 0 || gzwrite(g, data, (unsigned)len) == (int)len);
        cr_assert(gzclose(g) == Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        cr_assert(f);
        cr_assert(len == 0 || fwrite(data, 1, len, f) == len);
        cr_assert(fclose(f) == 0);
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The pixel value written for image i, pixel j. */
static uint8_t pix(int i, int j) { return (uint8_t)(i * 31 + j * 7 + 3); }

/* An IDX images file of n images of rows x cols (header says n_decl), with
 * `keep` bytes of the body actually written (-1: all). */
static void write_idx_images(const char *name, uint32_t magic, int n_decl, int n, int rows,
                             int cols, long keep)
{
    size_t body = (size_t)n * rows * cols;
    uint8_t *b = malloc(16 + body);
    put_be32(b, magic);
    put_be32(b + 4, (uint32_t)n_decl);
    put_be32(b + 8, (uint32_t)rows);
    put_be32(b + 12, (uint32_t)cols);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < rows * cols; j++)
            b[16 + (size_t)i * rows * cols + j] = pix(i, j);
    write_bytes(name, b, 16 + (keep >= 0 ? (size_t)keep : body));
    free(b);
}

static void write_idx_labels(const char *name, int n, const uint8_t *labels)
{
    uint8_t *b = malloc(8 + (size_t)n);
    put_be32(b, 0x00000801);
    put_be32(b + 4, (uint32_t)n);
    memcpy(b + 8, labels, (size_t)n);
    write_bytes(name, b, 8 + (size_t)n);
    free(b);
}

static const uint8_t labels5[] = {3, 1, 4, 1, 5};

/* A complete small IDX dataset: train 5 images 3x4 gzipped, test 2 raw. */
static void write_idx_set(void)
{
    write_idx_images("train-images-idx3-ubyte.gz", 0x803, 5, 5, 3, 4, -1);
    write_idx_labels("train-labels-idx1-ubyte.gz", 5, labels5);
    write_idx_images("t10k-images-idx3-ubyte", 0x803, 2, 2, 3, 4, -1);
    write_idx_labels("t10k-labels-idx1-ubyte", 2, labels5);
}

/* Loads test_tmp_dir and expects failure `want` with every substring in subs
 * (NULL-terminated) in the formatted diagnostics. */
static void expect_error(const char *spec, lipc_split split, lipc_status want,
                         const char *const *subs)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_dataset ds;
    lipc_status st = lipc_dataset_load(spec, split, 0, &ds, &d);
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_diags_format(&d, &b);
    cr_assert_eq(st, want, "status %s, want %s; diagnostics:\n%s", lipc_status_name(st),
                 lipc_status_name(want), lipc_buf_str(&b));
    cr_assert_eq(ds.x, NULL);
    cr_assert(d.n_errors >= 1);
    for (int i = 0; subs[i]; i++)
        cr_assert(strstr(lipc_buf_str(&b), subs[i]), "missing '%s' in:\n%s", subs[i],
                  lipc_buf_str(&b));
    lipc_buf_free(&b);
    lipc_diags_free(&d);
}

#define EXPECT(spec, split, st, ...) \
    expect_error(spec, split, st, (const char *const[]){__VA_ARGS__, NULL})

static void load_ok(const char *spec, lipc_split split, long limit, lipc_dataset *ds)
{
    lipc_diags d;
    lipc_diags_init(&d);
    lipc_status st = lipc_dataset_load(spec, split, limit, ds, &d);
    if (st != LIPC_OK)
        lipc_diags_print(&d, stderr);
    cr_assert_eq(st, LIPC_OK, "loading %s: %s", spec, lipc_status_name(st));
    cr_assert_eq(d.n_errors, 0);
    lipc_diags_free(&d);
}

/* ---- IDX ------------------------------------------------------------------------- */

Test(runtime_data, idx_gz_and_raw)
{
    write_idx_set();
    lipc_dataset ds;
    load_ok(test_tmp_dir, LIPC_SPLIT_TRAIN, 0, &ds);
    cr_assert_eq(ds.n, 5);
    cr_assert(ds.c == 1 && ds.h == 3 && ds.w == 4 && ds.classes == 10);
    cr_assert_str_eq(ds.name, "mnist");
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(ds.y[i], labels5[i]);
        for (int j = 0; j < 12; j++)
            cr_assert_float_eq(ds.x[i * 12 + j], pix(i, j) / 255.0f, 1e-7);
    }
    lipc_dataset_free(&ds);
    cr_assert_eq(ds.x, NULL);

    load_ok(test_tmp_dir, LIPC_SPLIT_TEST, 0, &ds);
    cr_assert_eq(ds.n, 2);
    cr_assert_float_eq(ds.x[12 + 5], pix(1, 5) / 255.0f, 1e-7);
    cr_assert_eq(ds.y[1], labels5[1]);
    lipc_dataset_free(&ds);
}

Test(runtime_data, idx_limit_and_name)
{
    /* A directory whose path mentions "fashion" holds Fashion-MNIST. */
    use_subdir("Fashion-data");
    write_idx_set();
    lipc_dataset ds;
    load_ok(data_dir, LIPC_SPLIT_TRAIN, 3, &ds);
    cr_assert_eq(ds.n, 3);
    cr_assert_str_eq(ds.name, "fashion-mnist");
    cr_assert_eq(ds.y[2], labels5[2]);
    cr_assert_float_eq(ds.x[2 * 12 + 11], pix(2, 11) / 255.0f, 1e-7);
    lipc_dataset_free(&ds);
    /* A limit past the end keeps everything. */
    load_ok(data_dir, LIPC_SPLIT_TRAIN, 1000, &ds);
    cr_assert_eq(ds.n, 5);
    lipc_dataset_free(&ds);
}

Test(runtime_data, idx_by_name_via_env)
{
    use_subdir("mnist");
    write_idx_set();
    setenv("LIPC_DATA_DIR", test_tmp_dir, 1);
    lipc_dataset ds;
    load_ok("mnist", LIPC_SPLIT_TEST, 0, &ds);
    cr_assert_eq(ds.n, 2);
    cr_assert_str_eq(ds.name, "mnist");
    lipc_dataset_free(&ds);
}

Test(runtime_data, idx_bad_magic)
{
    write_idx_set();
    write_idx_images("train-images-idx3-ubyte.gz", 0x12345678, 5, 5, 3, 4, -1);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-images-idx3-ubyte.gz: error: bad magic 0x12345678");
    /* A labels file where the images belong. */
    write_idx_labels("t10k-images-idx3-ubyte", 2, labels5);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT,
           "t10k-images-idx3-ubyte: error: this is an IDX labels file (magic 0x00000801)");
    /* IDX of bytes, wrong number of dimensions. */
    write_idx_images("t10k-images-idx3-ubyte", 0x802, 2, 2, 3, 4, -1);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT, "bad magic 0x00000802",
           "with 2 dimensions");
}

Test(runtime_data, idx_truncated)
{
    write_idx_set();
    /* 5 images of 3x4 declared: 16 + 60 = 76 bytes; only 16 + 40 present. */
    write_idx_images("train-images-idx3-ubyte.gz", 0x803, 5, 5, 3, 4, 40);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-images-idx3-ubyte.gz: error: truncated at byte 56 of 76 "
           "(the header declares 5 images of 3x4)");
    /* The header itself cut short. */
    write_idx_images("t10k-images-idx3-ubyte", 0x803, 2, 2, 3, 4, -1);
    uint8_t hdr[10] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0};
    write_bytes("t10k-images-idx3-ubyte", hdr, sizeof hdr);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT,
           "t10k-images-idx3-ubyte: error: truncated at byte 10 of the 16-byte IDX header");
}

Test(runtime_data, idx_gzip_stream_cut)
{
    write_idx_set();
    write_idx_images("train-images-idx3-ubyte.gz", 0x803, 200, 200, 28, 28, -1);
    uint8_t *lab = calloc(200, 1);
    write_idx_labels("train-labels-idx1-ubyte.gz", 200, lab);
    free(lab);
    /* Cut the compressed file at 60 %: an interrupted download. */
    const char *p = data_path("train-images-idx3-ubyte.gz");
    FILE *f = fopen(p, "rb");
    cr_assert(f);
    uint8_t buf[65536];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cr_assert(len > 100 && len < sizeof buf);
    write_bytes("train-images-idx3-ubyte.raw", buf, len * 6 / 10);
    cr_assert(rename(data_path("train-images-idx3-ubyte.raw"), p) == 0);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-images-idx3-ubyte.gz: error: truncated at byte", "of 156816",
           "the gzip stream itself ends early");
}

Test(runtime_data, idx_gzip_corrupt)
{
    write_idx_set();
    const char *p = data_path("train-labels-idx1-ubyte.gz");
    FILE *f = fopen(p, "rb");
    uint8_t buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    /* Damage the CRC-32 in the gzip trailer: the data decode, the check fails. */
    buf[len - 6] ^= 0xff;
    write_bytes("train-labels-idx1-ubyte.raw", buf, len);
    cr_assert(rename(data_path("train-labels-idx1-ubyte.raw"), p) == 0);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-labels-idx1-ubyte.gz: error: corrupt gzip data");
}

Test(runtime_data, idx_trailing_data)
{
    write_idx_set();
    /* Header says 4 images, 5 follow. */
    write_idx_images("t10k-images-idx3-ubyte", 0x803, 4, 5, 3, 4, -1);
    write_idx_labels("t10k-labels-idx1-ubyte", 4, labels5);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT,
           "t10k-images-idx3-ubyte: error: unexpected data after byte 64");
}

Test(runtime_data, idx_label_out_of_range)
{
    write_idx_set();
    const uint8_t bad[] = {3, 12, 4, 11, 5};
    write_idx_labels("train-labels-idx1-ubyte.gz", 5, bad);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-labels-idx1-ubyte.gz: error: label 12 out of range for 10 classes (example 1)",
           "note: 2 labels in all are out of range");
}

Test(runtime_data, idx_count_mismatch)
{
    write_idx_set();
    write_idx_labels("train-labels-idx1-ubyte.gz", 4, labels5);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-labels-idx1-ubyte.gz: error: image count mismatch:",
           "train-images-idx3-ubyte.gz has 5 images but this file has 4 labels");
}

Test(runtime_data, idx_missing_and_empty_files)
{
    write_idx_images("train-images-idx3-ubyte.gz", 0x803, 5, 5, 3, 4, -1);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_IO,
           "error: missing train-labels-idx1-ubyte[.gz]", test_tmp_dir);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_IO,
           "error: missing t10k-images-idx3-ubyte[.gz]: this IDX dataset has no test images");
    write_idx_labels("train-labels-idx1-ubyte.gz", 5, labels5);
    write_bytes("train-images-idx3-ubyte.gz", "", 0);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train-images-idx3-ubyte.gz: error: file is empty; expected IDX images");
}

Test(runtime_data, idx_both_files_reported)
{
    write_idx_images("train-images-idx3-ubyte", 0x1, 5, 5, 3, 4, -1);
    write_bytes("train-labels-idx1-ubyte", "", 0);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT, "train-images-idx3-ubyte: error: bad magic",
           "train-labels-idx1-ubyte: error: file is empty", "2 errors generated");
}

Test(runtime_data, bad_paths_and_names)
{
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT, ": error: no dataset files found here",
           "note: expected IDX files", "CIFAR-10 binary");
    char missing[300];
    snprintf(missing, sizeof missing, "%s/nope", test_tmp_dir);
    EXPECT(missing, LIPC_SPLIT_TRAIN, LIPC_ERR_IO,
           "nope: error: cannot open dataset directory: No such file or directory");
    write_idx_set();
    EXPECT(data_path("t10k-images-idx3-ubyte"), LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "t10k-images-idx3-ubyte: error: not a directory", "hint: try /tmp/lipc-rtdata-");
    EXPECT("fashion_mnist", LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "error: unknown dataset 'fashion_mnist'", "did you mean 'fashion-mnist'?");
    EXPECT("synthetic:x", LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT, "N in synthetic:N");
    EXPECT("synthetic:0", LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT, "N in synthetic:N");
}

Test(runtime_data, named_dataset_absent)
{
    setenv("LIPC_DATA_DIR", test_tmp_dir, 1);
    const char *others[] = {"data/mnist", "/usr/share/datasets/mnist",
                            "/usr/local/share/datasets/mnist"};
    for (int i = 0; i < 3; i++) {
        struct stat sb;
        if (stat(others[i], &sb) == 0)
            cr_skip_test("%s exists", others[i]);
    }
    EXPECT("mnist", LIPC_SPLIT_TRAIN, LIPC_ERR_IO, "lipc: error: dataset 'mnist' not found",
           "note: looked in /usr/share/datasets/mnist", "hint: pass --data PATH");
    EXPECT("cifar10", LIPC_SPLIT_TRAIN, LIPC_ERR_IO, "dataset 'cifar10' not found",
           "CIFAR-10 binary version");
}

/* ---- CIFAR ------------------------------------------------------------------------- */

static uint8_t cpix(int file, int rec, int j) { return (uint8_t)(file * 50 + rec * 13 + j); }

/* A CIFAR file: n records, label bytes from labels(file, rec, k). */
static void write_cifar(const char *name, int file, int n, int label_bytes,
                        const uint8_t *labels /* [n, label_bytes] */, long keep)
{
    int rec = label_bytes + 3072;
    uint8_t *b = malloc((size_t)rec * n);
    for (int r = 0; r < n; r++) {
        memcpy(b + (size_t)r * rec, labels + r * label_bytes, (size_t)label_bytes);
        for (int j = 0; j < 3072; j++)
            b[(size_t)r * rec + label_bytes + j] = cpix(file, r, j);
    }
    write_bytes(name, b, keep >= 0 ? (size_t)keep : (size_t)rec * n);
    free(b);
}

static void write_cifar10_set(void)
{
    char name[32];
    for (int f = 0; f < 5; f++) {
        uint8_t lab[2] = {(uint8_t)(f % 10), (uint8_t)((f + 1) % 10)};
        snprintf(name, sizeof name, "data_batch_%d.bin", f + 1);
        write_cifar(name, f, 2, 1, lab, -1);
    }
    uint8_t lab[3] = {7, 8, 9};
    write_cifar("test_batch.bin", 5, 3, 1, lab, -1);
}

Test(runtime_data, cifar10)
{
    write_cifar10_set();
    lipc_dataset ds;
    load_ok(test_tmp_dir, LIPC_SPLIT_TRAIN, 0, &ds);
    cr_assert(ds.n == 10 && ds.c == 3 && ds.h == 32 && ds.w == 32 && ds.classes == 10);
    cr_assert_str_eq(ds.name, "cifar10");
    for (int k = 0; k < 10; k++) {
        int f = k / 2, r = k % 2;
        cr_assert_eq(ds.y[k], (f + r) % 10);
        /* Red plane first, then green, then blue: [c, h, w] as stored. */
        for (int j = 0; j < 3072; j += 101)
            cr_assert_float_eq(ds.x[(size_t)k * 3072 + j], cpix(f, r, j) / 255.0f, 1e-7);
    }
    lipc_dataset_free(&ds);
    /* A limit spanning two batch files. */
    load_ok(test_tmp_dir, LIPC_SPLIT_TRAIN, 3, &ds);
    cr_assert_eq(ds.n, 3);
    cr_assert_eq(ds.y[2], 1);
    cr_assert_float_eq(ds.x[2 * 3072 + 1000], cpix(1, 0, 1000) / 255.0f, 1e-7);
    lipc_dataset_free(&ds);
    load_ok(test_tmp_dir, LIPC_SPLIT_TEST, 0, &ds);
    cr_assert_eq(ds.n, 3);
    cr_assert_eq(ds.y[2], 9);
    lipc_dataset_free(&ds);
}

Test(runtime_data, cifar10_in_archive_subdir)
{
    use_subdir("cifar-10-batches-bin");
    write_cifar10_set();
    lipc_dataset ds;
    load_ok(test_tmp_dir, LIPC_SPLIT_TEST, 0, &ds);
    cr_assert_eq(ds.n, 3);
    lipc_dataset_free(&ds);
}

Test(runtime_data, cifar100_fine_labels)
{
    uint8_t lab[6] = {0, 90, 1, 91, 19, 99};    /* coarse, fine */
    write_cifar("train.bin", 0, 3, 2, lab, -1);
    write_cifar("test.bin", 1, 1, 2, lab, -1);
    lipc_dataset ds;
    load_ok(test_tmp_dir, LIPC_SPLIT_TRAIN, 0, &ds);
    cr_assert(ds.n == 3 && ds.classes == 100);
    cr_assert_str_eq(ds.name, "cifar100");
    cr_assert(ds.y[0] == 90 && ds.y[1] == 91 && ds.y[2] == 99);
    cr_assert_float_eq(ds.x[2 * 3072 + 7], cpix(0, 2, 7) / 255.0f, 1e-7);
    lipc_dataset_free(&ds);

    uint8_t bad[6] = {0, 90, 25, 91, 3, 100};
    write_cifar("train.bin", 0, 3, 2, bad, -1);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "train.bin: error: coarse label 25 out of range for 20 classes (record 1)",
           "note: 2 records of this file have a label out of range");
}

Test(runtime_data, cifar_damage)
{
    write_cifar10_set();
    uint8_t lab[2] = {1, 2};
    /* One and a half records: 3073 + 1536 bytes. */
    write_cifar("data_batch_1.bin", 0, 2, 1, lab, 3073 + 1536);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_INPUT,
           "data_batch_1.bin: error: truncated at byte 4609 of 6146: record 1 is incomplete");
    uint8_t bad[3] = {7, 10, 9};
    write_cifar("test_batch.bin", 5, 3, 1, bad, -1);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT,
           "test_batch.bin: error: label 10 out of range for 10 classes (record 1)");
    write_bytes("test_batch.bin", "", 0);
    EXPECT(test_tmp_dir, LIPC_SPLIT_TEST, LIPC_ERR_INPUT,
           "test_batch.bin: error: file is empty; expected CIFAR-10 records of 3073 bytes");
    remove(data_path("data_batch_3.bin"));
    EXPECT(test_tmp_dir, LIPC_SPLIT_TRAIN, LIPC_ERR_IO, "error: missing data_batch_3.bin",
           "this CIFAR-10 dataset has no training split");
}

/* ---- synthetic and split ------------------------------------------------------------ */

Test(runtime_data, synthetic_is_deterministic_and_learnable)
{
    lipc_dataset a, b, t;
    load_ok("synthetic", LIPC_SPLIT_TRAIN, 0, &a);
    load_ok("synthetic:100", LIPC_SPLIT_TRAIN, 0, &b);
    cr_assert(a.n == 1024 && b.n == 100 && a.c == 1 && a.h == 8 && a.w == 8 && a.classes == 4);
    cr_assert_str_eq(a.name, "synthetic");
    /* synthetic:100 is a prefix of synthetic. */
    cr_assert(memcmp(a.x, b.x, sizeof(float) * 64 * 100) == 0);
    cr_assert(memcmp(a.y, b.y, 100) == 0);
    int count[4] = {0};
    for (int i = 0; i < a.n; i++) {
        cr_assert(a.y[i] < 4);
        count[a.y[i]]++;
    }
    for (int k = 0; k < 4; k++)
        cr_assert(count[k] > 200, "class %d has %d examples", k, count[k]);
    for (int i = 0; i < a.n * 64; i++)
        cr_assert(a.x[i] >= 0.0f && a.x[i] <= 1.0f);
    load_ok("synthetic", LIPC_SPLIT_TEST, 0, &t);
    cr_assert_eq(t.n, 256);
    cr_assert(memcmp(a.x, t.x, sizeof(float) * 64) != 0, "test split repeats train");

    /* Learnable: even a nearest-class-mean classifier does well on the test split. */
    double mean[4][64] = {{0}};
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < 64; j++)
            mean[a.y[i]][j] += a.x[i * 64 + j] / count[a.y[i]];
    int right = 0;
    for (int i = 0; i < t.n; i++) {
        int best = 0;
        double bd = 1e300;
        for (int k = 0; k < 4; k++) {
            double dist = 0;
            for (int j = 0; j < 64; j++)
                dist += (t.x[i * 64 + j] - mean[k][j]) * (t.x[i * 64 + j] - mean[k][j]);
            if (dist < bd) {
                bd = dist;
                best = k;
            }
        }
        right += best == t.y[i];
    }
    cr_assert(right > 0.85 * t.n, "nearest mean: %d of %d right", right, t.n);
    lipc_dataset_free(&a);
    lipc_dataset_free(&b);
    lipc_dataset_free(&t);
}

Test(runtime_data, split_holds_out_the_last)
{
    lipc_dataset all, tr, va;
    load_ok("synthetic:40", LIPC_SPLIT_TRAIN, 0, &all);
    cr_assert_eq(lipc_dataset_split(&all, 10, &tr, &va), LIPC_OK);
    cr_assert(tr.n == 30 && va.n == 10 && va.classes == 4 && va.h == 8);
    cr_assert(memcmp(tr.x, all.x, sizeof(float) * 64 * 30) == 0);
    cr_assert(memcmp(va.x, all.x + 64 * 30, sizeof(float) * 64 * 10) == 0);
    cr_assert(memcmp(va.y, all.y + 30, 10) == 0);
    cr_assert_str_eq(va.name, "synthetic");
    lipc_dataset_free(&tr);
    lipc_dataset_free(&va);
    cr_assert_eq(lipc_dataset_split(&all, 41, &tr, &va), LIPC_ERR_INPUT);
    cr_assert_eq(lipc_dataset_split(&all, 0, &tr, &va), LIPC_OK);
    cr_assert(tr.n == 40 && va.n == 0);
    lipc_dataset_free(&tr);
    lipc_dataset_free(&va);
    lipc_dataset_free(&all);
}

Test(runtime_data, out_of_memory_paths)
{
    /* Every allocation failure is reported as NOMEM, never as a missing file
     * or a crash; the sanitizer build checks that nothing leaks. */
    write_idx_set();
    for (long k = 1; k < 40; k++) {
        lipc_diags d;
        lipc_diags_init(&d);
        lipc_dataset ds;
        lipc_alloc_fail_after(k);
        lipc_status st = lipc_dataset_load(test_tmp_dir, LIPC_SPLIT_TRAIN, 0, &ds, &d);
        lipc_alloc_fail_after(0);
        lipc_diags_free(&d);
        if (st == LIPC_OK) {
            lipc_dataset_free(&ds);
            break;
        }
        cr_assert_eq(st, LIPC_ERR_NOMEM, "failing allocation %ld: %s", k, lipc_status_name(st));
        cr_assert_eq(ds.x, NULL);
    }
}

/* ---- the batcher and augmentation --------------------------------------------------- */

/* n examples of c x h x w with distinct non-zero values; y[i] = i. */
static void toy(lipc_dataset *ds, int n, int c, int h, int w)
{
    memset(ds, 0, sizeof *ds);
    ds->n = n;
    ds->c = c;
    ds->h = h;
    ds->w = w;
    ds->classes = 256;
    int per = c * h * w;
    ds->x = lipc_malloc(sizeof(float) * (size_t)(n * per));
    ds->y = lipc_malloc((size_t)n);
    for (int i = 0; i < n; i++) {
        ds->y[i] = (uint8_t)i;
        for (int j = 0; j < per; j++)
            ds->x[i * per + j] = (float)(i * 1000 + j + 1);
    }
}

Test(runtime_data, augment_image_by_hand)
{
    /* 2 channels of 3x3: 1..9 and 11..19. */
    float in[18], out[18];
    for (int i = 0; i < 9; i++) {
        in[i] = (float)(i + 1);
        in[9 + i] = (float)(i + 11);
    }
    struct {
        int pad, dy, dx;
        bool flip;
        float want[9];
    } cases[] = {
        {1, 0, 0, false, {0, 0, 0, 0, 1, 2, 0, 4, 5}},  /* window at the top-left corner */
        {1, 2, 1, false, {4, 5, 6, 7, 8, 9, 0, 0, 0}},  /* shifted up one row */
        {1, 1, 1, false, {1, 2, 3, 4, 5, 6, 7, 8, 9}},  /* centre: the identity */
        {0, 0, 0, true, {3, 2, 1, 6, 5, 4, 9, 8, 7}},   /* mirror */
        {1, 1, 2, true, {0, 3, 2, 0, 6, 5, 0, 9, 8}},   /* window right, then mirror */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        lipc_augment_image(in, out, 2, 3, 3, cases[k].pad, cases[k].dy, cases[k].dx,
                           cases[k].flip);
        for (int i = 0; i < 9; i++) {
            cr_assert_eq(out[i], cases[k].want[i], "case %zu, pixel %d", k, i);
            float w2 = cases[k].want[i] ? cases[k].want[i] + 10 : 0;
            cr_assert_eq(out[9 + i], w2, "case %zu, channel 1, pixel %d", k, i);
        }
    }
}

/* All batches of one epoch: labels in visit order into seen (returns count). */
static int run_epoch(lipc_batcher *b, float *x, uint8_t *y, uint8_t *seen)
{
    int total = 0, got;
    while ((got = lipc_batcher_next(b, x, y)) > 0) {
        memcpy(seen + total, y, (size_t)got);
        /* Without augmentation each example arrives unchanged. */
        if (!b->aug.crop && !b->aug.flip)
            for (int i = 0; i < got; i++)
                cr_assert_eq(x[i * 6], (float)(y[i] * 1000 + 1));
        total += got;
    }
    return total;
}

Test(runtime_data, batcher_covers_each_example_once)
{
    lipc_dataset ds;
    toy(&ds, 10, 1, 2, 3);
    lipc_batcher b, b2;
    cr_assert_eq(lipc_batcher_init(&b, &ds, 4, NULL, true, false, test_seed()), LIPC_OK);
    cr_assert_eq(lipc_batcher_init(&b2, &ds, 4, NULL, true, false, test_seed()), LIPC_OK);
    cr_assert_eq(lipc_batcher_steps(&b), 3);
    float x[4 * 6];
    uint8_t y[4], e0[10], e1[10], again[10];
    cr_assert_eq(run_epoch(&b, x, y, e0), 10);
    lipc_batcher_seek(&b, 1, 0);
    cr_assert_eq(run_epoch(&b, x, y, e1), 10);
    for (int e = 0; e < 2; e++) {
        int hits[10] = {0};
        for (int i = 0; i < 10; i++)
            hits[(e ? e1 : e0)[i]]++;
        for (int i = 0; i < 10; i++)
            cr_assert_eq(hits[i], 1, "seed %llu epoch %d: example %d seen %d times",
                         (unsigned long long)test_seed(), e, i, hits[i]);
    }
    cr_assert(memcmp(e0, e1, 10) != 0, "epochs 0 and 1 in the same order");
    /* The same seed gives the same order; resuming at a step gives the rest. */
    lipc_batcher_seek(&b2, 1, 0);
    cr_assert_eq(run_epoch(&b2, x, y, again), 10);
    cr_assert(memcmp(again, e1, 10) == 0);
    lipc_batcher_seek(&b2, 1, 2);
    cr_assert_eq(lipc_batcher_next(&b2, x, y), 2);
    cr_assert(memcmp(y, e1 + 8, 2) == 0);
    /* Another seed, another order. */
    lipc_batcher b3;
    cr_assert_eq(lipc_batcher_init(&b3, &ds, 4, NULL, true, false, test_seed() + 1), LIPC_OK);
    cr_assert_eq(run_epoch(&b3, x, y, again), 10);
    cr_assert(memcmp(again, e0, 10) != 0);
    lipc_batcher_free(&b3);
    /* No shuffle: dataset order; drop_last: whole batches only. */
    lipc_batcher_free(&b2);
    cr_assert_eq(lipc_batcher_init(&b2, &ds, 4, NULL, false, true, 1), LIPC_OK);
    cr_assert_eq(lipc_batcher_steps(&b2), 2);
    cr_assert_eq(run_epoch(&b2, x, y, again), 8);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(again[i], i);
    lipc_batcher_free(&b);
    lipc_batcher_free(&b2);
    lipc_dataset_free(&ds);
}

Test(runtime_data, batcher_augments_with_valid_crops_and_flips)
{
    lipc_dataset ds;
    toy(&ds, 6, 2, 5, 5);
    lipc_augment aug = {.crop = true, .crop_pad = 2, .flip = true};
    lipc_batcher b, b2;
    cr_assert_eq(lipc_batcher_init(&b, &ds, 4, &aug, true, false, test_seed()), LIPC_OK);
    cr_assert_eq(lipc_batcher_init(&b2, &ds, 4, &aug, true, false, test_seed()), LIPC_OK);
    float x[4 * 50], x2[4 * 50], cand[50];
    uint8_t y[4], y2[4];
    int flips = 0, unflipped = 0, dys[5] = {0};
    for (int epoch = 0; epoch < 8; epoch++) {
        lipc_batcher_seek(&b, epoch, 0);
        lipc_batcher_seek(&b2, epoch, 0);
        int got;
        while ((got = lipc_batcher_next(&b, x, y)) > 0) {
            cr_assert_eq(lipc_batcher_next(&b2, x2, y2), got);
            cr_assert(memcmp(x, x2, sizeof(float) * 50 * (size_t)got) == 0, "not deterministic");
            for (int i = 0; i < got; i++) {
                /* The output must be exactly one of the 5 x 5 x 2 transforms. */
                int found = 0;
                for (int dy = 0; dy <= 4; dy++)
                    for (int dx = 0; dx <= 4; dx++)
                        for (int fl = 0; fl < 2; fl++) {
                            lipc_augment_image(ds.x + y[i] * 50, cand, 2, 5, 5, 2, dy, dx, fl);
                            if (memcmp(cand, x + i * 50, sizeof cand) == 0) {
                                found++;
                                dys[dy]++;
                                fl ? flips++ : unflipped++;
                            }
                        }
                cr_assert_eq(found, 1, "seed %llu: output is not a single crop/flip of its input",
                             (unsigned long long)test_seed());
            }
        }
    }
    cr_assert(flips > 5 && unflipped > 5, "flips %d, unflipped %d", flips, unflipped);
    for (int k = 0; k < 5; k++)
        cr_assert(dys[k] > 0, "offset %d never drawn", k);
    lipc_batcher_free(&b);
    lipc_batcher_free(&b2);
    lipc_dataset_free(&ds);
}

Test(runtime_data, augment_defaults)
{
    lipc_augment a;
    lipc_augment_defaults("cifar10", &a);
    cr_assert(a.crop && a.crop_pad == 4 && a.flip);
    lipc_augment_defaults("cifar100", &a);
    cr_assert(a.crop && a.flip);
    lipc_augment_defaults("mnist", &a);
    cr_assert(a.crop && a.crop_pad == 2 && !a.flip);
    lipc_augment_defaults("fashion-mnist", &a);
    cr_assert(a.crop && a.flip);
    lipc_augment_defaults("synthetic", &a);
    cr_assert(!a.crop && !a.flip);
    lipc_augment_defaults(NULL, &a);
    cr_assert(!a.crop && !a.flip);
}

/* ---- the real Fashion-MNIST, when installed ----------------------------------------- */

Test(runtime_data, fashion_mnist_installed)
{
    struct stat sb;
    if (stat("/usr/share/datasets/fashion-mnist", &sb) != 0)
        cr_skip_test("/usr/share/datasets/fashion-mnist is not installed");
    const char *dir = "/usr/share/datasets/fashion-mnist";
    for (int s = 0; s < 2; s++) {
        lipc_dataset ds;
        load_ok(dir, (lipc_split)s, 100, &ds);
        cr_assert(ds.n == 100 && ds.c == 1 && ds.h == 28 && ds.w == 28 && ds.classes == 10);
        cr_assert_str_eq(ds.name, "fashion-mnist");
        float lo = 1, hi = 0;
        for (int i = 0; i < 100 * 784; i++) {
            lo = ds.x[i] < lo ? ds.x[i] : lo;
            hi = ds.x[i] > hi ? ds.x[i] : hi;
        }
        cr_assert(lo == 0.0f && hi == 1.0f, "pixel range [%g, %g]", lo, hi);
        int seen[10] = {0}, distinct = 0;
        for (int i = 0; i < 100; i++) {
            cr_assert(ds.y[i] < 10);
            distinct += seen[ds.y[i]]++ == 0;
        }
        cr_assert(distinct >= 8);
        lipc_dataset_free(&ds);
    }
    /* The whole test split: exactly 1000 of each class; every byte checked. */
    lipc_dataset ds;
    load_ok("fashion-mnist", LIPC_SPLIT_TEST, 0, &ds);
    cr_assert_eq(ds.n, 10000);
    int count[10] = {0};
    for (int i = 0; i < ds.n; i++)
        count[ds.y[i]]++;
    for (int k = 0; k < 10; k++)
        cr_assert_eq(count[k], 1000);
    lipc_dataset_free(&ds);
}
