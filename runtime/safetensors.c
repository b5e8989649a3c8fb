/* runtime/safetensors.c: checkpoints in the safetensors format.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON naming
 * each tensor's dtype, shape and [begin, end) byte range in the data region
 * that follows (padded with spaces to a multiple of 8), then the data. It is
 * what PyTorch, JAX and numpy users load, so a lipc checkpoint can be
 * inspected or fine-tuned elsewhere.
 *
 * Two key ideas. Writing is atomic: the file is written under a temporary
 * name in the same directory, fsync'ed, and renamed over the old one (rename
 * within a file system is atomic in POSIX), so a crash mid-save never destroys
 * the last good checkpoint. Reading trusts nothing: the header's length, JSON,
 * dtypes, shapes and offsets are all checked, and the tensors must tile the
 * data region exactly (no overlap, no hole, nothing after), as the reference
 * implementation requires, before any byte of data is used.
 */
#include "runtime/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation's limit on the header: larger is an attack or
 * not a safetensors file. */
#define ST_MAX_HEADER 100000000ull

static const char *const dtype_names[] = {"F32", "F64", "I64", "U8"};
static const size_t dtype_sizes[] = {4, 8, 8, 1};

/* Standard safetensors dtypes lipc does not read: named in the error. */
static const char *const foreign_dtypes[] = {"F16", "BF16", "F8_E4M3", "F8_E5M2", "I8", "I16",
                                             "I32", "U16", "U32", "U64", "BOOL", NULL};

const char *lipc_st_dtype_name(lipc_st_dtype t)
{
    LIPC_ASSERT((unsigned)t < 4);
    return dtype_names[t];
}

size_t lipc_st_dtype_size(lipc_st_dtype t)
{
    LIPC_ASSERT((unsigned)t < 4);
    return dtype_sizes[t];
}

static bool host_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Elements of a shape; false on overflow past 2^62. */
static bool shape_numel(int rank, const int64_t *dims, uint64_t *numel)
{
    uint64_t n = 1;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 0)
            return false;
        uint64_t v = (uint64_t)dims[i];
        if (v != 0 && n > (UINT64_C(1) << 62) / v)
            return false;
        n *= v;
    }
    *numel = n;
    return true;
}

static void shape_str(lipc_buf *b, int rank, const int64_t *dims)
{
    lipc_buf_putc(b, '[');
    for (int i = 0; i < rank; i++)
        lipc_buf_printf(b, "%s%lld", i ? ", " : "", (long long)dims[i]);
    lipc_buf_putc(b, ']');
}

/* ---- writing ------------------------------------------------------------------- */

/* Data layout order: larger elements first (so every tensor starts aligned to
 * its element size), then by name (so the file does not depend on the order of
 * the caller's list). */
