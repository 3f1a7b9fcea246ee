/*
 * jschema.c - a JSON Schema subset compiled into a byte-level pushdown
 * matcher (jschema.h). Two halves:
 *   the compiler  cJSON schema -> a tree of nodes (refs inlined), checked
 *                 against the limits, with a bound on live alternatives;
 *   the matcher   a set of stacks of frames (one stack per way of having
 *                 read the text); js_step feeds one byte to each stack.
 */
#include "decode/jschema.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

/* ---- the compiled schema ---- */

enum { K_ANY, K_OBJECT, K_ARRAY, K_STRING, K_NUMBER, K_INTEGER, K_LIT, K_ANYOF };

typedef struct {
    uint8_t kind;
    uint8_t open;              /* object without properties: any keys, any values */
    int32_t child;             /* array: items */
    int32_t lo, hi;            /* string: code points; array: items; -1 = no bound */
    int32_t first, n;          /* object: props; anyOf: alts; literal: lits */
    uint64_t required;         /* object: bit i = props[first + i] is required */
} js_node;

typedef struct {
    char *key;                 /* the key as it appears between the quotes (JSON-escaped) */
    uint32_t klen;
    int32_t node;
} js_prop;

typedef struct {
    char *s;
    uint32_t len;
} js_lit;

struct jschema {
    js_node *nodes;
    int32_t n_nodes, cap_nodes;
    js_prop *props;
    int32_t n_props, cap_props;
    int32_t *alts;
    int32_t n_alts, cap_alts;
    js_lit *lits;
    int32_t n_lits, cap_lits;
    int32_t root;
    int32_t any, any_obj, any_arr, any_str, any_num, any_kw;   /* "any JSON" and its parts */
};

typedef struct {
    jschema *s;
    const cJSON *doc;          /* the schema document ($ref targets) */
    const char *refs[JS_MAX_DEPTH * 2];   /* $refs being expanded (recursion) */
    int n_refs;
    char *err;
    size_t errlen;
} js_compiler;

static int32_t new_node(js_compiler *c, uint8_t kind, const char *path)
{
    jschema *s = c->s;
    if (s->n_nodes >= JS_MAX_NODES)
        return util_err(c->err, c->errlen, "%s: the schema has more than %d nodes", path, JS_MAX_NODES);
    if (s->n_nodes == s->cap_nodes) {
        s->cap_nodes = s->cap_nodes ? 2 * s->cap_nodes : 64;
        s->nodes = reallocCheck(s->nodes, (size_t)s->cap_nodes * sizeof *s->nodes);
    }
    s->nodes[s->n_nodes] = (js_node){.kind = kind, .child = -1, .lo = -1, .hi = -1};
    return s->n_nodes++;
}

static void push_alt(jschema *s, int32_t node)
{
    if (s->n_alts == s->cap_alts) {
        s->cap_alts = s->cap_alts ? 2 * s->cap_alts : 64;
        s->alts = reallocCheck(s->alts, (size_t)s->cap_alts * sizeof *s->alts);
    }
    s->alts[s->n_alts++] = node;
}

/* Append text[0..n) to a growing buffer (b, len, cap). */
typedef struct {
    char *b;
    size_t len, cap;
} js_buf;

static void buf_put(js_buf *b, const char *t, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->b = reallocCheck(b->b, b->cap);
    }
    memcpy(b->b + b->len, t, n);
    b->len += n;
    b->b[b->len] = '\0';
}

/* A string's JSON escape, without the quotes: '"', '\' and control
 * characters escaped, everything else (UTF-8) as it is. */
static void buf_escape(js_buf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char e[8];
        if (*p == '"' || *p == '\\') {
            e[0] = '\\', e[1] = (char)*p;
            buf_put(b, e, 2);
        } else if (*p < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", *p);
            buf_put(b, e, 6);
        } else {
            buf_put(b, (const char *)p, 1);
        }
    }
}

/* A JSON value in the matcher's layout (json.dumps: ", " and ": "). */
static int buf_value(js_buf *b, const cJSON *v, int depth)
{
    if (depth > JS_MAX_DEPTH)
        return -1;
    if (cJSON_IsNull(v)) {
        buf_put(b, "null", 4);
    } else if (cJSON_IsTrue(v)) {
        buf_put(b, "true", 4);
    } else if (cJSON_IsFalse(v)) {
        buf_put(b, "false", 5);
    } else if (cJSON_IsString(v)) {
        buf_put(b, "\"", 1);
        buf_escape(b, v->valuestring);
        buf_put(b, "\"", 1);
    } else if (cJSON_IsNumber(v)) {
        /* the number as written in the schema when it is an integer that a
         * double holds exactly; anything else (fractions, exponents) would
         * depend on how it is printed: refused by the caller */
        double d = v->valuedouble;
        if (d != (double)(long long)d || d > 9007199254740991.0 || d < -9007199254740991.0)
            return -2;
        char t[32];
        int n = snprintf(t, sizeof t, "%lld", (long long)d);
        buf_put(b, t, (size_t)n);
    } else if (cJSON_IsArray(v)) {
        buf_put(b, "[", 1);
        for (const cJSON *x = v->child; x; x = x->next) {
            int r = buf_value(b, x, depth + 1);
            if (r < 0)
                return r;
            if (x->next)
                buf_put(b, ", ", 2);
        }
        buf_put(b, "]", 1);
    } else if (cJSON_IsObject(v)) {
        buf_put(b, "{", 1);
        for (const cJSON *x = v->child; x; x = x->next) {
            buf_put(b, "\"", 1);
            buf_escape(b, x->string);
            buf_put(b, "\": ", 3);
            int r = buf_value(b, x, depth + 1);
            if (r < 0)
                return r;
            if (x->next)
                buf_put(b, ", ", 2);
        }
        buf_put(b, "}", 1);
    } else {
        return -1;
    }
    return 0;
}

