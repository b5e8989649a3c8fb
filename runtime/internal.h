/* runtime/internal.h: helpers shared by the runtime's files; never included
 * from another folder. */
#ifndef LIPC_RUNTIME_INTERNAL_H
#define LIPC_RUNTIME_INTERNAL_H

#include "runtime/runtime.h"

/* A location naming a file, for "path: error: ..." diagnostics. lipc_loc does
 * not own its file name, so the name is registered with the diagnostics (with
 * no text: there is no source line to quote) and the stable copy is used. Out
 * of memory, the message loses its file name rather than pointing at freed
 * memory. */
static inline lipc_loc lipc_rt_loc(lipc_diags *d, const char *path)
{
    const char *stable = lipc_diags_add_source(d, path, "", 0);
    return (lipc_loc){stable, 0, 0};
}

#endif
