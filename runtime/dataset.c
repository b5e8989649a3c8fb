/* runtime/dataset.c: datasets in memory, from IDX files, CIFAR binary files or
 * a generator.
 *
 * Every file is read through zlib's gzread, which reads gzip and plain files
 * alike, so "train-images-idx3-ubyte.gz" and its unpacked twin take one path.
 * The key idea is to trust nothing in a file: each header field is checked
 * against the bytes that follow it, and each failure names the file and the
 * byte where it happened ("truncated at byte N of M"), because a half-finished
 * download is the usual way a training run goes wrong before it starts. With a
 * limit only the first `limit` examples are read (quick runs on real data); the
 * part that is read is checked all the same.
 */
#include "runtime/internal.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

/* ---- a checked reader over gzread ------------------------------------------ */

typedef struct src {
    gzFile f;
    lipc_loc loc;
    uint64_t pos;           /* uncompressed bytes read so far */
    bool gz_cut;            /* the gzip stream ended in the middle */
} src;

static lipc_status src_open(src *s, const char *path, lipc_diags *d)
{
    memset(s, 0, sizeof *s);
    s->loc = lipc_rt_loc(d, path);
    errno = 0;
    s->f = gzopen(path, "rb");
    if (!s->f) {
        if (errno == 0)         /* zlib could not allocate its state */
            return LIPC_ERR_NOMEM;
        lipc_diag_error(d, s->loc, "cannot open: %s", strerror(errno));
        return LIPC_ERR_IO;
    }
    gzbuffer(s->f, 1u << 17);
    return LIPC_OK;
}

static void src_close(src *s)
{
    if (s->f)
        gzclose(s->f);
    s->f = NULL;
}

/* Reads up to n bytes; *got < n only at the end of the data. Read errors and
 * corrupt compressed data are reported here; a gzip stream cut short is left
 * to the caller (it reads as a short file, and sets gz_cut for a note). */
