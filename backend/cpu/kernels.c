/* backend/cpu/kernels.c: kernel names, and kernels from a built executable's
 * table. */
#include "backend/cpu/kernels.h"

#include <stdio.h>
#include <string.h>

const char *const lipc_kkind_names[LIPC_K_KINDS] = {
    "forward", "backward", "wgrad", "patches", "unpatch", "forward64", "patches64"};

void lipc_kernel_name(lipc_kkind kind, const lipc_node *n, char *buf, size_t size)
{
    snprintf(buf, size, "%s.%s", lipc_kkind_names[kind], n->name);
}

void lipc_kernels_free(lipc_kernels *k)
{
    if (k->owner_free)
        k->owner_free(k->owner);
    for (int i = 0; i < LIPC_K_KINDS; i++) {
        lipc_free(k->info[i]);
        lipc_free(k->fn[i]);
    }
    memset(k, 0, sizeof *k);
}

/* The table lists every kernel the emitter made for the program, by name;
 * each node's kernels are found by the names the emitter gave them. */
bool lipc_kernels_from_table(const lipc_program *train, const lipc_kernel_entry *table, int n,
                             lipc_kernels *k, lipc_diags *d)
{
    const lipc_graph *g = train->g;
    memset(k, 0, sizeof *k);
    k->n_ids = g->next_id + 1;
    for (int i = 0; i < LIPC_K_KINDS; i++) {
        k->info[i] = lipc_calloc((size_t)k->n_ids, sizeof(lipc_kinfo));
        k->fn[i] = lipc_calloc((size_t)k->n_ids, sizeof(lipc_kernel_fn));
        if (!k->info[i] || !k->fn[i]) {
            lipc_kernels_free(k);
            return false;
        }
    }
    int found = 0;
    for (const lipc_node *v = g->first; v; v = v->next)
        for (int kind = 0; kind < LIPC_K_KINDS; kind++) {
            char name[256];
            lipc_kernel_name((lipc_kkind)kind, v, name, sizeof name);
            for (int t = 0; t < n; t++)
                if (strcmp(table[t].name, name) == 0) {
                    lipc_kinfo *info = &k->info[kind][v->id];
                    info->present = true;
                    info->blocks = table[t].blocks;
                    info->flipped = table[t].flags & 1;
                    info->patch = (table[t].flags & 2) != 0;
                    info->writes_din = (table[t].flags & 4) != 0;
                    k->fn[kind][v->id] = table[t].fn;
                    found++;
                    break;
                }
        }
    if (found != n) {
        lipc_diag_error(d, LIPC_NO_LOC, "this executable's kernels (%d) do not match its model "
                                        "(%d found): rebuild it with lipc build", n, found);
        lipc_kernels_free(k);
        return false;
    }
    return true;
}