static int by_layout(const void *a, const void *b)
{
    const lipc_st_tensor *x = *(const lipc_st_tensor *const *)a;
    const lipc_st_tensor *y = *(const lipc_st_tensor *const *)b;
    size_t sx = dtype_sizes[x->dtype], sy = dtype_sizes[y->dtype];
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Builds the padded header for tensors in layout order `ord`. */
static lipc_status build_header(const lipc_st_tensor *const *ord, int n,
                                const lipc_st_meta *meta, int n_meta, char **out, size_t *len)
{
    *out = NULL;
    json_t *root = json_object();
    if (!root)
        return LIPC_ERR_NOMEM;
    uint64_t off = 0;
    bool ok = true;
    for (int k = 0; k < n && ok; k++) {
        const lipc_st_tensor *x = ord[k];
        uint64_t numel = 0;
        shape_numel(x->rank, x->dims, &numel);     /* checked by the caller */
        uint64_t nb = numel * dtype_sizes[x->dtype];
        json_t *shape = json_array();
        json_t *offs = json_array();
        json_t *e = json_object();
        ok = shape && offs && e;
        for (int i = 0; ok && i < x->rank; i++)
            ok = json_array_append_new(shape, json_integer(x->dims[i])) == 0;
        ok = ok && json_array_append_new(offs, json_integer((json_int_t)off)) == 0 &&
             json_array_append_new(offs, json_integer((json_int_t)(off + nb))) == 0 &&
             json_object_set_new(e, "dtype", json_string(dtype_names[x->dtype])) == 0;
        if (ok) {
            ok = json_object_set_new(e, "shape", shape) == 0;
            shape = NULL;
            ok = json_object_set_new(e, "data_offsets", offs) == 0 && ok;
            offs = NULL;
            ok = json_object_set_new(root, x->name, e) == 0 && ok;
            e = NULL;
        }
        json_decref(shape);
        json_decref(offs);
        json_decref(e);
        off += nb;
    }
    if (ok && n_meta > 0) {
        json_t *m = json_object();
        ok = m != NULL;
        for (int i = 0; ok && i < n_meta; i++)
            ok = json_object_set_new(m, meta[i].key, json_string(meta[i].value)) == 0;
        if (ok)
            ok = json_object_set_new(root, "__metadata__", m) == 0;
        else
            json_decref(m);
    }
    char *text = ok ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (!text)
        return LIPC_ERR_NOMEM;
    size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
    char *h = lipc_malloc(padded + 1);
    if (!h) {
        free(text);             /* jansson's allocation */
        return LIPC_ERR_NOMEM;
    }
    memcpy(h, text, tl);
    memset(h + tl, ' ', padded - tl);
    h[padded] = '\0';
    free(text);
    *out = h;
    *len = padded;
    return LIPC_OK;
}

/* JSON strings must be UTF-8 (jansson refuses others): checked up front so
 * the caller hears about the name, not about a failed allocation. */
static bool utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int extra = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
                  : (*p & 0xf8) == 0xf0 ? 3 : -1;
        if (extra < 0 || (extra == 1 && *p < 0xc2))
            return false;
        p++;
        for (int i = 0; i < extra; i++, p++)
            if ((*p & 0xc0) != 0x80)
                return false;
    }
    return true;
}

/* Checks the caller's list: names non-empty, unique, not the metadata key;
 * shapes sane; metadata keys unique. */
static bool check_tensors(const lipc_st_tensor *const *by_name, int n,
                          const lipc_st_meta *meta, int n_meta, lipc_loc loc, lipc_diags *d)
{
    bool ok = true;
    for (int k = 0; k < n; k++) {
        const lipc_st_tensor *x = by_name[k];
        uint64_t numel = 0;
        LIPC_ASSERT((unsigned)x->dtype < 4);
        if (!x->name || !*x->name || strcmp(x->name, "__metadata__") == 0 || !utf8_ok(x->name)) {
            lipc_diag_error(d, loc, "cannot save a tensor named '%s'", x->name ? x->name : "");
            ok = false;
        } else if (k > 0 && strcmp(by_name[k - 1]->name, x->name) == 0) {
            lipc_diag_error(d, loc, "two tensors are named '%s'", x->name);
            ok = false;
        } else if (x->rank < 0 || x->rank > LIPC_ST_MAX_RANK ||
                   !shape_numel(x->rank, x->dims, &numel) ||
                   (numel > 0 && !x->data)) {
            lipc_diag_error(d, loc, "tensor '%s' has an invalid shape or no data", x->name);
            ok = false;
        }
    }
    for (int i = 0; i < n_meta; i++) {
        if (!utf8_ok(meta[i].key) || !utf8_ok(meta[i].value) ||
            strcmp(meta[i].key, "") == 0) {
            lipc_diag_error(d, loc, "metadata key '%s': keys must be non-empty and keys and "
                            "values UTF-8", meta[i].key);
            ok = false;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0) {
                lipc_diag_error(d, loc, "metadata key '%s' is given twice", meta[i].key);
                ok = false;
            }
    }
    return ok;
}

static int by_name_cmp(const void *a, const void *b)
{
    const lipc_st_tensor *x = *(const lipc_st_tensor *const *)a;
    const lipc_st_tensor *y = *(const lipc_st_tensor *const *)b;
    const char *nx = x->name ? x->name : "", *ny = y->name ? y->name : "";
    return strcmp(nx, ny);
}

/* Best effort: makes the rename itself durable. */
static void sync_parent_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    lipc_buf dir;
    lipc_buf_init(&dir);
    if (!slash)
        lipc_buf_puts(&dir, ".");
    else if (slash == path)
        lipc_buf_puts(&dir, "/");
    else
        lipc_buf_printf(&dir, "%.*s", (int)(slash - path), path);
    if (!dir.failed) {
        int fd = open(lipc_buf_str(&dir), O_RDONLY);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    lipc_buf_free(&dir);
}