static lipc_status src_read(src *s, void *buf, size_t n, size_t *got, lipc_diags *d)
{
    size_t done = 0;
    while (done < n) {
        size_t want = n - done;
        unsigned chunk = want > (1u << 30) ? (1u << 30) : (unsigned)want;
        int r = gzread(s->f, (char *)buf + done, chunk);
        if (r < 0) {
            int err;
            const char *msg = gzerror(s->f, &err);
            *got = done;
            if (err == Z_MEM_ERROR)
                return LIPC_ERR_NOMEM;
            if (err == Z_ERRNO) {
                lipc_diag_error(d, s->loc, "read error at byte %llu: %s",
                                (unsigned long long)(s->pos + done), strerror(errno));
                return LIPC_ERR_IO;
            }
            lipc_diag_error(d, s->loc, "corrupt gzip data near byte %llu: %s",
                            (unsigned long long)(s->pos + done), msg);
            return LIPC_ERR_INPUT;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    if (done < n) {
        int err;
        gzerror(s->f, &err);
        s->gz_cut = err == Z_BUF_ERROR;
    }
    s->pos += done;
    *got = done;
    return LIPC_OK;
}

static void note_gz_cut(const src *s, lipc_diag_msg *m)
{
    if (s->gz_cut)
        lipc_diag_note(m, s->loc, "the gzip stream itself ends early: an incomplete download?");
}

/* ---- small helpers ---------------------------------------------------------- */

static char *join_path(const char *dir, const char *name)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    lipc_buf b;
    lipc_buf_init(&b);
    lipc_buf_printf(&b, "%.*s/%s", (int)len, dir, name);
    if (b.failed) {
        lipc_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static long keep_count(long n, long limit) { return limit > 0 && limit < n ? limit : n; }

void lipc_dataset_free(lipc_dataset *ds)
{
    lipc_free(ds->x);
    lipc_free(ds->y);
    lipc_free(ds->name);
    memset(ds, 0, sizeof *ds);
}

/* Allocates x and y for n examples of c x h x w. */
static lipc_status dataset_alloc(lipc_dataset *ds, int n, int c, int h, int w)
{
    ds->n = n;
    ds->c = c;
    ds->h = h;
    ds->w = w;
    size_t per = (size_t)c * (size_t)h * (size_t)w;
    ds->x = lipc_malloc(sizeof(float) * per * (size_t)(n > 0 ? n : 1));
    ds->y = lipc_malloc((size_t)(n > 0 ? n : 1));
    return ds->x && ds->y ? LIPC_OK : LIPC_ERR_NOMEM;
}

/* ---- IDX (MNIST, Fashion-MNIST) --------------------------------------------- */

/* IDX: a big-endian magic 0x0000TTDD (TT = 0x08: unsigned bytes, DD = number
 * of dimensions), DD big-endian 32-bit sizes, then the items row-major.
 * Images are 0x00000803 (n, rows, cols), labels 0x00000801 (n). */
#define IDX_IMAGES 0x00000803u
#define IDX_LABELS 0x00000801u

typedef struct idx_data {
    long n;             /* items the header declares */
    int rows, cols;     /* 1 x 1 for labels */
    long n_read;        /* items read: min(n, limit) */
    uint8_t *data;      /* [n_read, rows * cols] */
} idx_data;

static lipc_status idx_load(const char *path, bool images, long limit, idx_data *out,
                            lipc_diags *d)
{
    memset(out, 0, sizeof *out);
    const char *what = images ? "images" : "labels";
    uint32_t want = images ? IDX_IMAGES : IDX_LABELS;
    uint32_t other = images ? IDX_LABELS : IDX_IMAGES;
    int ndim = images ? 3 : 1;
    int hdr_len = 4 + 4 * ndim;

    src s;
    lipc_status st = src_open(&s, path, d);
    if (st != LIPC_OK)
        return st;
    uint8_t hdr[16];
    size_t got;
    if ((st = src_read(&s, hdr, 4, &got, d)) != LIPC_OK)
        goto done;
    st = LIPC_ERR_INPUT;
    if (got == 0) {
        lipc_diag_error(d, s.loc, "file is empty; expected IDX %s", what);
        goto done;
    }
    if (got < 4) {
        lipc_diag_error(d, s.loc, "truncated at byte %zu of the 4-byte IDX magic", got);
        goto done;
    }
    uint32_t magic = be32(hdr);
    if (magic == other) {
        lipc_diag_error(d, s.loc, "this is an IDX %s file (magic 0x%08x); expected %s (0x%08x)",
                        images ? "labels" : "images", magic, what, want);
        goto done;
    }
    if (magic != want) {
        lipc_diag_msg *m = lipc_diag_error(
            d, s.loc, "bad magic 0x%08x: not an IDX %s file (expected 0x%08x)", magic, what, want);
        if ((magic & 0xffffff00u) == 0x00000800u)
            lipc_diag_note(m, s.loc, "it is an IDX file of unsigned bytes with %u dimensions; "
                           "%s have %d", magic & 0xffu, what, ndim);
        goto done;
    }
    if ((st = src_read(&s, hdr + 4, (size_t)(4 * ndim), &got, d)) != LIPC_OK)
        goto done;
    st = LIPC_ERR_INPUT;
    if (got < (size_t)(4 * ndim)) {
        lipc_diag_msg *m = lipc_diag_error(d, s.loc, "truncated at byte %zu of the %d-byte IDX header",
                                           4 + got, hdr_len);
        note_gz_cut(&s, m);
        goto done;
    }
    uint32_t n = be32(hdr + 4);
    uint32_t rows = images ? be32(hdr + 8) : 1, cols = images ? be32(hdr + 12) : 1;
    if (n == 0) {
        lipc_diag_error(d, s.loc, "the header declares no %s", what);
        goto done;
    }
    if (n > INT_MAX) {
        lipc_diag_error(d, s.loc, "the header declares %u %s; at most %d are supported",
                        n, what, INT_MAX);
        goto done;
    }
    if (rows == 0 || cols == 0 || rows > 4096 || cols > 4096) {
        lipc_diag_error(d, s.loc, "the header declares %ux%u images; each side must be 1..4096",
                        rows, cols);
        goto done;
    }
    out->n = n;
    out->rows = (int)rows;
    out->cols = (int)cols;
    out->n_read = keep_count(n, limit);
    size_t item = (size_t)rows * cols;
    size_t bytes = (size_t)out->n_read * item;
    out->data = lipc_malloc(bytes);
    if (!out->data) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    if ((st = src_read(&s, out->data, bytes, &got, d)) != LIPC_OK)
        goto done;
    st = LIPC_ERR_INPUT;
    if (got < bytes) {
        lipc_buf decl;
        lipc_buf_init(&decl);
        lipc_buf_printf(&decl, "%u %s", n, what);
        if (images)
            lipc_buf_printf(&decl, " of %ux%u", rows, cols);
        lipc_diag_msg *m = lipc_diag_error(
            d, s.loc, "truncated at byte %llu of %llu (the header declares %s)",
            (unsigned long long)(hdr_len + got),
            (unsigned long long)(hdr_len + (uint64_t)n * item), lipc_buf_str(&decl));
        lipc_buf_free(&decl);
        note_gz_cut(&s, m);
        goto done;
    }
    if (out->n_read == out->n) {
        /* The whole file was read: nothing may follow the declared items. */
        uint8_t extra;
        if ((st = src_read(&s, &extra, 1, &got, d)) != LIPC_OK)
            goto done;
        st = LIPC_ERR_INPUT;
        if (got) {
            lipc_diag_error(d, s.loc, "unexpected data after byte %llu, where the %u %s "
                            "the header declares end", (unsigned long long)(s.pos - 1), n, what);
            goto done;
        }
    }
    st = LIPC_OK;
done:
    src_close(&s);
    if (st != LIPC_OK) {
        lipc_free(out->data);
        memset(out, 0, sizeof *out);
    }
    return st;
}

/* The file holding one part of an IDX split, if any: train-images-idx3-ubyte,
 * with or without .gz, and the spellings seen in the wild (t10k- or test-,
 * "images.idx3-ubyte"). Sets *oom (and returns NULL) when out of memory. */
static char *idx_find(const char *dir, lipc_split split, bool images, bool *oom)
{
    static const char *const train_prefix[] = {"train", NULL};
    static const char *const test_prefix[] = {"t10k", "test", NULL};
    static const char *const img_kind[] = {"images-idx3-ubyte", "images.idx3-ubyte", NULL};
    static const char *const lab_kind[] = {"labels-idx1-ubyte", "labels.idx1-ubyte", NULL};
    static const char *const suffix[] = {".gz", "", NULL};
    const char *const *prefix = split == LIPC_SPLIT_TRAIN ? train_prefix : test_prefix;
    const char *const *kind = images ? img_kind : lab_kind;
    for (int p = 0; prefix[p]; p++)
        for (int k = 0; kind[k]; k++)
            for (int x = 0; suffix[x]; x++) {
                char name[64];
                snprintf(name, sizeof name, "%s-%s%s", prefix[p], kind[k], suffix[x]);
                char *path = join_path(dir, name);
                if (!path) {
                    *oom = true;
                    return NULL;
                }
                if (is_file(path))
                    return path;
                lipc_free(path);
            }
    return NULL;
}

static bool idx_present(const char *dir, bool *oom)
{
    for (int s = 0; s < 2; s++)
        for (int im = 0; im < 2; im++) {
            char *p = idx_find(dir, (lipc_split)s, im, oom);
            if (p) {
                lipc_free(p);
                return true;
            }
        }
    return false;
}

static lipc_status load_idx(const char *dir, lipc_split split, long limit, lipc_dataset *out,
                            lipc_diags *d)
{
    const char *sname = split == LIPC_SPLIT_TRAIN ? "train" : "t10k";
    bool oom = false;
    char *img_path = idx_find(dir, split, true, &oom);
    char *lab_path = idx_find(dir, split, false, &oom);
    lipc_status st = LIPC_OK;
    idx_data im = {0}, lab = {0};
    if (oom) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    if (!img_path || !lab_path) {
        lipc_diag_msg *m = lipc_diag_error(
            d, lipc_rt_loc(d, dir), "missing %s-%s-ubyte[.gz]: this IDX dataset has no %s %s",
            sname, img_path ? "labels-idx1" : "images-idx3",
            split == LIPC_SPLIT_TRAIN ? "training" : "test", img_path ? "labels" : "images");
        lipc_diag_note(m, LIPC_NO_LOC, "an IDX dataset needs train-images-idx3-ubyte, "
                       "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                       "t10k-labels-idx1-ubyte, each optionally gzipped (.gz)");
        st = LIPC_ERR_IO;
        goto done;
    }
    /* Read both files even when the first is bad, so one run reports both. */
    lipc_status st_im = idx_load(img_path, true, limit, &im, d);
    lipc_status st_lab = idx_load(lab_path, false, limit, &lab, d);
    if (st_im == LIPC_ERR_NOMEM || st_lab == LIPC_ERR_NOMEM) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    if (st_im != LIPC_OK || st_lab != LIPC_OK) {
        st = st_im != LIPC_OK ? st_im : st_lab;
        goto done;
    }
    if (im.n != lab.n) {
        lipc_diag_error(d, lipc_rt_loc(d, lab_path),
                        "image count mismatch: %s has %ld images but this file has %ld labels",
                        img_path, im.n, lab.n);
        st = LIPC_ERR_INPUT;
        goto done;
    }
    /* MNIST and Fashion-MNIST both have 10 classes; IDX itself does not say. */
    const int classes = 10;
    long bad = 0, first_bad = -1;
    for (long i = 0; i < lab.n_read; i++)
        if (lab.data[i] >= classes && bad++ == 0)
            first_bad = i;
    if (bad) {
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, lab_path),
                                           "label %d out of range for %d classes (example %ld)",
                                           lab.data[first_bad], classes, first_bad);
        if (bad > 1)
            lipc_diag_note(m, LIPC_NO_LOC, "%ld labels in all are out of range", bad);
        st = LIPC_ERR_INPUT;
        goto done;
    }
    if ((st = dataset_alloc(out, (int)im.n_read, 1, im.rows, im.cols)) != LIPC_OK)
        goto done;
    out->classes = classes;
    size_t total = (size_t)im.n_read * (size_t)im.rows * (size_t)im.cols;
    for (size_t i = 0; i < total; i++)
        out->x[i] = (float)im.data[i] * (1.0f / 255.0f);
    memcpy(out->y, lab.data, (size_t)lab.n_read);
done:
    lipc_free(im.data);
    lipc_free(lab.data);
    lipc_free(img_path);
    lipc_free(lab_path);
    return st;
}

/* ---- CIFAR-10 / CIFAR-100 binary ------------------------------------------- */

/* Each record: label byte(s), then 3072 pixel bytes: the 32x32 red plane, then
 * green, then blue, each row-major; that is already [c, h, w]. CIFAR-100 has
 * two label bytes, coarse (20 classes) then fine (100 classes); we use fine. */
typedef struct cifar_fmt {
    const char *title;          /* "CIFAR-10" */
    const char *name;           /* "cifar10" */
    int label_bytes;
    int classes;                /* of the label used (the last label byte) */
    int coarse_classes;         /* CIFAR-100's first label byte; 0: none */
} cifar_fmt;

static const cifar_fmt cifar10_fmt = {"CIFAR-10", "cifar10", 1, 10, 0};
static const cifar_fmt cifar100_fmt = {"CIFAR-100", "cifar100", 2, 100, 20};
#define CIFAR_PIXELS 3072

/* Makes room for `more` examples in ds (x, y grow geometrically). */
static lipc_status cifar_reserve(lipc_dataset *ds, long *cap, long more)
{
    if (ds->n + more <= *cap)
        return LIPC_OK;
    long want = *cap * 2 > ds->n + more ? *cap * 2 : ds->n + more;
    float *x = lipc_realloc(ds->x, sizeof(float) * CIFAR_PIXELS * (size_t)want);
    if (!x)
        return LIPC_ERR_NOMEM;
    ds->x = x;
    uint8_t *y = lipc_realloc(ds->y, (size_t)want);
    if (!y)
        return LIPC_ERR_NOMEM;
    ds->y = y;
    *cap = want;
    return LIPC_OK;
}

/* Appends the records of one file to ds, at most `left` of them (<= 0: all). */
static lipc_status cifar_load_file(const char *path, const cifar_fmt *fmt, long left,
                                   lipc_dataset *ds, long *cap, lipc_diags *d)
{
    enum { CHUNK = 256 };
    const int rec = fmt->label_bytes + CIFAR_PIXELS;
    src s;
    lipc_status st = src_open(&s, path, d);
    if (st != LIPC_OK)
        return st;
    uint8_t *buf = lipc_malloc((size_t)rec * CHUNK);
    if (!buf) {
        src_close(&s);
        return LIPC_ERR_NOMEM;
    }
    long records = 0, bad = 0, first_bad = -1;
    int bad_label = 0;
    bool bad_coarse = false;
    for (;;) {
        long k = CHUNK;
        if (left > 0 && left - records < k)
            k = left - records;
        if (k == 0)
            break;
        size_t got;
        if ((st = src_read(&s, buf, (size_t)rec * (size_t)k, &got, d)) != LIPC_OK)
            goto done;
        long full = (long)(got / (size_t)rec);
        if ((st = cifar_reserve(ds, cap, full)) != LIPC_OK)
            goto done;
        for (long r = 0; r < full; r++) {
            const uint8_t *p = buf + (size_t)r * (size_t)rec;
            int label = p[fmt->label_bytes - 1];
            bool coarse_bad = fmt->coarse_classes && p[0] >= fmt->coarse_classes;
            if ((label >= fmt->classes || coarse_bad) && bad++ == 0) {
                first_bad = records + r;
                bad_coarse = label < fmt->classes;
                bad_label = bad_coarse ? p[0] : label;
            }
            float *x = ds->x + (size_t)ds->n * CIFAR_PIXELS;
            for (int i = 0; i < CIFAR_PIXELS; i++)
                x[i] = (float)p[fmt->label_bytes + i] * (1.0f / 255.0f);
            ds->y[ds->n++] = (uint8_t)label;
        }
        records += full;
        if (got % (size_t)rec != 0) {
            lipc_diag_msg *m = lipc_diag_error(
                d, s.loc, "truncated at byte %llu of %llu: record %ld is incomplete "
                "(%s records are %d bytes: %d label byte%s, then %d pixel bytes)",
                (unsigned long long)s.pos, (unsigned long long)(records + 1) * (unsigned)rec,
                records, fmt->title, rec, fmt->label_bytes, fmt->label_bytes > 1 ? "s" : "",
                CIFAR_PIXELS);
            note_gz_cut(&s, m);
            st = LIPC_ERR_INPUT;
            goto done;
        }
        if (got < (size_t)rec * (size_t)k)
            break;              /* end of file */
    }
    if (records == 0 && s.pos == 0) {
        lipc_diag_error(d, s.loc, "file is empty; expected %s records of %d bytes", fmt->title,
                        rec);
        st = LIPC_ERR_INPUT;
        goto done;
    }
    if (bad) {
        lipc_diag_msg *m;
        if (bad_coarse)
            m = lipc_diag_error(d, s.loc, "coarse label %d out of range for %d classes (record %ld)",
                                bad_label, fmt->coarse_classes, first_bad);
        else
            m = lipc_diag_error(d, s.loc, "label %d out of range for %d classes (record %ld)",
                                bad_label, fmt->classes, first_bad);
        if (bad > 1)
            lipc_diag_note(m, LIPC_NO_LOC, "%ld records of this file have a label out of range",
                           bad);
        st = LIPC_ERR_INPUT;
    }
done:
    lipc_free(buf);
    src_close(&s);
    return st;
}

static bool cifar_present(const char *dir, const cifar_fmt *fmt, bool *oom)
{
    const char *const names10[] = {"data_batch_1.bin", "test_batch.bin", NULL};
    const char *const names100[] = {"train.bin", "test.bin", NULL};
    const char *const *names = fmt == &cifar10_fmt ? names10 : names100;
    for (int i = 0; names[i]; i++) {
        char *p = join_path(dir, names[i]);
        bool ok = p && is_file(p);
        *oom = *oom || !p;
        lipc_free(p);
        if (ok)
            return true;
    }
    return false;
}

static lipc_status load_cifar(const char *dir, const cifar_fmt *fmt, lipc_split split,
                              long limit, lipc_dataset *out, lipc_diags *d)
{
    const char *files[6];
    int n_files = 0;
    if (fmt == &cifar10_fmt && split == LIPC_SPLIT_TRAIN) {
        static const char *const batches[] = {"data_batch_1.bin", "data_batch_2.bin",
                                              "data_batch_3.bin", "data_batch_4.bin",
                                              "data_batch_5.bin"};
        for (int i = 0; i < 5; i++)
            files[n_files++] = batches[i];
    } else if (fmt == &cifar10_fmt) {
        files[n_files++] = "test_batch.bin";
    } else {
        files[n_files++] = split == LIPC_SPLIT_TRAIN ? "train.bin" : "test.bin";
    }

    char *paths[6] = {0};
    lipc_status st = LIPC_OK;
    long cap = 0;
    for (int i = 0; i < n_files; i++) {
        if (!(paths[i] = join_path(dir, files[i]))) {
            st = LIPC_ERR_NOMEM;
            goto done;
        }
        if (!is_file(paths[i])) {
            lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, dir), "missing %s: this %s "
                                               "dataset has no %s split", files[i], fmt->title,
                                               split == LIPC_SPLIT_TRAIN ? "training" : "test");
            if (fmt == &cifar10_fmt)
                lipc_diag_note(m, LIPC_NO_LOC, "the CIFAR-10 binary version has data_batch_1.bin "
                               "... data_batch_5.bin and test_batch.bin");
            else
                lipc_diag_note(m, LIPC_NO_LOC, "the CIFAR-100 binary version has train.bin "
                               "and test.bin");
            st = LIPC_ERR_IO;
        } else {
            /* Size the arrays from the plain files' sizes: one allocation for
             * the usual unpacked dataset; gzipped files grow them. */
            struct stat sb;
            if (stat(paths[i], &sb) == 0)
                cap += (long)(sb.st_size / (fmt->label_bytes + CIFAR_PIXELS));
        }
    }
    if (st != LIPC_OK)
        goto done;
    cap = keep_count(cap, limit);
    if (cap < 1)
        cap = 1;
    out->x = lipc_malloc(sizeof(float) * CIFAR_PIXELS * (size_t)cap);
    out->y = lipc_malloc((size_t)cap);
    if (!out->x || !out->y) {
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    out->c = 3;
    out->h = out->w = 32;
    out->classes = fmt->classes;
    for (int i = 0; i < n_files; i++) {
        long left = limit > 0 ? limit - out->n : 0;
        if (limit > 0 && left <= 0)
            break;
        lipc_status s1 = cifar_load_file(paths[i], fmt, left, out, &cap, d);
        if (s1 == LIPC_ERR_NOMEM) {
            st = s1;
            goto done;
        }
        if (st == LIPC_OK)
            st = s1;    /* keep going: report every bad file in one run */
    }
done:
    for (int i = 0; i < n_files; i++)
        lipc_free(paths[i]);
    return st;
}

/* ---- the synthetic dataset ------------------------------------------------- */

/* A small, deterministic, learnable set for tests: 1x8x8 images in 4 classes,
 *   0: a horizontal bar (2 rows)       1: a vertical bar (2 columns)
 *   2: the main diagonal (3 wide)      3: the border of a 6x6 square
 * each shifted by -1, 0 or +1 pixel in y and x, drawn at a random brightness
 * a ~ U[0.6, 0.9] over a background of 0.1, plus N(0, 0.08^2) pixel noise,
 * clipped to [0, 1]: x = clip(0.1 + a * pattern + noise). Labels are uniform.
 * Example i is the i-th draw of one xoshiro stream with a fixed seed per split,
 * so synthetic:100 is a prefix of synthetic:1000, and a limit keeps a prefix.
 * The classes stay far apart in l2 (each pattern covers 12-20 pixels), so a
 * small Lipschitz model learns them with a certifiable margin. */
#define SYN_SIDE 8
#define SYN_CLASSES 4

static float syn_pattern(int cls, int y, int x, int sy, int sx)
{
    int yy = y - sy, xx = x - sx;   /* coordinates in the unshifted pattern */
    switch (cls) {
    case 0: return yy == 3 || yy == 4;
    case 1: return xx == 3 || xx == 4;
    case 2: return abs(yy - xx) <= 1;
    default:
        return (yy == 1 || yy == 6) && xx >= 1 && xx <= 6 ? 1.0f
             : (xx == 1 || xx == 6) && yy >= 1 && yy <= 6 ? 1.0f : 0.0f;
    }
}

static lipc_status load_synthetic(long n_train, lipc_split split, long limit,
                                  lipc_dataset *out)
{
    long n = split == LIPC_SPLIT_TRAIN ? n_train : (n_train + 3) / 4;
    n = keep_count(n, limit);
    lipc_status st = dataset_alloc(out, (int)n, 1, SYN_SIDE, SYN_SIDE);
    if (st != LIPC_OK)
        return st;
    out->classes = SYN_CLASSES;
    lipc_rng r;
    lipc_rng_seed(&r, split == LIPC_SPLIT_TRAIN ? 0x53594e5448455431ull : 0x53594e5448455432ull);
    for (long i = 0; i < n; i++) {
        int cls = (int)(lipc_rng_next(&r) >> 62);          /* top 2 bits: 0..3 */
        int sy = (int)(lipc_rng_next(&r) % 3) - 1;
        int sx = (int)(lipc_rng_next(&r) % 3) - 1;
        double a = 0.6 + 0.3 * lipc_rng_uniform(&r);
        float *x = out->x + (size_t)i * SYN_SIDE * SYN_SIDE;
        for (int y = 0; y < SYN_SIDE; y++)
            for (int xx = 0; xx < SYN_SIDE; xx++) {
                double v = 0.1 + a * syn_pattern(cls, y, xx, sy, sx) + 0.08 * lipc_rng_normal(&r);
                x[y * SYN_SIDE + xx] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
            }
        out->y[i] = (uint8_t)cls;
    }
    return LIPC_OK;
}

/* ---- names, paths and format detection ------------------------------------ */

static const char *const known_names[] = {"fashion-mnist", "mnist", "cifar10", "cifar100",
                                          "synthetic", NULL};

typedef enum data_format {
    FMT_NONE,
    FMT_IDX,
    FMT_CIFAR10,
    FMT_CIFAR100,
} data_format;

/* The format of the files in dir; *where is dir, or the subdirectory the
 * CIFAR archives unpack into (allocated). Sets *oom when out of memory. */
static data_format detect(const char *dir, char **where, bool *oom)
{
    static const char *const subdirs[] = {"cifar-10-batches-bin", "cifar-100-binary", NULL};
    *where = NULL;
    data_format f = FMT_NONE;
    if (idx_present(dir, oom))
        f = FMT_IDX;
    else if (cifar_present(dir, &cifar10_fmt, oom))
        f = FMT_CIFAR10;
    else if (cifar_present(dir, &cifar100_fmt, oom))
        f = FMT_CIFAR100;
    if (*oom)
        return FMT_NONE;
    if (f != FMT_NONE) {
        *where = lipc_strdup(dir);
        *oom = !*where;
        return *oom ? FMT_NONE : f;
    }
    for (int i = 0; subdirs[i]; i++) {
        char *sub = join_path(dir, subdirs[i]);
        if (!sub) {
            *oom = true;
            return FMT_NONE;
        }
        if (is_dir(sub))
            f = detect(sub, where, oom);
        lipc_free(sub);
        if (f != FMT_NONE || *oom)
            return f;
    }
    return FMT_NONE;
}

/* IDX does not say which dataset it holds; a directory whose path mentions
 * "fashion" is Fashion-MNIST, anything else is treated as digits (the safer
 * guess: it turns horizontal flips off). */
static const char *idx_name(const char *dir)
{
    for (const char *p = dir; *p; p++)
        if (strncmp(p, "fashion", 7) == 0 || strncmp(p, "Fashion", 7) == 0 ||
            strncmp(p, "FASHION", 7) == 0)
            return "fashion-mnist";
    return "mnist";
}

static lipc_status load_dir(const char *dir, const char *name, lipc_split split, long limit,
                            lipc_dataset *out, lipc_diags *d)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        int err = errno;
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, dir), "cannot open dataset directory: %s",
                                           strerror(err));
        if (!strchr(dir, '/'))
            lipc_diag_hint(m, "known dataset names: fashion-mnist, mnist, cifar10, cifar100, "
                           "synthetic[:N]");
        return LIPC_ERR_IO;
    }
    if (!S_ISDIR(sb.st_mode)) {
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, dir), "not a directory: a dataset is "
                                           "given as the directory that holds its files");
        const char *slash = strrchr(dir, '/');
        if (slash)
            lipc_diag_hint(m, "try %.*s", (int)(slash - dir > 0 ? slash - dir : 1), dir);
        return LIPC_ERR_INPUT;
    }
    char *where = NULL;
    bool oom = false;
    data_format f = detect(dir, &where, &oom);
    lipc_status st;
    if (oom)
        return LIPC_ERR_NOMEM;
    if (f == FMT_NONE) {
        lipc_diag_msg *m = lipc_diag_error(d, lipc_rt_loc(d, dir), "no dataset files found here");
        lipc_diag_note(m, LIPC_NO_LOC, "expected IDX files (train-images-idx3-ubyte, "
                       "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
                       "optionally .gz)");
        lipc_diag_note(m, LIPC_NO_LOC, "or the CIFAR-10 binary version (data_batch_1.bin ... "
                       "data_batch_5.bin, test_batch.bin)");
        lipc_diag_note(m, LIPC_NO_LOC, "or the CIFAR-100 binary version (train.bin, test.bin)");
        return LIPC_ERR_INPUT;
    }
    const char *detected;
    switch (f) {
    case FMT_IDX:
        st = load_idx(where, split, limit, out, d);
        detected = name ? name : idx_name(where);
        break;
    case FMT_CIFAR10:
        st = load_cifar(where, &cifar10_fmt, split, limit, out, d);
        detected = cifar10_fmt.name;
        break;
    default:
        st = load_cifar(where, &cifar100_fmt, split, limit, out, d);
        detected = cifar100_fmt.name;
        break;
    }
    if (st == LIPC_OK && !(out->name = lipc_strdup(detected)))
        st = LIPC_ERR_NOMEM;
    lipc_free(where);
    return st;
}

