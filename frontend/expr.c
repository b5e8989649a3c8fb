/* frontend/expr.c: the arithmetic of `${...}` parameter expressions.
 *
 * A recursive-descent evaluator over doubles:
 *   expr   = term { ('+' | '-') term }
 *   term   = power { ('*' | '/' | '//' | '%') power }
 *   unary  = ('-' | '+') unary | power      (so -2 ** 2 = -(2 ** 2), as in Python)
 *   power  = atom [ '**' unary ]             (right associative)
 *   atom   = number | name | '(' expr ')'
 * Nesting is limited so a hostile file cannot exhaust the stack; division by
 * zero and non-finite results are errors, not infinities.
 */
#include "frontend/internal.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EXPR_MAX_DEPTH 32

typedef struct parser {
    const char *s, *p;
    const fe_var *vars;
    int n_vars;
    int depth;
    const char *err;
    int err_at;
    const char *unknown;
    int unknown_len;
} parser;

static bool fail(parser *ps, const char *msg)
{
    if (!ps->err) {
        ps->err = msg;
        ps->err_at = (int)(ps->p - ps->s);
    }
    return false;
}

static void skip_space(parser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t')
        ps->p++;
}

static bool parse_expr(parser *ps, double *v);

static bool parse_atom(parser *ps, double *v)
{
    skip_space(ps);
    const char *p = ps->p;
    if (*p == '(') {
        ps->p++;
        if (!parse_expr(ps, v))
            return false;
        skip_space(ps);
        if (*ps->p != ')')
            return fail(ps, "expected ')'");
        ps->p++;
        return true;
    }
    if (isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))) {
        char *end;
        *v = strtod(p, &end);
        ps->p = end;
        return true;
    }
    if (isalpha((unsigned char)*p) || *p == '_') {
        const char *q = p;
        while (isalnum((unsigned char)*q) || *q == '_')
            q++;
        int len = (int)(q - p);
        for (int i = 0; i < ps->n_vars; i++) {
            if ((int)strlen(ps->vars[i].name) == len &&
                strncmp(ps->vars[i].name, p, (size_t)len) == 0) {
                *v = ps->vars[i].value;
                ps->p = q;
                return true;
            }
        }
        ps->unknown = p;
        ps->unknown_len = len;
        return fail(ps, "unknown parameter");
    }
    if (*p == '\0')
        return fail(ps, "expression ends too early");
    return fail(ps, "expected a number, a parameter or '('");
}

static bool parse_unary(parser *ps, double *v);

/* power = atom [ '**' unary ]: the exponent may carry its own sign (2 ** -1). */
static bool parse_power(parser *ps, double *v)
{
    skip_space(ps);
    bool ok;
    if (*ps->p == '(') {
        if (++ps->depth > EXPR_MAX_DEPTH)
            return fail(ps, "expression nested too deeply");
        ok = parse_atom(ps, v);
        ps->depth--;
    } else {
        ok = parse_atom(ps, v);
    }
    if (!ok)
        return false;
    skip_space(ps);
    if (ps->p[0] == '*' && ps->p[1] == '*') {
        ps->p += 2;
        double e;
        if (++ps->depth > EXPR_MAX_DEPTH)
            return fail(ps, "expression nested too deeply");
        ok = parse_unary(ps, &e);
        ps->depth--;
        if (!ok)
            return false;
        *v = pow(*v, e);
    }
    return true;
}

/* unary = ('-' | '+') unary | power: a sign applies to the whole power. */
static bool parse_unary(parser *ps, double *v)
{
    skip_space(ps);
    if (*ps->p == '-' || *ps->p == '+') {
        bool neg = *ps->p == '-';
        ps->p++;
        if (++ps->depth > EXPR_MAX_DEPTH)
            return fail(ps, "expression nested too deeply");
        bool ok = parse_unary(ps, v);
        ps->depth--;
        if (neg)
            *v = -*v;
        return ok;
    }
    return parse_power(ps, v);
}

static bool parse_term(parser *ps, double *v)
{
    if (!parse_unary(ps, v))
        return false;
    for (;;) {
        skip_space(ps);
        char c = *ps->p;
        bool floor_div = c == '/' && ps->p[1] == '/';
        if (c == '*' && ps->p[1] == '*')
            return true;
        if (c != '*' && c != '/' && c != '%')
            return true;
        const char *op_at = ps->p;
        ps->p += floor_div ? 2 : 1;
        double r;
        if (!parse_unary(ps, &r))
            return false;
        if (c == '*') {
            *v *= r;
        } else if (r == 0.0) {
            ps->p = op_at;
            return fail(ps, "division by zero");
        } else if (c == '%') {
            *v = *v - r * floor(*v / r);
        } else {
            *v = floor_div ? floor(*v / r) : *v / r;
        }
    }
}

static bool parse_expr(parser *ps, double *v)
{
    if (++ps->depth > EXPR_MAX_DEPTH)
        return fail(ps, "expression nested too deeply");
    bool ok = parse_term(ps, v);
    while (ok) {
        skip_space(ps);
        char c = *ps->p;
        if (c != '+' && c != '-')
            break;
        ps->p++;
        double r = 0.0; /* parse_term may fail before it writes r */
        ok = parse_term(ps, &r);
        *v = c == '+' ? *v + r : *v - r;
    }
    ps->depth--;
    return ok;
}

bool lipc_expr_eval(const char *text, const fe_var *vars, int n_vars,
                    double *value, const char **err, int *err_at,
                    const char **unknown, int *unknown_len)
{
    parser ps = {.s = text, .p = text, .vars = vars, .n_vars = n_vars};
    double v = 0;
    bool ok = parse_expr(&ps, &v);
    if (ok) {
        skip_space(&ps);
        if (*ps.p != '\0')
            ok = fail(&ps, "unexpected text after the expression");
    }
    if (ok && !isfinite(v)) {
        ps.p = ps.s;
        ok = fail(&ps, "the value is not a finite number");
    }
    *value = v;
    *err = ps.err;
    *err_at = ps.err_at;
    *unknown = ps.unknown;
    *unknown_len = ps.unknown_len;
    return ok;
}