static int lit_cmp(const void *a, const void *b)
{
    const js_lit *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* A literal node over the values vals[0..n) (a cJSON array's items, or one value). */
static int32_t lit_node(js_compiler *c, const cJSON *first_val, int single, const char *path)
{
    jschema *s = c->s;
    int32_t id = new_node(c, K_LIT, path);
    if (id < 0)
        return -1;
    int32_t start = s->n_lits;
    for (const cJSON *v = first_val; v; v = single ? NULL : v->next) {
        js_buf b = {0};
        int r = buf_value(&b, v, 0);
        if (r < 0 || b.len > JS_MAX_LITERAL) {
            free(b.b);
            return util_err(c->err, c->errlen, "%s: %s", path,
                            r == -2 ? "only integer numbers are supported in enum and const"
                                    : "an enum or const value is too large or too deep");
        }
        if (s->n_lits >= JS_MAX_NODES * 4) {
            free(b.b);
            return util_err(c->err, c->errlen, "%s: more than %d enum values in the schema", path, JS_MAX_NODES * 4);
        }
        if (s->n_lits == s->cap_lits) {
            s->cap_lits = s->cap_lits ? 2 * s->cap_lits : 64;
            s->lits = reallocCheck(s->lits, (size_t)s->cap_lits * sizeof *s->lits);
        }
        s->lits[s->n_lits++] = (js_lit){b.b, (uint32_t)b.len};
    }
    int32_t n = s->n_lits - start;
    if (n == 0)
        return util_err(c->err, c->errlen, "%s: an empty enum allows nothing", path);
    qsort(s->lits + start, (size_t)n, sizeof *s->lits, lit_cmp);
    int32_t k = 1;   /* drop duplicates */
    for (int32_t i = 1; i < n; i++) {
        if (lit_cmp(&s->lits[start + i], &s->lits[start + k - 1]) == 0)
            free(s->lits[start + i].s);
        else
            s->lits[start + k++] = s->lits[start + i];
    }
    s->n_lits = start + k;
    s->nodes[id].first = start;
    s->nodes[id].n = k;
    return id;
}

static const char *const js_annotations[] = {"title", "description", "default", "examples", "$schema", "$id",
                                             "$comment", "strict", "deprecated", "readOnly", "writeOnly",
                                             "$defs", "definitions"};
static const char *const js_keywords[] = {"type", "properties", "required", "additionalProperties", "items",
                                          "minItems", "maxItems", "minLength", "maxLength", "enum", "const",
                                          "anyOf", "oneOf", "$ref"};

static int in_list(const char *k, const char *const *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, l[i]))
            return 1;
    return 0;
}
#define IN_LIST(k, l) in_list((k), (l), sizeof(l) / sizeof *(l))

static int32_t compile_node(js_compiler *c, const cJSON *sch, const char *path, int depth);

/* A non-negative integer keyword, or -1 when absent. */
static int get_count(js_compiler *c, const cJSON *sch, const char *kw, const char *path, int32_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sch, kw);
    *out = -1;
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e6 || v->valuedouble != (int32_t)v->valuedouble)
        return util_err(c->err, c->errlen, "%s.%s must be an integer in [0, 1000000]", path, kw);
    *out = (int32_t)v->valuedouble;
    return 0;
}