/* The directories searched for a dataset given by name. */
static int name_dirs(const char *name, char **dirs, int max)
{
    int n = 0;
    const char *env = getenv("LIPC_DATA_DIR");
    /* An explicit choice first, then where Debian's dataset packages install,
     * then a project-local data/ folder. */
    const char *roots[] = {env && *env ? env : NULL, "/usr/share/datasets",
                           "/usr/local/share/datasets", "data"};
    for (int i = 0; i < 4 && n < max; i++)
        if (roots[i])
            dirs[n++] = join_path(roots[i], name);
    return n;
}

static lipc_status load_named(const char *name, lipc_split split, long limit,
                              lipc_dataset *out, lipc_diags *d)
{
    char *dirs[4] = {0};
    int n = name_dirs(name, dirs, 4);
    lipc_status st = LIPC_ERR_IO;
    bool found = false;
    for (int i = 0; i < n; i++) {
        if (!dirs[i]) {
            st = LIPC_ERR_NOMEM;
            goto done;
        }
        if (!found && is_dir(dirs[i])) {
            found = true;
            st = load_dir(dirs[i], name, split, limit, out, d);
        }
    }
    if (!found) {
        lipc_diag_msg *m = lipc_diag_error(d, LIPC_NO_LOC, "dataset '%s' not found", name);
        for (int i = 0; i < n; i++)
            lipc_diag_note(m, LIPC_NO_LOC, "looked in %s", dirs[i]);
        if (strncmp(name, "cifar", 5) == 0)
            lipc_diag_hint(m, "download the %s binary version from "
                           "https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and pass "
                           "--data PATH (the directory with the .bin files)",
                           strcmp(name, "cifar10") == 0 ? "CIFAR-10" : "CIFAR-100");
        else
            lipc_diag_hint(m, "pass --data PATH, a directory with train-images-idx3-ubyte.gz, "
                           "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                           "t10k-labels-idx1-ubyte.gz%s",
                           strcmp(name, "fashion-mnist") == 0
                               ? " (Debian: apt install dataset-fashion-mnist)" : "");
        st = LIPC_ERR_IO;
    }
done:
    for (int i = 0; i < n; i++)
        lipc_free(dirs[i]);
    return st;
}