lipc_status lipc_st_write(const char *path, const lipc_st_tensor *t, int n,
                          const lipc_st_meta *meta, int n_meta, lipc_diags *d)
{
    lipc_loc loc = lipc_rt_loc(d, path);
    if (!host_little_endian()) {
        lipc_diag_error(d, loc, "safetensors data is little-endian; this host is not");
        return LIPC_ERR_UNSUPPORTED;
    }
    lipc_status st = LIPC_OK;
    const lipc_st_tensor **ord = lipc_malloc(sizeof *ord * (size_t)(n > 0 ? n : 1));
    char *header = NULL, *tmp = NULL;
    FILE *f = NULL;
    if (!ord)
        return LIPC_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        ord[i] = &t[i];
    qsort(ord, (size_t)n, sizeof *ord, by_name_cmp);
    if (!check_tensors(ord, n, meta, n_meta, loc, d)) {
        st = LIPC_ERR_INPUT;
        goto done;
    }
    qsort(ord, (size_t)n, sizeof *ord, by_layout);
    size_t hlen;
    if ((st = build_header(ord, n, meta, n_meta, &header, &hlen)) != LIPC_OK)
        goto done;

    lipc_buf tb;
    lipc_buf_init(&tb);
    lipc_buf_printf(&tb, "%s.tmp-%ld", path, (long)getpid());
    if (tb.failed) {
        lipc_buf_free(&tb);
        st = LIPC_ERR_NOMEM;
        goto done;
    }
    tmp = tb.data;
    errno = 0;
    if (!(f = fopen(tmp, "wb"))) {
        lipc_diag_error(d, loc, "cannot create %s: %s", tmp, strerror(errno));
        st = LIPC_ERR_IO;
        goto done;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    bool ok = fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
    for (int k = 0; ok && k < n; k++) {
        const lipc_st_tensor *x = ord[k];
        uint64_t numel = 0;
        shape_numel(x->rank, x->dims, &numel);
        size_t nb = (size_t)numel * dtype_sizes[x->dtype];
        ok = nb == 0 || fwrite(x->data, 1, nb, f) == nb;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    f = NULL;
    if (!ok) {
        lipc_diag_error(d, loc, "cannot write %s: %s", tmp, strerror(err));
        st = LIPC_ERR_IO;
        goto done;
    }
    if (rename(tmp, path) != 0) {
        lipc_diag_error(d, loc, "cannot rename %s over this file: %s", tmp, strerror(errno));
        st = LIPC_ERR_IO;
        goto done;
    }
    lipc_free(tmp);
    tmp = NULL;                 /* renamed: nothing to remove */
    sync_parent_dir(path);
done:
    if (f)
        fclose(f);
    if (tmp) {
        /* The old checkpoint at path is untouched; drop the partial one. */
        remove(tmp);
        lipc_free(tmp);
    }
    lipc_free(header);
    lipc_free(ord);
    return st;
}

/* ---- reading ------------------------------------------------------------------- */

void lipc_st_free(lipc_st_file *f)
{
    for (int i = 0; i < f->n; i++)
        lipc_free((char *)f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        lipc_free((char *)f->meta[i].key);
        lipc_free((char *)f->meta[i].value);
    }
    lipc_free(f->tensors);
    lipc_free(f->meta);
    lipc_free(f->bytes);
    lipc_free(f->path);
    memset(f, 0, sizeof *f);
}

/* A tensor's byte range in the data region, for the tiling check. */
typedef struct span {
    uint64_t begin, end;
    int tensor;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const lipc_st_tensor *)a)->name, ((const lipc_st_tensor *)b)->name);
}

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(((const lipc_st_meta *)a)->key, ((const lipc_st_meta *)b)->key);
}

/* A non-negative JSON integer. */
static bool get_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Parses one tensor entry into x (name set by the caller); data_len is the
 * size of the data region. Returns false after a diagnostic. */