static int32_t compile_object(js_compiler *c, const cJSON *sch, const char *path, int depth)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(sch, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(sch, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return util_err(c->err, c->errlen, "%s.properties must be an object", path);
    if (req && !cJSON_IsArray(req))
        return util_err(c->err, c->errlen, "%s.required must be an array of strings", path);
    int n = cJSON_GetArraySize(props);
    if (addl && !cJSON_IsFalse(addl) && !(cJSON_IsTrue(addl) && n == 0) &&
        !(cJSON_IsObject(addl) && !addl->child && n == 0))
        return util_err(c->err, c->errlen, "%s.additionalProperties: only false is supported with properties", path);
    if (n > JS_MAX_PROPS)
        return util_err(c->err, c->errlen, "%s: more than %d properties", path, JS_MAX_PROPS);
    int32_t id = new_node(c, K_OBJECT, path);
    if (id < 0)
        return -1;
    if (n == 0 && !cJSON_IsFalse(addl)) {   /* any keys, any values */
        if (req && cJSON_GetArraySize(req) > 0)
            return util_err(c->err, c->errlen, "%s.required needs properties", path);
        c->s->nodes[id].open = 1;
        return id;
    }
    jschema *s = c->s;
    /* the props of one object are contiguous: reserve them first */
    if (s->n_props + n > s->cap_props) {
        s->cap_props = (s->n_props + n) * 2;
        s->props = reallocCheck(s->props, (size_t)s->cap_props * sizeof *s->props);
    }
    int32_t first = s->n_props;
    memset(s->props + first, 0, (size_t)n * sizeof *s->props);
    s->n_props += n;
    int i = 0;
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next, i++) {
        js_buf b = {0};
        buf_put(&b, "", 0);
        buf_escape(&b, p->string);
        s->props[first + i] = (js_prop){b.b, (uint32_t)b.len, -1};
        for (int j = 0; j < i; j++)
            if (!strcmp(s->props[first + j].key, b.b))
                return util_err(c->err, c->errlen, "%s.properties: '%s' twice", path, p->string);
    }
    i = 0;
    for (const cJSON *p = props ? props->child : NULL; p; p = p->next, i++) {
        char sub[256];
        snprintf(sub, sizeof sub, "%s.properties.%.64s", path, p->string);
        int32_t ch = compile_node(c, p, sub, depth + 1);
        if (ch < 0)
            return -1;
        s->props[first + i].node = ch;
    }
    uint64_t required = 0;
    for (const cJSON *r = req ? req->child : NULL; r; r = r->next) {
        if (!cJSON_IsString(r))
            return util_err(c->err, c->errlen, "%s.required must be an array of strings", path);
        js_buf b = {0};
        buf_put(&b, "", 0);
        buf_escape(&b, r->valuestring);
        int found = -1;
        for (int j = 0; j < n && found < 0; j++)
            if (!strcmp(s->props[first + j].key, b.b))
                found = j;
        free(b.b);
        if (found < 0)
            return util_err(c->err, c->errlen, "%s.required: '%.64s' is not among the properties", path,
                            r->valuestring);
        required |= (uint64_t)1 << found;
    }
    js_node *nd = &s->nodes[id];
    nd->first = first;
    nd->n = n;
    nd->required = required;
    return id;
}

/* One type (a string of "type") with the schema's other keywords. */
static int32_t compile_typed(js_compiler *c, const cJSON *sch, const char *type, const char *path, int depth)
{
    int32_t id;
    if (!strcmp(type, "object"))
        return compile_object(c, sch, path, depth);
    if (!strcmp(type, "array")) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(sch, "items");
        int32_t lo, hi;
        if (get_count(c, sch, "minItems", path, &lo) < 0 || get_count(c, sch, "maxItems", path, &hi) < 0)
            return -1;
        if (hi >= 0 && lo > hi)
            return util_err(c->err, c->errlen, "%s: minItems > maxItems", path);
        char sub[256];
        snprintf(sub, sizeof sub, "%s.items", path);
        int32_t ch = items ? compile_node(c, items, sub, depth + 1) : c->s->any;
        if (ch < 0 || (id = new_node(c, K_ARRAY, path)) < 0)
            return -1;
        c->s->nodes[id].child = ch;
        c->s->nodes[id].lo = lo < 0 ? 0 : lo;
        c->s->nodes[id].hi = hi;
        return id;
    }
    if (!strcmp(type, "string")) {
        int32_t lo, hi;
        if (get_count(c, sch, "minLength", path, &lo) < 0 || get_count(c, sch, "maxLength", path, &hi) < 0)
            return -1;
        if (hi >= 0 && lo > hi)
            return util_err(c->err, c->errlen, "%s: minLength > maxLength", path);
        if ((id = new_node(c, K_STRING, path)) < 0)
            return -1;
        c->s->nodes[id].lo = lo < 0 ? 0 : lo;
        c->s->nodes[id].hi = hi;
        return id;
    }
    if (!strcmp(type, "number"))
        return new_node(c, K_NUMBER, path);
    if (!strcmp(type, "integer"))
        return new_node(c, K_INTEGER, path);
    if (!strcmp(type, "boolean")) {
        cJSON *v = cJSON_Parse("[false, true]");
        id = lit_node(c, v->child, 0, path);
        cJSON_Delete(v);
        return id;
    }
    if (!strcmp(type, "null")) {
        cJSON *v = cJSON_CreateNull();
        id = lit_node(c, v, 1, path);
        cJSON_Delete(v);
        return id;
    }
    return util_err(c->err, c->errlen, "%s.type: unknown type '%.32s'", path, type);
}

static int32_t compile_ref(js_compiler *c, const cJSON *ref, const char *path, int depth)
{
    if (!cJSON_IsString(ref))
        return util_err(c->err, c->errlen, "%s.$ref must be a string", path);
    const char *r = ref->valuestring, *name = NULL, *defs = NULL;
    if (!strncmp(r, "#/$defs/", 8))
        defs = "$defs", name = r + 8;
    else if (!strncmp(r, "#/definitions/", 14))
        defs = "definitions", name = r + 14;
    else
        return util_err(c->err, c->errlen, "%s.$ref: only \"#/$defs/NAME\" and \"#/definitions/NAME\" are supported",
                        path);
    for (int i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i], r))
            return util_err(c->err, c->errlen, "%s.$ref: recursive references are not supported ('%.64s')", path, r);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(c->doc, defs);
    const cJSON *target = cJSON_IsObject(d) ? cJSON_GetObjectItemCaseSensitive(d, name) : NULL;
    if (!target || strchr(name, '/'))
        return util_err(c->err, c->errlen, "%s.$ref: '%.64s' not found", path, r);
    if (c->n_refs == (int)(sizeof c->refs / sizeof *c->refs))
        return util_err(c->err, c->errlen, "%s.$ref: references nest too deep", path);
    c->refs[c->n_refs++] = r;
    int32_t id = compile_node(c, target, r, depth);
    c->n_refs--;
    return id;
}