static bool is_known_name(const char *s)
{
    for (int i = 0; known_names[i]; i++)
        if (strcmp(s, known_names[i]) == 0)
            return true;
    return false;
}

/* "synthetic" or "synthetic:N"; false when spec is neither. */
static bool synthetic_spec(const char *spec, long *n, bool *ok)
{
    *ok = true;
    *n = 1024;
    if (strcmp(spec, "synthetic") == 0)
        return true;
    if (strncmp(spec, "synthetic:", 10) != 0)
        return false;
    const char *p = spec + 10;
    char *end;
    errno = 0;
    long v = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1;
    *ok = v >= 1 && v <= 10000000 && errno == 0 && *end == '\0';
    *n = v;
    return true;
}

lipc_status lipc_dataset_load(const char *spec, lipc_split split, long limit,
                              lipc_dataset *out, lipc_diags *d)
{
    memset(out, 0, sizeof *out);
    lipc_status st;
    long n_syn;
    bool syn_ok;
    if (synthetic_spec(spec, &n_syn, &syn_ok)) {
        if (!syn_ok) {
            lipc_diag_error(d, LIPC_NO_LOC, "bad dataset '%s': N in synthetic:N must be an "
                            "integer in 1..10000000", spec);
            return LIPC_ERR_INPUT;
        }
        st = load_synthetic(n_syn, split, limit, out);
        if (st == LIPC_OK && !(out->name = lipc_strdup("synthetic")))
            st = LIPC_ERR_NOMEM;
    } else if (is_known_name(spec)) {
        st = load_named(spec, split, limit, out, d);
    } else if (!strchr(spec, '/') && !is_dir(spec)) {
        lipc_diag_msg *m = lipc_diag_error(d, LIPC_NO_LOC, "unknown dataset '%s'", spec);
        const char *near = lipc_closest_word(spec, known_names);
        if (near)
            lipc_diag_hint(m, "did you mean '%s'? Or give the directory that holds the files",
                           near);
        else
            lipc_diag_hint(m, "known datasets: fashion-mnist, mnist, cifar10, cifar100, "
                           "synthetic[:N]; or give the directory that holds the files");
        return LIPC_ERR_INPUT;
    } else {
        st = load_dir(spec, NULL, split, limit, out, d);
    }
    if (st != LIPC_OK)
        lipc_dataset_free(out);
    return st;
}