static bool parse_entry(const char *name, json_t *e, uint64_t data_len, lipc_st_tensor *x,
                        span *sp, lipc_loc loc, lipc_diags *d)
{
    if (!json_is_object(e)) {
        lipc_diag_error(d, loc, "header entry '%s' is not an object", name);
        return false;
    }
    const char *key;
    json_t *v;
    json_object_foreach(e, key, v) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets")) {
            lipc_diag_error(d, loc, "tensor '%s': unknown key '%s' (a tensor has dtype, shape "
                            "and data_offsets)", name, key);
            return false;
        }
    }
    json_t *dt = json_object_get(e, "dtype"), *shape = json_object_get(e, "shape"),
           *offs = json_object_get(e, "data_offsets");
    if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs)) {
        lipc_diag_error(d, loc, "tensor '%s': needs a string dtype, a shape array and a "
                        "data_offsets array", name);
        return false;
    }
    const char *dts = json_string_value(dt);
    int t = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(dts, dtype_names[i]) == 0)
            t = i;
    if (t < 0) {
        bool foreign = false;
        for (int i = 0; foreign_dtypes[i]; i++)
            foreign = foreign || strcmp(dts, foreign_dtypes[i]) == 0;
        if (foreign)
            lipc_diag_error(d, loc, "tensor '%s': dtype %s is not supported (lipc reads F32, "
                            "F64, I64 and U8)", name, dts);
        else
            lipc_diag_error(d, loc, "tensor '%s': unknown dtype '%s'", name, dts);
        return false;
    }
    x->dtype = (lipc_st_dtype)t;
    size_t rank = json_array_size(shape);
    if (rank > LIPC_ST_MAX_RANK) {
        lipc_diag_error(d, loc, "tensor '%s': rank %zu; lipc reads at most %d dimensions", name,
                        rank, LIPC_ST_MAX_RANK);
        return false;
    }
    x->rank = (int)rank;
    for (size_t i = 0; i < rank; i++) {
        uint64_t v64;
        if (!get_uint(json_array_get(shape, i), &v64) || v64 > (UINT64_C(1) << 62)) {
            lipc_diag_error(d, loc, "tensor '%s': shape entries must be non-negative integers",
                            name);
            return false;
        }
        x->dims[i] = (int64_t)v64;
    }
    uint64_t begin, end, numel;
    if (json_array_size(offs) != 2 || !get_uint(json_array_get(offs, 0), &begin) ||
        !get_uint(json_array_get(offs, 1), &end) || end < begin) {
        lipc_diag_error(d, loc, "tensor '%s': data_offsets must be [begin, end] with "
                        "0 <= begin <= end", name);
        return false;
    }
    lipc_buf sh;
    lipc_buf_init(&sh);
    shape_str(&sh, x->rank, x->dims);
    bool ok = true;
    if (!shape_numel(x->rank, x->dims, &numel) ||
        numel > (UINT64_C(1) << 62) / dtype_sizes[t] || numel * dtype_sizes[t] != end - begin) {
        lipc_diag_error(d, loc, "tensor '%s': shape %s of %s does not match data_offsets "
                        "[%llu, %llu] (%llu bytes)", name, lipc_buf_str(&sh), dts,
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)(end - begin));
        ok = false;
    } else if (end > data_len) {
        lipc_diag_error(d, loc, "tensor '%s': data_offsets [%llu, %llu] run past the end of the "
                        "data (%llu bytes): the file is truncated", name,
                        (unsigned long long)begin, (unsigned long long)end,
                        (unsigned long long)data_len);
        ok = false;
    }
    lipc_buf_free(&sh);
    sp->begin = begin;
    sp->end = end;
    x->nbytes = (size_t)(end - begin);
    return ok;
}

/* Reads the whole file into f->bytes. */
static lipc_status slurp(const char *path, lipc_st_file *f, lipc_loc loc, lipc_diags *d)
{
    errno = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        lipc_diag_error(d, loc, "cannot open: %s", strerror(errno));
        return LIPC_ERR_IO;
    }
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        lipc_diag_error(d, loc, "not a regular file");
        fclose(fp);
        return LIPC_ERR_IO;
    }
    f->len = (size_t)sb.st_size;
    f->bytes = lipc_malloc(f->len ? f->len : 1);
    if (!f->bytes) {
        fclose(fp);
        return LIPC_ERR_NOMEM;
    }
    size_t got = fread(f->bytes, 1, f->len, fp);
    int err = errno;
    bool bad = ferror(fp);
    fclose(fp);
    if (bad || got != f->len) {
        lipc_diag_error(d, loc, "read error at byte %zu of %zu: %s", got, f->len,
                        bad ? strerror(err) : "the file shrank while being read");
        return LIPC_ERR_IO;
    }
    return LIPC_OK;
}