/* An anyOf node over the alternatives alts[0..n). */
static int32_t anyof_node(js_compiler *c, const int32_t *alts, int32_t n, const char *path)
{
    int32_t id = new_node(c, K_ANYOF, path);
    if (id < 0)
        return -1;
    c->s->nodes[id].first = c->s->n_alts;
    c->s->nodes[id].n = n;
    for (int32_t i = 0; i < n; i++)
        push_alt(c->s, alts[i]);
    return id;
}

static int32_t compile_node(js_compiler *c, const cJSON *sch, const char *path, int depth)
{
    if (depth >= JS_MAX_DEPTH - 1)
        return util_err(c->err, c->errlen, "%s: the schema nests deeper than %d", path, JS_MAX_DEPTH - 2);
    if (cJSON_IsTrue(sch))
        return c->s->any;
    if (!cJSON_IsObject(sch))
        return util_err(c->err, c->errlen, "%s: a schema must be an object (or true)", path);
    int n_kw = 0;
    for (const cJSON *k = sch->child; k; k = k->next) {
        if (IN_LIST(k->string, js_annotations))
            continue;
        if (!IN_LIST(k->string, js_keywords))
            return util_err(c->err, c->errlen, "%s: '%.64s' is not supported", path, k->string);
        n_kw++;
    }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(sch, "$ref");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(sch, "anyOf");
    if (!any)
        any = cJSON_GetObjectItemCaseSensitive(sch, "oneOf");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(sch, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(sch, "const");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(sch, "type");
    if (ref) {
        if (n_kw > 1)
            return util_err(c->err, c->errlen, "%s: $ref beside other keywords is not supported", path);
        return compile_ref(c, ref, path, depth);
    }
    if (cn)
        return lit_node(c, cn, 1, path);
    if (en) {
        if (!cJSON_IsArray(en))
            return util_err(c->err, c->errlen, "%s.enum must be an array", path);
        return lit_node(c, en->child, 0, path);
    }
    if (any) {
        if (cJSON_GetObjectItemCaseSensitive(sch, "anyOf") && cJSON_GetObjectItemCaseSensitive(sch, "oneOf"))
            return util_err(c->err, c->errlen, "%s: anyOf and oneOf together are not supported", path);
        if (n_kw > 1)
            return util_err(c->err, c->errlen, "%s: anyOf beside other keywords is not supported", path);
        if (!cJSON_IsArray(any) || cJSON_GetArraySize(any) == 0)
            return util_err(c->err, c->errlen, "%s.anyOf must be a non-empty array", path);
        int32_t na = cJSON_GetArraySize(any), tmp[64];
        if (na > 64)
            return util_err(c->err, c->errlen, "%s.anyOf: more than 64 alternatives", path);
        int i = 0;
        for (const cJSON *a = any->child; a; a = a->next, i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.anyOf[%d]", path, i);
            if ((tmp[i] = compile_node(c, a, sub, depth + 1)) < 0)
                return -1;
        }
        return anyof_node(c, tmp, na, path);
    }
    if (cJSON_IsString(type))
        return compile_typed(c, sch, type->valuestring, path, depth);
    if (cJSON_IsArray(type)) {
        int32_t na = cJSON_GetArraySize(type), tmp[8];
        if (na == 0 || na > 7)
            return util_err(c->err, c->errlen, "%s.type: a list of 1 to 7 types", path);
        int i = 0;
        for (const cJSON *t = type->child; t; t = t->next, i++) {
            if (!cJSON_IsString(t))
                return util_err(c->err, c->errlen, "%s.type: a list of type names", path);
            if ((tmp[i] = compile_typed(c, sch, t->valuestring, path, depth)) < 0)
                return -1;
        }
        if (na == 1)
            return tmp[0];
        return anyof_node(c, tmp, na, path);
    }
    if (type)
        return util_err(c->err, c->errlen, "%s.type must be a string or a list of strings", path);
    if (cJSON_GetObjectItemCaseSensitive(sch, "properties") || cJSON_GetObjectItemCaseSensitive(sch, "required") ||
        cJSON_GetObjectItemCaseSensitive(sch, "additionalProperties"))
        return compile_object(c, sch, path, depth);
    if (cJSON_GetObjectItemCaseSensitive(sch, "items"))
        return compile_typed(c, sch, "array", path, depth);
    if (n_kw > 0)
        return util_err(c->err, c->errlen, "%s: give a type for these keywords", path);
    return c->s->any;
}

/* Live alternatives a node can keep at once (anyOf adds, containers take
 * their children's largest); and its depth in frames. */
static int32_t node_alts(const jschema *s, int32_t id)
{
    const js_node *nd = &s->nodes[id];
    int32_t m = 1;
    if (nd->kind == K_ANYOF) {
        m = 0;
        for (int32_t i = 0; i < nd->n; i++) {
            m += node_alts(s, s->alts[nd->first + i]);
            if (m > JS_MAX_CFG)
                return m;
        }
    } else if (nd->kind == K_OBJECT && !nd->open) {
        for (int32_t i = 0; i < nd->n; i++) {
            int32_t a = node_alts(s, s->props[nd->first + i].node);
            m = a > m ? a : m;
        }
    } else if (nd->kind == K_ARRAY) {
        m = node_alts(s, nd->child);
    }
    return m;
}

void jschema_free(jschema *s)
{
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_props; i++)
        free(s->props[i].key);
    for (int32_t i = 0; i < s->n_lits; i++)
        free(s->lits[i].s);
    free(s->nodes);
    free(s->props);
    free(s->alts);
    free(s->lits);
    free(s);
}

