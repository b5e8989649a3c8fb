/* frontend/internal.h: shared between the frontend's files only. */
#ifndef LIPC_FRONTEND_INTERNAL_H
#define LIPC_FRONTEND_INTERNAL_H

#include "frontend/frontend.h"

/* A named number visible to `${...}` expressions. */
typedef struct fe_var {
    const char *name;
    double value;
} fe_var;

/* Evaluates an expression over numbers, variables, + - * / // % ** and
 * parentheses. On failure returns false and sets *err to a static message and
 * *err_at to the byte offset of the problem. */
bool lipc_expr_eval(const char *text, const fe_var *vars, int n_vars,
                    double *value, const char **err, int *err_at,
                    const char **unknown, int *unknown_len);

#endif