lipc_status lipc_st_read(const char *path, lipc_st_file *f, lipc_diags *d)
{
    memset(f, 0, sizeof *f);
    lipc_loc loc = lipc_rt_loc(d, path);
    if (!host_little_endian()) {
        lipc_diag_error(d, loc, "safetensors data is little-endian; this host is not");
        return LIPC_ERR_UNSUPPORTED;
    }
    json_t *root = NULL;
    span *spans = NULL;
    lipc_status st;
    if (!(f->path = lipc_strdup(path))) {
        st = LIPC_ERR_NOMEM;
        goto fail;
    }
    if ((st = slurp(path, f, loc, d)) != LIPC_OK)
        goto fail;
    st = LIPC_ERR_INPUT;
    if (f->len == 0) {
        lipc_diag_error(d, loc, "file is empty");
        goto fail;
    }
    if (f->len < 8) {
        lipc_diag_error(d, loc, "truncated at byte %zu of the 8-byte header length", f->len);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)f->bytes[i] << (8 * i);
    if (hlen >= ST_MAX_HEADER) {
        lipc_diag_error(d, loc, "header length %llu is over the limit of %llu bytes: "
                        "not a safetensors file?", (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen < 2) {
        lipc_diag_error(d, loc, "header length %llu is too short for a JSON object",
                        (unsigned long long)hlen);
        goto fail;
    }
    if (8 + hlen > f->len) {
        lipc_diag_error(d, loc, "truncated at byte %zu of the %llu bytes that the header "
                        "length %llu needs", f->len, (unsigned long long)(8 + hlen),
                        (unsigned long long)hlen);
        goto fail;
    }
    json_error_t jerr;
    root = json_loadb((const char *)f->bytes + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        lipc_diag_error(d, loc, "invalid JSON header at header byte %d: %s", jerr.position,
                        jerr.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        lipc_diag_error(d, loc, "the JSON header is not an object");
        goto fail;
    }
    const uint8_t *data = f->bytes + 8 + hlen;
    uint64_t data_len = f->len - 8 - hlen;
    size_t n_keys = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    f->tensors = lipc_calloc(n_keys ? n_keys : 1, sizeof *f->tensors);
    spans = lipc_calloc(n_keys ? n_keys : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        st = LIPC_ERR_NOMEM;
        goto fail;
    }
    bool ok = true;
    if (meta) {
        if (!json_is_object(meta)) {
            lipc_diag_error(d, loc, "__metadata__ is not an object");
            goto fail;
        }
        f->meta = lipc_calloc(json_object_size(meta) + 1, sizeof *f->meta);
        if (!f->meta) {
            st = LIPC_ERR_NOMEM;
            goto fail;
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                lipc_diag_error(d, loc, "__metadata__ value of '%s' is not a string", k);
                ok = false;
                continue;
            }
            lipc_st_meta *m = &f->meta[f->n_meta];
            m->key = lipc_strdup(k);
            m->value = lipc_strdup(json_string_value(v));
            if (!m->key || !m->value) {
                lipc_free((char *)m->key);
                lipc_free((char *)m->value);
                st = LIPC_ERR_NOMEM;
                goto fail;
            }
            f->n_meta++;
        }
    }
    const char *name;
    json_t *e;
    json_object_foreach(root, name, e) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        lipc_st_tensor *x = &f->tensors[f->n];
        if (!(x->name = lipc_strdup(name))) {
            st = LIPC_ERR_NOMEM;
            goto fail;
        }
        spans[f->n].tensor = f->n;
        f->n++;
        if (!parse_entry(name, e, data_len, x, &spans[f->n - 1], loc, d))
            ok = false;
    }
    if (!ok)
        goto fail;

    /* The tensors must tile [0, data_len): sorted by offset, each begins where
     * the previous one ended (empty tensors may share an offset). */
    qsort(spans, (size_t)f->n, sizeof *spans, span_cmp);
    uint64_t at = 0;
    for (int i = 0; i < f->n; i++) {
        const span *s = &spans[i];
        if (s->begin < at) {
            lipc_diag_error(d, loc, "tensors '%s' and '%s' overlap (bytes %llu..%llu of the data)",
                            f->tensors[spans[i - 1].tensor].name, f->tensors[s->tensor].name,
                            (unsigned long long)s->begin, (unsigned long long)at);
            goto fail;
        }
        if (s->begin > at) {
            lipc_diag_error(d, loc, "bytes %llu..%llu of the data belong to no tensor",
                            (unsigned long long)at, (unsigned long long)s->begin);
            goto fail;
        }
        at = s->end;
        f->tensors[s->tensor].data = data + s->begin;
    }
    if (at != data_len) {
        lipc_diag_error(d, loc, "%llu bytes after the last tensor's data belong to no tensor",
                        (unsigned long long)(data_len - at));
        goto fail;
    }
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, tensor_cmp);
    if (f->n_meta)
        qsort(f->meta, (size_t)f->n_meta, sizeof *f->meta, meta_cmp);
    json_decref(root);
    lipc_free(spans);
    return LIPC_OK;
fail:
    json_decref(root);
    lipc_free(spans);
    lipc_st_free(f);
    return st;
}