int jschema_compile(jschema **out, const char *schema, size_t len, int any_json, char *err, size_t errlen)
{
    *out = NULL;
    if (!any_json && len > JS_MAX_SCHEMA)
        return util_err(err, errlen, "the schema is longer than %u bytes", JS_MAX_SCHEMA);
    jschema *s = callocCheck(1, sizeof *s);
    js_compiler c = {.s = s, .err = err, .errlen = errlen};
    /* "any JSON": a value of any kind, and its parts */
    s->any = new_node(&c, K_ANY, "any");
    s->any_obj = new_node(&c, K_OBJECT, "any");
    s->nodes[s->any_obj].open = 1;
    s->any_arr = new_node(&c, K_ARRAY, "any");
    s->nodes[s->any_arr].child = s->any;
    s->nodes[s->any_arr].lo = 0;
    s->any_str = new_node(&c, K_STRING, "any");
    s->nodes[s->any_str].lo = 0;
    s->any_num = new_node(&c, K_NUMBER, "any");
    cJSON *kw = cJSON_Parse("[false, null, true]");
    s->any_kw = lit_node(&c, kw->child, 0, "any");
    cJSON_Delete(kw);
    if (any_json) {
        s->root = s->any_obj;
        *out = s;
        return 0;
    }
    cJSON *doc = cJSON_ParseWithLength(schema, len);
    if (!doc) {
        jschema_free(s);
        return util_err(err, errlen, "the schema is not valid JSON");
    }
    c.doc = doc;
    s->root = compile_node(&c, doc, "schema", 0);
    cJSON_Delete(doc);
    if (s->root >= 0 && node_alts(s, s->root) > JS_MAX_CFG)
        s->root = util_err(err, errlen, "schema: more than %d anyOf alternatives can be open at once", JS_MAX_CFG);
    if (s->root < 0) {
        jschema_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

/* ---- the matcher ---- */

enum { M_VALUE, M_OBJ, M_ARR, M_STR, M_NUM, M_LIT };
/* object: after '{'; in a key; ':' next; ' ' next (then the value); after a
 * value (',' or '}'); ' ' after ','; '"' of the next key */
enum { O_FIRST, O_KEY, O_COLON, O_COLON_SP, O_NEXT, O_COMMA_SP, O_KEYQ };
enum { A_FIRST, A_NEXT, A_SP };
enum { S_CHARS, S_ESC, S_HEX, S_UTF8 };
/* after '-'; "0"; integer digits; '.'; fraction digits; 'e'; exponent sign; exponent digits */
enum { N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

typedef struct {
    js_cfg *c;
    int n;
} js_out;

static size_t cfg_size(const js_cfg *c)
{
    assert(c->depth <= JS_MAX_DEPTH);
    return offsetof(js_cfg, f) + (size_t)(c->depth <= JS_MAX_DEPTH ? c->depth : JS_MAX_DEPTH) * sizeof(js_frame);
}

static void out_add(js_out *o, const js_cfg *c)
{
    size_t sz = cfg_size(c);
    for (int i = 0; i < o->n; i++)
        if (o->c[i].depth == c->depth && !memcmp(&o->c[i], c, sz))
            return;   /* the same configuration twice */
    assert(o->n < JS_MAX_CFG);   /* bounded by node_alts at compile time */
    if (o->n < JS_MAX_CFG)
        memcpy(&o->c[o->n++], c, sz);
}

static js_frame *top(js_cfg *c) { return &c->f[c->depth - 1]; }

static uint64_t key_mask(const js_node *nd, uint32_t from)
{
    uint64_t m = 0;
    for (int32_t i = (int32_t)from; i < nd->n; i++) {
        m |= (uint64_t)1 << i;
        if (nd->required >> i & 1)
            break;   /* a required property cannot be skipped */
    }
    return m;
}

static int required_left(const js_node *nd, uint32_t from)
{
    return from < 64 && (nd->required >> from) != 0;
}

static void feed(const jschema *s, js_cfg *c, uint8_t b, js_out *o);

/* Replace the top frame by the start of a value of node id, then feed b. */
static void start_value(const jschema *s, js_cfg *c, int32_t id, uint8_t b, js_out *o)
{
    *top(c) = (js_frame){.node = (uint16_t)id, .mode = M_VALUE};
    feed(s, c, b, o);
}

/* Push a value frame of node id (a container's member). */
static int push_value(js_cfg *c, int32_t id)
{
    if (c->depth >= JS_MAX_DEPTH)
        return 0;
    c->f[c->depth++] = (js_frame){.node = (uint16_t)id, .mode = M_VALUE};
    return 1;
}

/* The top frame is complete: pop it and hand b to what contains it. */
static void end_and_feed(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    c->depth--;
    if (c->depth > 0)
        feed(s, c, b, o);
}

static int is_digit(uint8_t b) { return b >= '0' && b <= '9'; }

/* A container or string starts with its byte `want`: the value frame
 * becomes mode's, in sub-state sub. */
static void open_frame(js_cfg *c, js_out *o, uint8_t b, uint8_t want, uint8_t mode, uint8_t sub)
{
    if (b == want) {
        js_frame *f = top(c);
        *f = (js_frame){.node = f->node, .mode = mode, .sub = sub};
        out_add(o, c);
    }
}

static void feed_value(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    switch (nd->kind) {
    case K_ANYOF:
        for (int32_t i = 0; i < nd->n; i++) {
            js_cfg alt;
            memcpy(&alt, c, cfg_size(c));
            start_value(s, &alt, s->alts[nd->first + i], b, o);
        }
        return;
    case K_ANY: {
        int deep = c->depth >= JS_MAX_DEPTH - 1;   /* no room for a container's member */
        int32_t id = b == '{' && !deep ? s->any_obj : b == '[' && !deep ? s->any_arr : b == '"' ? s->any_str
                   : b == '-' || is_digit(b) ? s->any_num : b == 'f' || b == 'n' || b == 't' ? s->any_kw : -1;
        if (id >= 0)
            start_value(s, c, id, b, o);
        return;
    }
    case K_OBJECT:
        open_frame(c, o, b, '{', M_OBJ, O_FIRST);
        return;
    case K_ARRAY:
        open_frame(c, o, b, '[', M_ARR, A_FIRST);
        return;
    case K_STRING:
        open_frame(c, o, b, '"', M_STR, S_CHARS);
        return;
    case K_NUMBER:
    case K_INTEGER:
        if (b == '-' || is_digit(b)) {
            *f = (js_frame){.node = f->node, .mode = M_NUM,
                            .sub = b == '-' ? N_SIGN : b == '0' ? N_ZERO : N_INT, .pos = b == '-' ? 0 : 1};
            out_add(o, c);
        }
        return;
    case K_LIT:
        *f = (js_frame){.node = f->node, .mode = M_LIT, .m = (uint64_t)(uint32_t)nd->n << 32};
        feed(s, c, b, o);
        return;
    }
}

/* Only the byte `want` may come: it moves the top frame to sub-state next. */
static void expect(js_cfg *c, js_out *o, uint8_t b, uint8_t want, uint8_t next)
{
    if (b == want) {
        top(c)->sub = next;
        out_add(o, c);
    }
}

/* A key's first byte after '"' is next: the key frame (typed) or a string. */
static void begin_key(const jschema *s, js_cfg *c, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    if (nd->open) {
        f->sub = O_COLON;
        if (push_value(c, s->any_str)) {
            *top(c) = (js_frame){.node = (uint16_t)s->any_str, .mode = M_STR, .sub = S_CHARS};
            out_add(o, c);
        }
        return;
    }
    uint64_t m = key_mask(nd, f->idx);
    if (m) {
        f->sub = O_KEY;
        f->pos = 0;
        f->m = m;
        out_add(o, c);
    }
}

static void feed_obj(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    int more = nd->open || key_mask(nd, f->idx) != 0;
    switch (f->sub) {
    case O_FIRST:
    case O_KEYQ:
        if (b == '"')
            begin_key(s, c, o);
        else if (b == '}' && f->sub == O_FIRST && (nd->open || !required_left(nd, 0))) {
            c->depth--;
            out_add(o, c);
        }
        return;
    case O_KEY: {
        uint64_t m = f->m, keep = 0;
        for (int32_t i = 0; m; i++, m >>= 1) {
            if (!(m & 1))
                continue;
            const js_prop *p = &s->props[nd->first + i];
            if (b == '"' && p->klen == f->pos) {   /* this key is complete */
                f->idx = (uint16_t)i;
                f->sub = O_COLON;
                out_add(o, c);
                return;
            }
            if (p->klen > f->pos && (uint8_t)p->key[f->pos] == b)
                keep |= (uint64_t)1 << i;
        }
        if (keep) {
            f->m = keep;
            f->pos++;
            out_add(o, c);
        }
        return;
    }
    case O_COLON:
        expect(c, o, b, ':', O_COLON_SP);
        return;
    case O_COLON_SP:
        if (b == ' ') {
            int32_t child = nd->open ? s->any : s->props[nd->first + f->idx].node;
            if (!nd->open)
                f->idx++;   /* properties after this one remain */
            f->sub = O_NEXT;
            if (push_value(c, child))
                out_add(o, c);
        }
        return;
    case O_NEXT:
        if (b == ',' && more) {
            f->sub = O_COMMA_SP;
            out_add(o, c);
        } else if (b == '}' && (nd->open || !required_left(nd, f->idx))) {
            c->depth--;
            out_add(o, c);
        }
        return;
    case O_COMMA_SP:
        expect(c, o, b, ' ', O_KEYQ);
        return;
    }
}

static void feed_arr(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    int room = nd->hi < 0 || f->pos < (uint32_t)nd->hi;
    switch (f->sub) {
    case A_FIRST:
        if (b == ']') {
            if (nd->lo == 0) {
                c->depth--;
                out_add(o, c);
            }
        } else if (room) {
            f->sub = A_NEXT;
            f->pos = 1;
            if (push_value(c, nd->child))
                feed(s, c, b, o);
        }
        return;
    case A_NEXT:
        if (b == ',' && room) {
            f->sub = A_SP;
            out_add(o, c);
        } else if (b == ']' && f->pos >= (uint32_t)nd->lo) {
            c->depth--;
            out_add(o, c);
        }
        return;
    case A_SP:
        if (b == ' ') {
            f->sub = A_NEXT;
            f->pos++;
            if (push_value(c, nd->child))
                out_add(o, c);
        }
        return;
    }
}

static int hex_val(uint8_t b)
{
    return is_digit(b) ? b - '0' : b >= 'a' && b <= 'f' ? b - 'a' + 10 : b >= 'A' && b <= 'F' ? b - 'A' + 10 : -1;
}

static void feed_str(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    int room = nd->hi < 0 || f->pos < (uint32_t)nd->hi;
    switch (f->sub) {
    case S_CHARS: {
        if (b == '"') {
            if (f->pos >= (uint32_t)nd->lo) {
                c->depth--;
                out_add(o, c);
            }
            return;
        }
        if (!room || b < 0x20 || b == 0x7f)
            return;
        uint8_t lo = 0x80, hi = 0xbf, n = 0;
        if (b == '\\')
            f->sub = S_ESC;
        else if (b < 0x80)
            ;
        else if (b >= 0xc2 && b <= 0xdf)
            n = 1;
        else if (b >= 0xe0 && b <= 0xef)
            n = 2, lo = b == 0xe0 ? 0xa0 : 0x80, hi = b == 0xed ? 0x9f : 0xbf;
        else if (b >= 0xf0 && b <= 0xf4)
            n = 3, lo = b == 0xf0 ? 0x90 : 0x80, hi = b == 0xf4 ? 0x8f : 0xbf;
        else
            return;
        if (n) {
            f->sub = S_UTF8;
            f->n = n;
            f->m = (uint64_t)lo << 8 | hi;
        }
        f->pos++;
        out_add(o, c);
        return;
    }
    case S_UTF8:
        if (b >= (uint8_t)(f->m >> 8) && b <= (uint8_t)f->m) {
            f->m = 0x80bf;
            if (--f->n == 0)
                f->sub = S_CHARS;
            out_add(o, c);
        }
        return;
    case S_ESC:
        if (b == 'u') {
            f->sub = S_HEX;
            f->n = 0;
            f->m = 0;
            out_add(o, c);
        } else if (strchr("\"\\/bfnrt", b) && b) {
            f->sub = S_CHARS;
            out_add(o, c);
        }
        return;
    case S_HEX: {
        int v = hex_val(b);
        if (v < 0)
            return;
        f->m = f->m * 16 + (uint64_t)v;
        f->n++;
        if (f->n == 2 && f->m >= 0xd8 && f->m <= 0xdf)
            return;   /* a surrogate: never a whole character on its own */
        if (f->n == 4)
            f->sub = S_CHARS;
        out_add(o, c);
        return;
    }
    }
}

static void feed_num(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    int integer = s->nodes[f->node].kind == K_INTEGER;
    int d = is_digit(b);
    uint8_t next = 0xff;
    switch (f->sub) {
    case N_SIGN:
        if (d) {
            next = b == '0' ? N_ZERO : N_INT;
            f->pos = 1;
        }
        break;
    case N_ZERO:
    case N_INT:
    case N_FRAC:
        if (d && f->sub != N_ZERO && f->pos < JS_MAX_NUM_DIGITS) {
            next = f->sub;
            f->pos++;
        } else if (b == '.' && f->sub != N_FRAC && !integer) {
            next = N_DOT;
        } else if ((b == 'e' || b == 'E') && !integer) {
            next = N_E;
        } else {
            end_and_feed(s, c, b, o);
            return;
        }
        break;
    case N_DOT:
        if (d) {
            next = N_FRAC;
            f->pos = 1;
        }
        break;
    case N_E:
    case N_ESIGN:
        if (d) {
            next = N_EXP;
            f->pos = 1;
        } else if ((b == '+' || b == '-') && f->sub == N_E) {
            next = N_ESIGN;
        }
        break;
    case N_EXP:
        if (d && f->pos < JS_MAX_EXP_DIGITS) {
            next = N_EXP;
            f->pos++;
        } else {
            end_and_feed(s, c, b, o);
            return;
        }
        break;
    }
    if (next != 0xff) {
        f->sub = next;
        out_add(o, c);
    }
}

static void feed_lit(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    js_frame *f = top(c);
    const js_node *nd = &s->nodes[f->node];
    const js_lit *L = s->lits + nd->first;
    uint32_t lo = (uint32_t)f->m, hi = (uint32_t)(f->m >> 32), p = f->pos;
    /* [lo, hi) share their first p bytes and are sorted: those with byte b
     * at p are a sub-range */
    uint32_t a = lo, z = hi;
    while (a < z && (L[a].len <= p || (uint8_t)L[a].s[p] < b))
        a++;
    uint32_t e = a;
    while (e < z && L[e].len > p && (uint8_t)L[e].s[p] == b)
        e++;
    if (a < e) {
        f->m = (uint64_t)e << 32 | a;
        f->pos++;
        out_add(o, c);
    } else if (L[lo].len == p) {   /* a complete literal (the shortest sorts first) */
        end_and_feed(s, c, b, o);
    }
}

static void feed(const jschema *s, js_cfg *c, uint8_t b, js_out *o)
{
    if (c->depth == 0)
        return;   /* the document is complete: nothing may follow */
    switch (top(c)->mode) {
    case M_VALUE: feed_value(s, c, b, o); return;
    case M_OBJ: feed_obj(s, c, b, o); return;
    case M_ARR: feed_arr(s, c, b, o); return;
    case M_STR: feed_str(s, c, b, o); return;
    case M_NUM: feed_num(s, c, b, o); return;
    case M_LIT: feed_lit(s, c, b, o); return;
    }
}

void js_start(const jschema *s, js_state *st)
{
    st->n = 1;
    st->c[0].depth = 1;
    st->c[0].f[0] = (js_frame){.node = (uint16_t)s->root, .mode = M_VALUE};
}

void js_copy(js_state *dst, const js_state *src)
{
    dst->n = src->n;
    for (int i = 0; i < src->n; i++)
        memcpy(&dst->c[i], &src->c[i], cfg_size(&src->c[i]));
}

int js_step_into(const jschema *s, const js_state *src, js_state *dst, uint8_t byte)
{
    js_out o = {dst->c, 0};
    for (int i = 0; i < src->n; i++) {
        js_cfg work;
        memcpy(&work, &src->c[i], cfg_size(&src->c[i]));
        feed(s, &work, byte, &o);
    }
    dst->n = (uint8_t)o.n;
    return dst->n > 0;
}

int js_step(const jschema *s, js_state *st, uint8_t byte)
{
    js_state next;
    js_step_into(s, st, &next, byte);
    js_copy(st, &next);
    return st->n > 0;
}

int js_feed(const jschema *s, js_state *st, const char *bytes, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!js_step(s, st, (uint8_t)bytes[i]))
            return 0;
    return 1;
}

/* A configuration that may end here: complete, or only a number or a
 * literal that is complete as it stands is open (at the top level). */
static int cfg_can_end(const jschema *s, const js_cfg *c)
{
    if (c->depth == 0)
        return 1;
    if (c->depth != 1)
        return 0;
    const js_frame *f = &c->f[0];
    if (f->mode == M_NUM)
        return f->sub == N_ZERO || f->sub == N_INT || f->sub == N_FRAC || f->sub == N_EXP;
    if (f->mode == M_LIT)
        return s->lits[s->nodes[f->node].first + (uint32_t)f->m].len == f->pos;
    return 0;
}

int js_accepting(const jschema *s, const js_state *st)
{
    for (int i = 0; i < st->n; i++)
        if (cfg_can_end(s, &st->c[i]))
            return 1;
    return 0;
}

int js_string_room(const jschema *s, const js_state *st, uint32_t *room)
{
    if (st->n != 1 || st->c[0].depth == 0)
        return 0;
    const js_frame *f = &st->c[0].f[st->c[0].depth - 1];
    if (f->mode != M_STR || f->sub != S_CHARS)
        return 0;
    const js_node *nd = &s->nodes[f->node];
    *room = nd->hi < 0 ? UINT32_MAX : (uint32_t)nd->hi - f->pos;
    return 1;
}

int js_finished(const jschema *s, const js_state *st)
{
    if (!js_accepting(s, st))
        return 0;
    js_state t;
    for (int b = 0; b < 256; b++) {
        js_copy(&t, st);
        if (js_step(s, &t, (uint8_t)b))
            return 0;
    }
    return 1;
}

size_t js_forced(const jschema *s, const js_state *st0, char *out, size_t cap)
{
    js_state st, t;
    js_copy(&st, st0);
    size_t n = 0;
    while (n < cap && st.n > 0 && !js_accepting(s, &st)) {
        int only = -1;
        for (int b = 0; b < 256; b++) {
            js_copy(&t, &st);
            if (js_step(s, &t, (uint8_t)b)) {
                if (only >= 0) {
                    only = -2;
                    break;
                }
                only = b;
            }
        }
        if (only < 0)
            break;
        out[n++] = (char)only;
        js_step(s, &st, (uint8_t)only);
    }
    return n;
}
