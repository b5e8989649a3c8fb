/* runtime/augment.c: batches for training and evaluation, with random crop and
 * horizontal flip.
 *
 * The key idea: every random choice is a pure function of (seed, epoch,
 * position in the epoch). The epoch's permutation comes from a generator seeded
 * with hash(seed, epoch), and each example's crop and flip from one seeded with
 * hash(seed, epoch, position), never from a stream shared across calls. So a
 * run resumed from a checkpoint at step k sees exactly the batches it would
 * have seen, and batches can be filled by several threads in any order.
 */
#include "runtime/internal.h"

#include <string.h>

/* ---- per-dataset defaults ----------------------------------------------------- */

void lipc_augment_defaults(const char *dataset_name, lipc_augment *a)
{
    memset(a, 0, sizeof *a);
    if (!dataset_name)
        return;
    if (strncmp(dataset_name, "cifar", 5) == 0) {
        /* The standard CIFAR recipe: 4-pixel zero padding, random 32x32 crop,
         * mirror. Natural images are left-right symmetric in distribution. */
        a->crop = true;
        a->crop_pad = 4;
        a->flip = true;
    } else if (strcmp(dataset_name, "fashion-mnist") == 0) {
        /* Small shifts (2 pixels of 28) keep the item in frame. Flip: METHOD.md
         * rules it out for digit-like data, where a mirrored glyph is another
         * glyph or none; a mirrored shirt, bag or shoe is still a shirt, bag or
         * shoe, so the label is invariant. (Shoes all face one way in this data
         * set, so the flip is a regulariser, not a symmetry of the test set.) */
        a->crop = true;
        a->crop_pad = 2;
        a->flip = true;
    } else if (strcmp(dataset_name, "mnist") == 0) {
        /* Digits: shifts only; a mirrored 2 or 7 is not a 2 or 7. */
        a->crop = true;
        a->crop_pad = 2;
    }
    /* synthetic and unknown names: none. The tests' synthetic set is small and
     * its patterns sit at fixed places; anything else should say what it wants
     * in the model's train: section. */
}

/* ---- the transform -------------------------------------------------------------- */

void lipc_augment_image(const float *in, float *out, int c, int h, int w, int pad, int dy,
                        int dx, bool flip)
{
    LIPC_ASSERT(pad >= 0 && dy >= 0 && dy <= 2 * pad && dx >= 0 && dx <= 2 * pad);
    /* out[ch][y][x] = in[ch][y + dy - pad][x' + dx - pad], x' = flip ? w-1-x : x,
     * zero outside the image: a window of the zero-padded image, then mirrored. */
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < h; y++) {
            float *o = out + ((size_t)ch * h + y) * w;
            int sy = y + dy - pad;
            if (sy < 0 || sy >= h) {
                memset(o, 0, sizeof(float) * (size_t)w);
                continue;
            }
            const float *row = in + ((size_t)ch * h + sy) * w;
            for (int x = 0; x < w; x++) {
                int sx = (flip ? w - 1 - x : x) + dx - pad;
                o[x] = sx >= 0 && sx < w ? row[sx] : 0.0f;
            }
        }
}

/* ---- the batcher -------------------------------------------------------------------- */

/* splitmix64's finaliser: a bijective mix of 64 bits, used to derive the seed
 * of each independent stream from (seed, epoch, position). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t stream_seed(uint64_t seed, long epoch, long pos)
{
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull);
    h = mix64(h ^ ((uint64_t)epoch * 0xd1b54a32d192ed03ull + 1));
    return mix64(h ^ ((uint64_t)pos * 0xaef17502108ef2d9ull + 2));
}

/* Uniform integer in [0, k), k <= 2^31: the top 32 bits scaled by k (Lemire's
 * multiply-shift). The bias is at most k / 2^32, far below anything that
 * matters for shuffling and crop offsets. */
static int rand_below(lipc_rng *r, int k)
{
    return (int)(((lipc_rng_next(r) >> 32) * (uint64_t)k) >> 32);
}

lipc_status lipc_batcher_init(lipc_batcher *b, const lipc_dataset *ds, int batch,
                              const lipc_augment *aug, bool shuffle, bool drop_last,
                              uint64_t seed)
{
    LIPC_ASSERT(batch >= 1);
    memset(b, 0, sizeof *b);
    b->ds = ds;
    b->batch = batch;
    if (aug)
        b->aug = *aug;
    if (!b->aug.crop)
        b->aug.crop_pad = 0;
    LIPC_ASSERT(b->aug.crop_pad >= 0);
    b->shuffle = shuffle;
    b->drop_last = drop_last;
    b->seed = seed;
    b->order = lipc_malloc(sizeof(int) * (size_t)(ds->n > 0 ? ds->n : 1));
    if (!b->order)
        return LIPC_ERR_NOMEM;
    lipc_batcher_seek(b, 0, 0);
    return LIPC_OK;
}

void lipc_batcher_free(lipc_batcher *b)
{
    lipc_free(b->order);
    memset(b, 0, sizeof *b);
}

int lipc_batcher_steps(const lipc_batcher *b)
{
    int n = b->ds->n;
    return b->drop_last ? n / b->batch : (n + b->batch - 1) / b->batch;
}

void lipc_batcher_seek(lipc_batcher *b, long epoch, int step)
{
    int n = b->ds->n;
    b->epoch = epoch;
    /* Always from the identity, so the permutation depends on the epoch only. */
    for (int i = 0; i < n; i++)
        b->order[i] = i;
    if (b->shuffle) {
        /* Fisher-Yates: position i takes a uniform pick among those left. */
        lipc_rng r;
        lipc_rng_seed(&r, stream_seed(b->seed, epoch, -1));
        for (int i = n - 1; i > 0; i--) {
            int j = rand_below(&r, i + 1);
            int t = b->order[i];
            b->order[i] = b->order[j];
            b->order[j] = t;
        }
    }
    long pos = (long)step * b->batch;
    b->pos = pos < 0 ? 0 : pos > n ? n : (int)pos;
}

int lipc_batcher_next(lipc_batcher *b, float *x, uint8_t *y)
{
    const lipc_dataset *ds = b->ds;
    int count = ds->n - b->pos < b->batch ? ds->n - b->pos : b->batch;
    if (count <= 0 || (b->drop_last && count < b->batch)) {
        b->pos = ds->n;
        return 0;
    }
    size_t per = (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
    const lipc_augment *a = &b->aug;
    for (int i = 0; i < count; i++) {
        int pos = b->pos + i;
        int idx = b->order[pos];
        const float *src = ds->x + (size_t)idx * per;
        float *dst = x + (size_t)i * per;
        if (a->crop || a->flip) {
            lipc_rng r;
            lipc_rng_seed(&r, stream_seed(b->seed, b->epoch, pos));
            int pad = a->crop_pad;
            int dy = a->crop ? rand_below(&r, 2 * pad + 1) : 0;
            int dx = a->crop ? rand_below(&r, 2 * pad + 1) : 0;
            bool flip = a->flip && (lipc_rng_next(&r) >> 63);
            lipc_augment_image(src, dst, ds->c, ds->h, ds->w, pad, dy, dx, flip);
        } else {
            memcpy(dst, src, sizeof(float) * per);
        }
        if (y)
            y[i] = ds->y[idx];
    }
    b->pos += count;
    return count;
}