const lipc_st_tensor *lipc_st_find(const lipc_st_file *f, const char *name)
{
    lipc_st_tensor key = {.name = name};
    if (f->n == 0)
        return NULL;
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof *f->tensors, tensor_cmp);
}

const char *lipc_st_meta_get(const lipc_st_file *f, const char *key)
{
    lipc_st_meta k = {.key = key};
    if (f->n_meta == 0)
        return NULL;
    const lipc_st_meta *m = bsearch(&k, f->meta, (size_t)f->n_meta, sizeof *f->meta, meta_cmp);
    return m ? m->value : NULL;
}

lipc_status lipc_st_copy(const lipc_st_file *f, const char *name, lipc_st_dtype dtype,
                         int rank, const int64_t *dims, void *dst, lipc_diags *d)
{
    lipc_loc loc = lipc_rt_loc(d, f->path ? f->path : "(checkpoint)");
    const lipc_st_tensor *x = lipc_st_find(f, name);
    if (!x) {
        lipc_diag_error(d, loc, "no tensor named '%s'", name);
        return LIPC_ERR_INPUT;
    }
    bool same = x->rank == rank;
    for (int i = 0; same && i < rank; i++)
        same = x->dims[i] == dims[i];
    if (!same) {
        lipc_buf got, want;
        lipc_buf_init(&got);
        lipc_buf_init(&want);
        shape_str(&got, x->rank, x->dims);
        shape_str(&want, rank, dims);
        lipc_diag_error(d, loc, "tensor '%s' has shape %s; expected %s", name,
                        lipc_buf_str(&got), lipc_buf_str(&want));
        lipc_buf_free(&got);
        lipc_buf_free(&want);
        return LIPC_ERR_INPUT;
    }
    size_t numel = x->nbytes / dtype_sizes[x->dtype];
    if (x->dtype == dtype) {
        if (x->nbytes)
            memcpy(dst, x->data, x->nbytes);
        return LIPC_OK;
    }
    const uint8_t *s = x->data;
    /* memcpy per element: the data may be unaligned inside the file. */
    if (x->dtype == LIPC_ST_F64 && dtype == LIPC_ST_F32) {
        for (size_t i = 0; i < numel; i++) {
            double v;
            memcpy(&v, s + 8 * i, 8);
            ((float *)dst)[i] = (float)v;
        }
        return LIPC_OK;
    }
    if (x->dtype == LIPC_ST_F32 && dtype == LIPC_ST_F64) {
        for (size_t i = 0; i < numel; i++) {
            float v;
            memcpy(&v, s + 4 * i, 4);
            ((double *)dst)[i] = v;
        }
        return LIPC_OK;
    }
    lipc_diag_error(d, loc, "tensor '%s' is %s; expected %s", name, dtype_names[x->dtype],
                    dtype_names[dtype]);
    return LIPC_ERR_INPUT;
}