/* ---- splitting --------------------------------------------------------------- */

static lipc_status copy_range(const lipc_dataset *all, int from, int n, lipc_dataset *out)
{
    lipc_status st = dataset_alloc(out, n, all->c, all->h, all->w);
    size_t per = (size_t)all->c * (size_t)all->h * (size_t)all->w;
    out->classes = all->classes;
    if (st == LIPC_OK && !(out->name = lipc_strdup(all->name ? all->name : "")))
        st = LIPC_ERR_NOMEM;
    if (st != LIPC_OK) {
        lipc_dataset_free(out);
        return st;
    }
    if (n > 0) {
        memcpy(out->x, all->x + (size_t)from * per, sizeof(float) * per * (size_t)n);
        memcpy(out->y, all->y + from, (size_t)n);
    }
    return LIPC_OK;
}

lipc_status lipc_dataset_split(const lipc_dataset *all, int n_hold, lipc_dataset *train,
                               lipc_dataset *val)
{
    memset(train, 0, sizeof *train);
    memset(val, 0, sizeof *val);
    if (n_hold < 0 || n_hold > all->n)
        return LIPC_ERR_INPUT;
    lipc_status st = copy_range(all, 0, all->n - n_hold, train);
    if (st == LIPC_OK && (st = copy_range(all, all->n - n_hold, n_hold, val)) != LIPC_OK)
        lipc_dataset_free(train);
    return st;
}
