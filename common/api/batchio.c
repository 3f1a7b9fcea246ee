/*
 * batchio.c - OpenAI batch format I/O for `selfspec batch` (see batchio.h):
 * input line parsing and validation, the custom_id hash set, deterministic
 * output lines, and the resume scan of an existing output file.
 *
 * cJSON does the JSON; this file adds what cJSON does not check: UTF-8
 * validity (cJSON copies raw bytes through), NUL bytes and \u0000 escapes
 * (cJSON would cut the string there), duplicate keys (cJSON would take the
 * first; Python takes the last: we refuse the ambiguity for known keys),
 * and every type and range of the known fields.
 */
#include "api/batchio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

#define BATCHIO_FNV_BASIS 0xcbf29ce484222325ull
#define BATCHIO_FNV_BASIS_LINE 0x84222325cbf29ce4ull   /* id-less lines */
#define BATCHIO_FNV_PRIME 0x100000001b3ull
/* How much of a user's string an error message quotes. */
#define BATCHIO_QUOTE_MAX 48
/* Every output line starts with these bytes (cJSON keeps member order). */
#define BATCHIO_LINE_HEAD "{\"id\":\"batch_req_"
#define BATCHIO_SCAN_CHUNK (1u << 16)
/* cJSON prints integers below 10^15 without an exponent. */
#define BATCHIO_MAX_CREATED 1000000000000000ll

/* ---------------------------------------------------------------- UTF-8 */

/* Length (1..4) of the valid UTF-8 sequence at s[0..n) (n >= 1), or 0 when
 * it is invalid; then *sub is the length of its maximal invalid prefix
 * (>= 1), the bytes one U+FFFD replaces (Unicode's "maximal subpart"). */
static size_t batchio_utf8_seq(const unsigned char *s, size_t n, size_t *sub)
{
    unsigned char c = s[0];
    unsigned lo = 0x80, hi = 0xBF;
    size_t need;
    *sub = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c == 0xE0)
        need = 2, lo = 0xA0;
    else if (c == 0xED)
        need = 2, hi = 0x9F;                 /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF)
        need = 2;
    else if (c == 0xF0)
        need = 3, lo = 0x90;                 /* no overlongs */
    else if (c >= 0xF1 && c <= 0xF3)
        need = 3;
    else if (c == 0xF4)
        need = 3, hi = 0x8F;                 /* <= U+10FFFF */
    else
        return 0;
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *sub = i;
            return 0;
        }
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

/* 1 when s[0..n) is valid UTF-8; else 0 with the offending offset in *at. */
static int batchio_utf8_ok(const char *s, size_t n, size_t *at)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, sub;
    while (i < n) {
        size_t k = batchio_utf8_seq(u + i, n - i, &sub);
        if (k == 0) {
            if (at)
                *at = i;
            return 0;
        }
        i += k;
    }
    return 1;
}

/* A malloc'd copy of the NUL-terminated s with every invalid sequence
 * replaced by U+FFFD. */
static char *batchio_utf8_fix(const char *s)
{
    size_t n = strlen(s);
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *out = mallocCheck(3 * n + 1);
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0, sub;
    while (i < n) {
        size_t k = batchio_utf8_seq(u + i, n - i, &sub);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k, i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3, i += sub;
        }
    }
    out[o] = '\0';
    return out;
}

/* 1 when the JSON text s[0..n) holds a \u0000 escape inside a string
 * (offset in *at): cJSON would decode it to a NUL and cut the string. */
static int batchio_nul_escape(const char *s, size_t n, size_t *at)
{
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in_str) {
            in_str = s[i] == '"';
            continue;
        }
        if (s[i] == '"') {
            in_str = 0;
        } else if (s[i] == '\\') {
            if (n - i >= 6 && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0) {
                *at = i;
                return 1;
            }
            i++;                             /* skip the escaped character */
        }
    }
    return 0;
}

/* Quote a user string for an error message: at most BATCHIO_QUOTE_MAX
 * bytes, cut at a character boundary, "..." when cut. */
static const char *batchio_quote(const char *s, char *buf, size_t n)
{
    size_t len = strlen(s), k = len;
    if (k > BATCHIO_QUOTE_MAX) {
        k = BATCHIO_QUOTE_MAX;
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--;
    }
    snprintf(buf, n, "%.*s%s", (int)k, s, k < len ? "..." : "");
    return buf;
}

/* ------------------------------------------------------------ hashing */

static uint64_t batchio_hash(const void *p, size_t n, uint64_t basis)
{
    const unsigned char *b = p;
    uint64_t h = basis;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= BATCHIO_FNV_PRIME;
    }
    h ^= h >> 33;                            /* murmur3 fmix64 */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

void batch_output_hex(const char *custom_id, size_t line_no, char hex[17])
{
    uint64_t h;
    if (custom_id) {
        h = batchio_hash(custom_id, strlen(custom_id), BATCHIO_FNV_BASIS);
    } else {
        char num[32];
        int k = snprintf(num, sizeof num, "%zu", line_no);
        h = batchio_hash(num, (size_t)k, BATCHIO_FNV_BASIS_LINE);
    }
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
}

/* ------------------------------------------------------ field helpers */

static const char *batchio_type(const cJSON *v)
{
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsBool(v))
        return "boolean";
    if (cJSON_IsNumber(v))
        return "number";
    if (cJSON_IsString(v))
        return "string";
    if (cJSON_IsArray(v))
        return "array";
    if (cJSON_IsObject(v))
        return "object";
    return "invalid";
}

/* *out = member key of obj (NULL when absent or null: "not given").
 * -1 when the key appears twice; where prefixes the name in the message. */
static int batchio_member(const cJSON *obj, const char *where, const char *key, const cJSON **out,
                          char *err, size_t errlen)
{
    const cJSON *found = NULL;
    *out = NULL;
    for (const cJSON *c = obj->child; c; c = c->next) {
        if (!c->string || strcmp(c->string, key) != 0)
            continue;
        if (found)
            return util_err(err, errlen, "duplicate key %s%s", where, key);
        found = c;
    }
    if (found && !cJSON_IsNull(found))
        *out = found;
    return 0;
}

/* A copy of a string item, or NULL (err) when it is not a valid string. */
static char *batchio_dup_string(const cJSON *v, const char *name, char *err, size_t errlen)
{
    if (!cJSON_IsString(v) || !v->valuestring) {
        util_err(err, errlen, "%s must be a string, got %s", name, batchio_type(v));
        return NULL;
    }
    size_t n = strlen(v->valuestring);
    if (!batchio_utf8_ok(v->valuestring, n, NULL)) {
        util_err(err, errlen, "%s is not valid UTF-8", name);
        return NULL;
    }
    char *s = mallocCheck(n + 1);
    memcpy(s, v->valuestring, n + 1);
    return s;
}

static int batchio_number(const cJSON *v, const char *name, double *out, char *err, size_t errlen)
{
    if (!cJSON_IsNumber(v))
        return util_err(err, errlen, "%s must be a number, got %s", name, batchio_type(v));
    *out = v->valuedouble;
    if (!isfinite(*out))
        return util_err(err, errlen, "%s must be a finite number", name);
    return 0;
}

/* An integer-valued number in [lo, hi] (1.0 counts as an integer, as
 * pydantic's lax mode has it). */
static int batchio_int(const cJSON *v, const char *name, double lo, double hi, int64_t *out,
                       char *err, size_t errlen)
{
    double d = 0;
    if (batchio_number(v, name, &d, err, errlen) < 0)
        return -1;
    if (d != floor(d))
        return util_err(err, errlen, "%s must be an integer, got %g", name, d);
    if (d < lo)
        return util_err(err, errlen, "%s must be >= %.0f, got %g", name, lo, d);
    if (d > hi)
        return util_err(err, errlen, "%s must be <= %.0f, got %g", name, hi, d);
    *out = (int64_t)d;
    return 0;
}

static int batchio_bool(const cJSON *v, const char *name, int *out, char *err, size_t errlen)
{
    if (!cJSON_IsBool(v))
        return util_err(err, errlen, "%s must be a boolean, got %s", name, batchio_type(v));
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

/* ------------------------------------------------------------ parsing */

/* body.prompt of a completion: a string, or an array of exactly one. */
static int batchio_prompt(const cJSON *body, batch_request *out, char *err, size_t errlen)
{
    const cJSON *p;
    if (batchio_member(body, "body.", "prompt", &p, err, errlen) < 0)
        return -1;
    if (!p)
        return util_err(err, errlen, "missing body.prompt");
    if (cJSON_IsArray(p)) {
        int n = cJSON_GetArraySize(p);
        if (n == 0)
            return util_err(err, errlen, "body.prompt is an empty array");
        if (n != 1)
            return util_err(err, errlen, "body.prompt holds %d prompts; one per request is supported", n);
        if (!cJSON_IsString(p->child))
            return util_err(err, errlen,
                            "body.prompt[0] must be a string (token-id prompts are not supported), got %s",
                            batchio_type(p->child));
        p = p->child;
    } else if (!cJSON_IsString(p)) {
        return util_err(err, errlen, "body.prompt must be a string, got %s", batchio_type(p));
    }
    out->prompt = batchio_dup_string(p, "body.prompt", err, errlen);
    return out->prompt ? 0 : -1;
}

/* A message's content: a string, or an array of {"type": "text", "text"}
 * parts joined by "\n" (as vLLM joins text parts). */
static char *batchio_content(const cJSON *c, const char *name, char *err, size_t errlen)
{
    char sub[96];
    if (cJSON_IsString(c))
        return batchio_dup_string(c, name, err, errlen);
    if (!cJSON_IsArray(c)) {
        util_err(err, errlen, "%s must be a string or an array of text parts, got %s", name,
                 c ? batchio_type(c) : "null");
        return NULL;
    }
    size_t total = 0;
    int i = 0;
    for (const cJSON *part = c->child; part; part = part->next, i++) {
        const cJSON *type, *text;
        snprintf(sub, sizeof sub, "%s[%d].", name, i);
        if (!cJSON_IsObject(part)) {
            util_err(err, errlen, "%s[%d] must be an object, got %s", name, i, batchio_type(part));
            return NULL;
        }
        if (batchio_member(part, sub, "type", &type, err, errlen) < 0 ||
            batchio_member(part, sub, "text", &text, err, errlen) < 0)
            return NULL;
        if (!type) {
            util_err(err, errlen, "missing %stype", sub);
            return NULL;
        }
        if (!cJSON_IsString(type)) {
            util_err(err, errlen, "%stype must be a string, got %s", sub, batchio_type(type));
            return NULL;
        }
        if (strcmp(type->valuestring, "text") != 0) {
            char q[BATCHIO_QUOTE_MAX + 8];
            util_err(err, errlen, "%stype must be \"text\" (only text parts are supported), got '%s'",
                     sub, batchio_quote(type->valuestring, q, sizeof q));
            return NULL;
        }
        if (!text) {
            util_err(err, errlen, "missing %stext", sub);
            return NULL;
        }
        if (!cJSON_IsString(text)) {
            util_err(err, errlen, "%stext must be a string, got %s", sub, batchio_type(text));
            return NULL;
        }
        size_t k = strlen(text->valuestring) + (i > 0);
        if (k > SIZE_MAX - 1 - total) {
            util_err(err, errlen, "%s is too long", name);
            return NULL;
        }
        total += k;
    }
    char *s = mallocCheck(total + 1);
    size_t o = 0;
    i = 0;
    for (const cJSON *part = c->child; part; part = part->next, i++) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        size_t k = strlen(text->valuestring);
        if (i > 0)
            s[o++] = '\n';
        memcpy(s + o, text->valuestring, k);
        o += k;
    }
    s[o] = '\0';
    if (!batchio_utf8_ok(s, o, NULL)) {
        free(s);
        util_err(err, errlen, "%s is not valid UTF-8", name);
        return NULL;
    }
    return s;
}

/* body.messages of a chat completion. */
static int batchio_messages(const cJSON *body, batch_request *out, char *err, size_t errlen)
{
    const cJSON *m;
    if (batchio_member(body, "body.", "messages", &m, err, errlen) < 0)
        return -1;
    if (!m)
        return util_err(err, errlen, "missing body.messages");
    if (!cJSON_IsArray(m))
        return util_err(err, errlen, "body.messages must be an array, got %s", batchio_type(m));
    int n = cJSON_GetArraySize(m);
    if (n <= 0)
        return util_err(err, errlen, "body.messages must not be empty");
    out->messages = callocCheck((size_t)n, sizeof *out->messages);
    int i = 0;
    for (const cJSON *msg = m->child; msg && i < n; msg = msg->next, i++) {
        char where[64], name[80], q[BATCHIO_QUOTE_MAX + 8];
        const cJSON *role, *content;
        snprintf(where, sizeof where, "body.messages[%d].", i);
        if (!cJSON_IsObject(msg))
            return util_err(err, errlen, "body.messages[%d] must be an object, got %s", i,
                            batchio_type(msg));
        if (batchio_member(msg, where, "role", &role, err, errlen) < 0 ||
            batchio_member(msg, where, "content", &content, err, errlen) < 0)
            return -1;
        if (!role)
            return util_err(err, errlen, "missing %srole", where);
        if (!cJSON_IsString(role))
            return util_err(err, errlen, "%srole must be a string, got %s", where, batchio_type(role));
        if (strcmp(role->valuestring, "system") == 0)
            out->messages[i].role = BATCH_ROLE_SYSTEM;
        else if (strcmp(role->valuestring, "user") == 0)
            out->messages[i].role = BATCH_ROLE_USER;
        else if (strcmp(role->valuestring, "assistant") == 0)
            out->messages[i].role = BATCH_ROLE_ASSISTANT;
        else
            return util_err(err, errlen, "%srole must be one of system, user, assistant, got '%s'",
                            where, batchio_quote(role->valuestring, q, sizeof q));
        if (!content)
            return util_err(err, errlen, "missing %scontent", where);
        snprintf(name, sizeof name, "%scontent", where);
        out->messages[i].content = batchio_content(content, name, err, errlen);
        if (!out->messages[i].content)
            return -1;
        out->n_messages = i + 1;
    }
    return out->n_messages == n ? 0 : util_err(err, errlen, "body.messages is malformed");
}

/* body.stop: null, a non-empty string, or up to BATCH_MAX_STOP of them. */
static int batchio_stop(const cJSON *s, batch_request *out, char *err, size_t errlen)
{
    if (!s)
        return 0;
    if (cJSON_IsString(s)) {
        if (s->valuestring[0] == '\0')
            return util_err(err, errlen, "body.stop must not be an empty string");
        out->stop[0] = batchio_dup_string(s, "body.stop", err, errlen);
        if (!out->stop[0])
            return -1;
        out->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(s))
        return util_err(err, errlen, "body.stop must be a string or an array of strings, got %s",
                        batchio_type(s));
    int n = cJSON_GetArraySize(s);
    if (n > BATCH_MAX_STOP)
        return util_err(err, errlen, "body.stop holds %d strings; at most %d are supported", n,
                        BATCH_MAX_STOP);
    int i = 0;
    for (const cJSON *e = s->child; e && i < n; e = e->next, i++) {
        char name[32];
        snprintf(name, sizeof name, "body.stop[%d]", i);
        if (!cJSON_IsString(e))
            return util_err(err, errlen, "%s must be a string, got %s", name, batchio_type(e));
        if (e->valuestring[0] == '\0')
            return util_err(err, errlen, "%s must not be empty", name);
        out->stop[i] = batchio_dup_string(e, name, err, errlen);
        if (!out->stop[i])
            return -1;
        out->n_stop = i + 1;
    }
    return 0;
}

/* Fields selfspec does not implement: present with anything but their
 * no-op value, the request gets a 400 naming the field, never silence.
 * (An empty tool list, best_of 1, echo false are the defaults clients send
 * and are accepted.) */
static int batchio_unsupported(const cJSON *body, char *err, size_t errlen)
{
    static const char *const never[] = {"tools", "functions", "tool_choice", "function_call", "suffix",
                                        "prediction", "audio", "modalities", "guided_json", "guided_regex",
                                        "guided_choice", "guided_grammar"};
    const cJSON *v;
    for (size_t i = 0; i < sizeof never / sizeof *never; i++) {
        if (batchio_member(body, "body.", never[i], &v, err, errlen) < 0)
            return -1;
        if (v && !(cJSON_IsArray(v) && !v->child))   /* an empty list of tools is no tool */
            return util_err(err, errlen, "body.%s is not supported", never[i]);
    }
    if (batchio_member(body, "body.", "best_of", &v, err, errlen) < 0)
        return -1;
    if (v && !(cJSON_IsNumber(v) && v->valuedouble == 1.0))
        return util_err(err, errlen, "body.best_of must be 1 (one choice per request)");
    if (batchio_member(body, "body.", "echo", &v, err, errlen) < 0)
        return -1;
    if (v && !cJSON_IsFalse(v))
        return util_err(err, errlen, "body.echo is not supported (only false)");
    return 0;
}

/* The logits processors: "presence_penalty", "frequency_penalty" ([-2, 2]),
 * "min_tokens" (vLLM's, [0, max_tokens]: checked by the caller, after
 * max_tokens), "logit_bias" ({"token id": value in [-100, 100]}). */
static int batchio_processors(const cJSON *body, batch_request *out, char *err, size_t errlen)
{
    const cJSON *pp, *fp, *mt, *lb;
    if (batchio_member(body, "body.", "presence_penalty", &pp, err, errlen) < 0 ||
        batchio_member(body, "body.", "frequency_penalty", &fp, err, errlen) < 0 ||
        batchio_member(body, "body.", "min_tokens", &mt, err, errlen) < 0 ||
        batchio_member(body, "body.", "logit_bias", &lb, err, errlen) < 0)
        return -1;
    const cJSON *pen[2] = {pp, fp};
    double *dst[2] = {&out->presence_penalty, &out->frequency_penalty};
    static const char *const name[2] = {"body.presence_penalty", "body.frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        if (!pen[i])
            continue;
        if (batchio_number(pen[i], name[i], dst[i], err, errlen) < 0)
            return -1;
        if (!(*dst[i] >= -2.0 && *dst[i] <= 2.0))
            return util_err(err, errlen, "%s must be in [-2, 2], got %g", name[i], *dst[i]);
    }
    int64_t v = 0;
    if (mt) {
        if (batchio_int(mt, "body.min_tokens", 0, INT_MAX, &v, err, errlen) < 0)
            return -1;
        out->min_tokens = (int)v;
    }
    if (!lb)
        return 0;
    if (!cJSON_IsObject(lb))
        return util_err(err, errlen, "body.logit_bias must be an object of token id -> bias");
    int n = cJSON_GetArraySize(lb);
    if (n > BATCH_MAX_LOGIT_BIAS)
        return util_err(err, errlen, "body.logit_bias has %d entries, over the limit of %d", n, BATCH_MAX_LOGIT_BIAS);
    out->bias_ids = mallocCheck((size_t)(n ? n : 1) * sizeof(int32_t));
    out->bias_vals = mallocCheck((size_t)(n ? n : 1) * sizeof(float));
    for (const cJSON *e = lb->child; e; e = e->next) {
        char *end = NULL;
        long id = strtol(e->string, &end, 10);
        if (!e->string[0] || *end || id < 0 || id > INT32_MAX || (e->string[0] == '0' && e->string[1]))
            return util_err(err, errlen, "body.logit_bias keys must be token ids (non-negative integers)");
        double d = 0;
        if (batchio_number(e, "body.logit_bias value", &d, err, errlen) < 0)
            return -1;
        if (!(d >= -100.0 && d <= 100.0))
            return util_err(err, errlen, "body.logit_bias values must be in [-100, 100], got %g", d);
        out->bias_ids[out->n_bias] = (int32_t)id;
        out->bias_vals[out->n_bias++] = (float)d;
    }
    return 0;
}

/* "response_format": {"type": "text"}, {"type": "json_object"} or
 * {"type": "json_schema", "json_schema": {"name", "schema", "strict",
 * "description"}} (OpenAI's shape; a missing schema is any JSON object). */
static int batchio_response_format(const cJSON *body, batch_request *out, char *err, size_t errlen)
{
    const cJSON *v, *type, *js, *name, *schema, *strict;
    if (batchio_member(body, "body.", "response_format", &v, err, errlen) < 0)
        return -1;
    if (!v)
        return 0;
    if (!cJSON_IsObject(v))
        return util_err(err, errlen, "body.response_format must be an object");
    if (batchio_member(v, "body.response_format.", "type", &type, err, errlen) < 0)
        return -1;
    if (!cJSON_IsString(type))
        return util_err(err, errlen, "body.response_format.type must be a string");
    if (!strcmp(type->valuestring, "text"))
        return 0;
    if (!strcmp(type->valuestring, "json_object")) {
        out->response_format = BATCH_JSON_OBJECT;
        return 0;
    }
    if (strcmp(type->valuestring, "json_schema") != 0)
        return util_err(err, errlen, "body.response_format.type must be \"text\", \"json_object\" or \"json_schema\"");
    if (batchio_member(v, "body.response_format.", "json_schema", &js, err, errlen) < 0)
        return -1;
    if (!cJSON_IsObject(js))
        return util_err(err, errlen, "body.response_format.json_schema must be an object");
    if (batchio_member(js, "body.response_format.json_schema.", "name", &name, err, errlen) < 0 ||
        batchio_member(js, "body.response_format.json_schema.", "schema", &schema, err, errlen) < 0 ||
        batchio_member(js, "body.response_format.json_schema.", "strict", &strict, err, errlen) < 0)
        return -1;
    if (!cJSON_IsString(name) || !name->valuestring[0] || strlen(name->valuestring) > 64)
        return util_err(err, errlen, "body.response_format.json_schema.name must be a string of 1 to 64 characters");
    if (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict))
        return util_err(err, errlen, "body.response_format.json_schema.strict must be a boolean");
    if (!schema) {
        out->response_format = BATCH_JSON_OBJECT;
        return 0;
    }
    if (!cJSON_IsObject(schema) && !cJSON_IsBool(schema))
        return util_err(err, errlen, "body.response_format.json_schema.schema must be an object");
    out->json_schema = cJSON_PrintUnformatted(schema);
    if (!out->json_schema)
        return util_err(err, errlen, "out of memory");
    out->response_format = BATCH_JSON_SCHEMA;
    return 0;
}

/* "logprobs" (completions: null or an integer N in [0, 20]; chat: a
 * boolean) and "top_logprobs" (chat only: [0, 20], needs logprobs true). */
static int batchio_logprobs(const cJSON *lp, const cJSON *top, batch_request *out, char *err, size_t errlen)
{
    int64_t v = 0;
    if (out->kind == BATCH_COMPLETION) {
        if (top)
            return util_err(err, errlen, "body.top_logprobs is a chat field (completions take \"logprobs\": N)");
        if (lp && !cJSON_IsNull(lp)) {
            if (batchio_int(lp, "body.logprobs", 0, BATCH_MAX_TOP_LOGPROBS, &v, err, errlen) < 0)
                return -1;
            out->want_logprobs = 1, out->top_logprobs = (int)v;
        }
        return 0;
    }
    if (lp && !cJSON_IsNull(lp) && batchio_bool(lp, "body.logprobs", &out->want_logprobs, err, errlen) < 0)
        return -1;
    if (top && !cJSON_IsNull(top)) {
        if (batchio_int(top, "body.top_logprobs", 0, BATCH_MAX_TOP_LOGPROBS, &v, err, errlen) < 0)
            return -1;
        if (!out->want_logprobs)
            return util_err(err, errlen, "body.top_logprobs needs \"logprobs\": true");
        out->top_logprobs = (int)v;
    }
    return 0;
}

/* The body's common sampling fields. stream_out NULL: "stream": true is an
 * error (batch lines); else *stream_out receives it. */
static int batchio_sampling(const cJSON *body, batch_request *out, int *stream_out, char *err, size_t errlen)
{
    const cJSON *mt, *mct, *temp, *top_p, *top_k, *seed, *stop, *n, *stream, *ieos, *model, *lp, *top_lp;
    if (batchio_member(body, "body.", "max_tokens", &mt, err, errlen) < 0 ||
        batchio_member(body, "body.", "max_completion_tokens", &mct, err, errlen) < 0 ||
        batchio_member(body, "body.", "temperature", &temp, err, errlen) < 0 ||
        batchio_member(body, "body.", "top_p", &top_p, err, errlen) < 0 ||
        batchio_member(body, "body.", "top_k", &top_k, err, errlen) < 0 ||
        batchio_member(body, "body.", "seed", &seed, err, errlen) < 0 ||
        batchio_member(body, "body.", "stop", &stop, err, errlen) < 0 ||
        batchio_member(body, "body.", "n", &n, err, errlen) < 0 ||
        batchio_member(body, "body.", "stream", &stream, err, errlen) < 0 ||
        batchio_member(body, "body.", "ignore_eos", &ieos, err, errlen) < 0 ||
        batchio_member(body, "body.", "model", &model, err, errlen) < 0 ||
        batchio_member(body, "body.", "logprobs", &lp, err, errlen) < 0 ||
        batchio_member(body, "body.", "top_logprobs", &top_lp, err, errlen) < 0)
        return -1;
    if (batchio_logprobs(lp, top_lp, out, err, errlen) < 0 || batchio_unsupported(body, err, errlen) < 0 ||
        batchio_response_format(body, out, err, errlen) < 0 || batchio_processors(body, out, err, errlen) < 0)
        return -1;
    int64_t v = 0;
    out->max_tokens = out->kind == BATCH_CHAT ? BATCH_DEFAULT_MAX_TOKENS_CHAT
                                              : BATCH_DEFAULT_MAX_TOKENS_COMPLETION;
    if (mt) {
        if (batchio_int(mt, "body.max_tokens", 1, INT_MAX, &v, err, errlen) < 0)
            return -1;
        out->max_tokens = (int)v, out->max_tokens_given = 1;
    }
    if (mct) {                               /* wins over max_tokens, as in vLLM */
        if (batchio_int(mct, "body.max_completion_tokens", 1, INT_MAX, &v, err, errlen) < 0)
            return -1;
        out->max_tokens = (int)v, out->max_tokens_given = 1;
    }
    out->temperature = BATCH_DEFAULT_TEMPERATURE;
    if (temp) {
        if (batchio_number(temp, "body.temperature", &out->temperature, err, errlen) < 0)
            return -1;
        if (!(out->temperature >= 0.0 && out->temperature <= 2.0))
            return util_err(err, errlen, "body.temperature must be in [0, 2], got %g", out->temperature);
    }
    out->top_p = BATCH_DEFAULT_TOP_P;
    if (top_p) {
        if (batchio_number(top_p, "body.top_p", &out->top_p, err, errlen) < 0)
            return -1;
        if (!(out->top_p > 0.0 && out->top_p <= 1.0))
            return util_err(err, errlen, "body.top_p must be in (0, 1], got %g", out->top_p);
    }
    if (top_k) {
        double d = 0;
        if (batchio_number(top_k, "body.top_k", &d, err, errlen) < 0)
            return -1;
        if (d != floor(d))
            return util_err(err, errlen, "body.top_k must be an integer, got %g", d);
        if (d < -1 || d > INT_MAX)
            return util_err(err, errlen, "body.top_k must be -1 or 0 (off) or in [1, %d], got %g",
                            INT_MAX, d);
        out->top_k = d < 1 ? 0 : (int)d;
    }
    if (seed) {
        if (batchio_int(seed, "body.seed", 0, BATCH_MAX_SEED, &v, err, errlen) < 0)
            return -1;
        out->has_seed = 1, out->seed = (uint64_t)v;
    }
    if (batchio_stop(stop, out, err, errlen) < 0)
        return -1;
    out->n = 1;
    if (n) {
        if (batchio_int(n, "body.n", 1, BATCH_MAX_N, &v, err, errlen) < 0)
            return -1;
        out->n = (int)v;
    }
    if (stream) {
        int b = 0;
        if (batchio_bool(stream, "body.stream", &b, err, errlen) < 0)
            return -1;
        if (stream_out)
            *stream_out = b;
        else if (b)
            return util_err(err, errlen, "body.stream must be false (batch output is not streamed)");
    }
    if (ieos && batchio_bool(ieos, "body.ignore_eos", &out->ignore_eos, err, errlen) < 0)
        return -1;
    if (out->min_tokens > out->max_tokens)
        return util_err(err, errlen, "body.min_tokens (%d) must not exceed max_tokens (%d)", out->min_tokens,
                        out->max_tokens);
    if (model && !(out->model = batchio_dup_string(model, "body.model", err, errlen)))
        return -1;
    return 0;
}

/* Everything of a parsed line after custom_id. */
static int batchio_request(const cJSON *root, batch_request *out, char *err, size_t errlen)
{
    const cJSON *method, *url, *body;
    char q[BATCHIO_QUOTE_MAX + 8];
    if (batchio_member(root, "", "method", &method, err, errlen) < 0 ||
        batchio_member(root, "", "url", &url, err, errlen) < 0 ||
        batchio_member(root, "", "body", &body, err, errlen) < 0)
        return -1;
    if (!method)
        return util_err(err, errlen, "missing method");
    if (!cJSON_IsString(method))
        return util_err(err, errlen, "method must be a string, got %s", batchio_type(method));
    if (strcmp(method->valuestring, "POST") != 0)
        return util_err(err, errlen, "method must be \"POST\", got '%s'",
                        batchio_quote(method->valuestring, q, sizeof q));
    if (!url)
        return util_err(err, errlen, "missing url");
    if (!cJSON_IsString(url))
        return util_err(err, errlen, "url must be a string, got %s", batchio_type(url));
    if (strcmp(url->valuestring, "/v1/completions") == 0)
        out->kind = BATCH_COMPLETION;
    else if (strcmp(url->valuestring, "/v1/chat/completions") == 0)
        out->kind = BATCH_CHAT;
    else
        return util_err(err, errlen,
                        "unknown url '%s' (supported: /v1/completions, /v1/chat/completions)",
                        batchio_quote(url->valuestring, q, sizeof q));
    if (!body)
        return util_err(err, errlen, "missing body");
    if (!cJSON_IsObject(body))
        return util_err(err, errlen, "body must be an object, got %s", batchio_type(body));
    if (out->kind == BATCH_COMPLETION ? batchio_prompt(body, out, err, errlen) < 0
                                      : batchio_messages(body, out, err, errlen) < 0)
        return -1;
    return batchio_sampling(body, out, NULL, err, errlen);
}

static int batchio_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

int batch_parse_line(const char *line, size_t len, batch_request *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    if (!line)
        return util_err(err, errlen, "no line");
    if (len > 0 && line[len - 1] == '\n') {
        len--;
        if (len > 0 && line[len - 1] == '\r')
            len--;
    }
    if (len > BATCH_MAX_LINE)
        return util_err(err, errlen, "line is %zu bytes, over the limit of %u", len, BATCH_MAX_LINE);
    if (batchio_blank(line, len))
        return 1;
    const char *nul = memchr(line, '\0', len);
    if (nul)
        return util_err(err, errlen, "line holds a NUL byte at byte %zu", (size_t)(nul - line));

    char *buf = mallocCheck(len + 1);
    memcpy(buf, line, len);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(buf, &end, 1);
    int rc = -1;
    if (!root) {
        size_t at = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        util_err(err, errlen, "line is not JSON (error near byte %zu)", at);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        util_err(err, errlen, "line is not a JSON object (got %s)", batchio_type(root));
        goto done;
    }
    size_t bad_at = 0, nul_at = 0;
    int utf8_ok = batchio_utf8_ok(buf, len, &bad_at);
    int has_nul = batchio_nul_escape(buf, len, &nul_at);

    const cJSON *cid;
    if (batchio_member(root, "", "custom_id", &cid, err, errlen) < 0)
        goto done;
    if (!cid) {
        util_err(err, errlen, "missing custom_id");
        goto done;
    }
    if (!cJSON_IsString(cid)) {
        util_err(err, errlen, "custom_id must be a string, got %s", batchio_type(cid));
        goto done;
    }
    if (!has_nul) {
        out->custom_id = batchio_dup_string(cid, "custom_id", err, errlen);
        if (!out->custom_id)
            goto done;
    }
    if (!utf8_ok) {
        util_err(err, errlen, "line is not valid UTF-8 (at byte %zu)", bad_at);
        goto done;
    }
    if (has_nul) {
        util_err(err, errlen, "strings may not hold \\u0000 (at byte %zu)", nul_at);
        goto done;
    }
    rc = batchio_request(root, out, err, errlen);
done:
    cJSON_Delete(root);
    free(buf);
    if (rc != 0) {                           /* keep only custom_id */
        char *id = out->custom_id;
        out->custom_id = NULL;
        batch_request_free(out);
        out->custom_id = id;
    }
    return rc;
}

int batch_parse_body(const char *body, size_t len, batch_kind kind, const char *custom_id, batch_request *out,
                     int *stream, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    *stream = 0;
    if (err && errlen)
        err[0] = '\0';
    if (!body || !custom_id)
        return util_err(err, errlen, "no body");
    if (kind != BATCH_COMPLETION && kind != BATCH_CHAT)
        return util_err(err, errlen, "unknown request kind %d", (int)kind);
    if (len > BATCH_MAX_LINE)
        return util_err(err, errlen, "body is %zu bytes, over the limit of %u", len, BATCH_MAX_LINE);
    const char *nul = memchr(body, '\0', len);
    if (nul)
        return util_err(err, errlen, "body holds a NUL byte at byte %zu", (size_t)(nul - body));
    size_t at = 0;
    if (!batchio_utf8_ok(body, len, &at))
        return util_err(err, errlen, "body is not valid UTF-8 (at byte %zu)", at);
    if (batchio_nul_escape(body, len, &at))
        return util_err(err, errlen, "strings may not hold \\u0000 (at byte %zu)", at);
    char *buf = mallocCheck(len + 1);
    memcpy(buf, body, len);
    buf[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(buf, &end, 1);
    int rc = -1;
    out->kind = kind;
    if (!root) {
        size_t e = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        util_err(err, errlen, "body is not JSON (error near byte %zu)", e);
    } else if (!cJSON_IsObject(root)) {
        util_err(err, errlen, "body is not a JSON object (got %s)", batchio_type(root));
    } else if ((kind == BATCH_COMPLETION ? batchio_prompt(root, out, err, errlen)
                                         : batchio_messages(root, out, err, errlen)) == 0 &&
               batchio_sampling(root, out, stream, err, errlen) == 0) {
        out->custom_id = strdup(custom_id);
        rc = out->custom_id ? 0 : util_err(err, errlen, "out of memory");
    }
    cJSON_Delete(root);
    free(buf);
    if (rc != 0) {
        batch_request_free(out);
        *stream = 0;
    }
    return rc;
}

void batch_request_free(batch_request *r)
{
    if (!r)
        return;
    free(r->custom_id);
    free(r->model);
    free(r->prompt);
    free(r->json_schema);
    free(r->bias_ids);
    free(r->bias_vals);
    if (r->messages)
        for (int i = 0; i < r->n_messages; i++)
            free(r->messages[i].content);
    free(r->messages);
    for (int i = 0; i < r->n_stop && i < BATCH_MAX_STOP; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------- id set */

struct batch_idset {
    char **keys;              /* cap slots, NULL = empty */
    uint64_t *hashes;
    size_t cap;               /* a power of two */
    size_t count;
};

#define BATCHIO_SET_MIN 64

batch_idset *batch_idset_new(void)
{
    batch_idset *s = callocCheck(1, sizeof *s);
    s->cap = BATCHIO_SET_MIN;
    s->keys = callocCheck(s->cap, sizeof *s->keys);
    s->hashes = callocCheck(s->cap, sizeof *s->hashes);
    return s;
}

void batch_idset_free(batch_idset *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cap; i++)
        free(s->keys[i]);
    free(s->keys);
    free(s->hashes);
    free(s);
}

/* The slot holding id, or the empty slot where it would go. */
static size_t batchio_set_slot(const batch_idset *s, const char *id, uint64_t h)
{
    size_t mask = s->cap - 1, i = (size_t)h & mask;
    while (s->keys[i] && (s->hashes[i] != h || strcmp(s->keys[i], id) != 0))
        i = (i + 1) & mask;
    return i;
}

static void batchio_set_grow(batch_idset *s)
{
    if (s->cap > SIZE_MAX / 2 / sizeof *s->keys) {
        fprintf(stderr, "selfspec: batch id set too large\n");
        exit(1);
    }
    batch_idset old = *s;
    s->cap = old.cap * 2;
    s->keys = callocCheck(s->cap, sizeof *s->keys);
    s->hashes = callocCheck(s->cap, sizeof *s->hashes);
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.keys[i])
            continue;
        size_t j = batchio_set_slot(s, old.keys[i], old.hashes[i]);
        s->keys[j] = old.keys[i];
        s->hashes[j] = old.hashes[i];
    }
    free(old.keys);
    free(old.hashes);
}

int batch_idset_add(batch_idset *s, const char *id)
{
    uint64_t h = batchio_hash(id, strlen(id), BATCHIO_FNV_BASIS);
    size_t i = batchio_set_slot(s, id, h);
    if (s->keys[i])
        return 1;
    if ((s->count + 1) * 4 > s->cap * 3) {   /* load <= 3/4 */
        batchio_set_grow(s);
        i = batchio_set_slot(s, id, h);
    }
    size_t n = strlen(id);
    s->keys[i] = mallocCheck(n + 1);
    memcpy(s->keys[i], id, n + 1);
    s->hashes[i] = h;
    s->count++;
    return 0;
}

int batch_idset_has(const batch_idset *s, const char *id)
{
    uint64_t h = batchio_hash(id, strlen(id), BATCHIO_FNV_BASIS);
    return s->keys[batchio_set_slot(s, id, h)] != NULL;
}

size_t batch_idset_count(const batch_idset *s)
{
    return s->count;
}

/* ------------------------------------------------------- output lines */

/* Add key: s (invalid UTF-8 replaced) to o; -1 on out of memory. */
static int batchio_add_str(cJSON *o, const char *key, const char *s)
{
    char *fixed = batchio_utf8_fix(s ? s : "");
    cJSON *v = fixed ? cJSON_AddStringToObject(o, key, fixed) : NULL;
    free(fixed);
    return v ? 0 : -1;
}

static int batchio_add_num(cJSON *o, const char *key, double d)
{
    return cJSON_AddNumberToObject(o, key, d) ? 0 : -1;
}

/* A token's bytes as a JSON string (invalid UTF-8 as U+FFFD). */
static cJSON *batchio_token_str(const char *s, size_t len)
{
    char *z = mallocCheck(len + 1);
    memcpy(z, s, len);
    z[len] = '\0';
    char *fixed = batchio_utf8_fix(z);
    free(z);
    cJSON *v = fixed ? cJSON_CreateString(fixed) : NULL;
    free(fixed);
    return v;
}

/* A chat logprob entry: {"token", "logprob", "bytes"}; top entries without
 * their own "top_logprobs". */
static cJSON *batchio_chat_entry(const char *s, size_t len, float lp)
{
    cJSON *o = cJSON_CreateObject(), *bytes = cJSON_CreateArray(), *tok = batchio_token_str(s, len);
    int bad = !o || !bytes || !tok;
    if (!bad) {
        cJSON_AddItemToObject(o, "token", tok);
        tok = NULL;
        bad |= batchio_add_num(o, "logprob", lp);
        for (size_t i = 0; i < len && !bad; i++)
            bad |= cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)s[i])) ? 0 : 1;
        cJSON_AddItemToObject(o, "bytes", bytes);
        bytes = NULL;
    }
    cJSON_Delete(tok);
    cJSON_Delete(bytes);
    if (bad) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* The choice's "logprobs" member (batch_format_result's contract). */
static int batchio_add_logprobs(cJSON *choice, const batch_logprob *lps, int n_lps, int chat)
{
    cJSON *lp = cJSON_AddObjectToObject(choice, "logprobs");
    if (!lp)
        return -1;
    int bad = 0;
    if (chat) {
        cJSON *content = cJSON_AddArrayToObject(lp, "content");
        bad |= content ? 0 : -1;
        for (int i = 0; i < n_lps && !bad; i++) {
            const batch_logprob *t = &lps[i];
            cJSON *e = batchio_chat_entry(t->text, t->len, t->logprob), *tops = cJSON_CreateArray();
            bad |= e && tops ? 0 : -1;
            for (int k = 0; k < t->n_top && !bad; k++) {
                cJSON *te = batchio_chat_entry(t->top_text[k], t->top_len[k], t->top_lp[k]);
                bad |= te && cJSON_AddItemToArray(tops, te) ? 0 : -1;
            }
            if (e && tops) {
                cJSON_AddItemToObject(e, "top_logprobs", tops);
                tops = NULL;
            }
            cJSON_Delete(tops);
            bad |= e && cJSON_AddItemToArray(content, e) ? 0 : -1;
        }
        return bad;
    }
    cJSON *tokens = cJSON_AddArrayToObject(lp, "tokens"), *tlp = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(lp, "top_logprobs"), *off = cJSON_AddArrayToObject(lp, "text_offset");
    bad |= tokens && tlp && tops && off ? 0 : -1;
    for (int i = 0; i < n_lps && !bad; i++) {
        const batch_logprob *t = &lps[i];
        cJSON *ts = batchio_token_str(t->text, t->len), *d = cJSON_CreateObject();
        bad |= ts && cJSON_AddItemToArray(tokens, ts) ? 0 : -1;
        bad |= cJSON_AddItemToArray(tlp, cJSON_CreateNumber(t->logprob)) ? 0 : -1;
        bad |= cJSON_AddItemToArray(off, cJSON_CreateNumber((double)t->text_offset)) ? 0 : -1;
        /* the top N, keyed by token text (a later equal text keeps the first's value) */
        for (int k = 0; k < t->n_top && d && !bad; k++) {
            cJSON *key = batchio_token_str(t->top_text[k], t->top_len[k]);
            if (key && !cJSON_GetObjectItemCaseSensitive(d, key->valuestring))
                bad |= cJSON_AddNumberToObject(d, key->valuestring, t->top_lp[k]) ? 0 : -1;
            bad |= key ? 0 : -1;
            cJSON_Delete(key);
        }
        bad |= d && cJSON_AddItemToArray(tops, d) ? 0 : -1;
    }
    return bad;
}

char *batch_format_logprobs(const batch_logprob *lps, int n_lps, int chat)
{
    cJSON *holder = cJSON_CreateObject();
    char *s = NULL;
    if (holder && batchio_add_logprobs(holder, lps, n_lps, chat) == 0)
        s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(holder, "logprobs"));
    cJSON_Delete(holder);
    return s;
}

/* root printed unformatted plus '\n', malloc'd; NULL (err) on failure. */
static char *batchio_print(cJSON *root, char *err, size_t errlen)
{
    char *s = cJSON_PrintUnformatted(root);
    if (!s) {
        util_err(err, errlen, "out of memory formatting an output line");
        return NULL;
    }
    size_t n = strlen(s), h = strlen(BATCHIO_LINE_HEAD);
    if (n >= BATCH_MAX_OUTPUT_LINE || n < h || memchr(s, '\n', n) || memcmp(s, BATCHIO_LINE_HEAD, h) != 0) {
        util_err(err, errlen, n >= BATCH_MAX_OUTPUT_LINE ? "output line of %zu bytes is over the limit"
                                                        : "output line of %zu bytes is malformed", n);
        cJSON_free(s);
        return NULL;
    }
    char *line = mallocCheck(n + 2);
    memcpy(line, s, n);
    line[n] = '\n';
    line[n + 1] = '\0';
    cJSON_free(s);
    return line;
}

/* The envelope: {"id", "custom_id", "response": {"status_code",
 * "request_id", "body": <detached>}}; "error" is added by the caller. */
static cJSON *batchio_envelope(const char *custom_id, int status,
                               cJSON **response, const char *hex)
{
    char id[32];
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    int bad = 0;
    snprintf(id, sizeof id, "batch_req_%s", hex);
    bad |= batchio_add_str(root, "id", id);
    if (custom_id)
        bad |= batchio_add_str(root, "custom_id", custom_id);
    else
        bad |= cJSON_AddNullToObject(root, "custom_id") ? 0 : -1;
    *response = cJSON_AddObjectToObject(root, "response");
    if (!*response) {
        cJSON_Delete(root);
        return NULL;
    }
    snprintf(id, sizeof id, "req_%s", hex);
    bad |= batchio_add_num(*response, "status_code", status);
    bad |= batchio_add_str(*response, "request_id", id);
    if (bad) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

char *batch_format_result(const batch_result *r, char *err, size_t errlen)
{
    batch_choice one = {r ? r->text : NULL, r ? r->finish : BATCH_FINISH_STOP, r ? r->logprobs : NULL,
                        r ? r->n_logprobs : 0};
    const batch_choice *chs = r && r->n_choices > 0 ? r->choices : &one;
    int n_ch = r && r->n_choices > 0 ? r->n_choices : 1;
    int texts_ok = r && r->n_choices <= BATCH_MAX_N;
    for (int i = 0; i < n_ch && texts_ok; i++)
        texts_ok = chs[i].text && (chs[i].finish == BATCH_FINISH_STOP || chs[i].finish == BATCH_FINISH_LENGTH);
    if (!r || !r->custom_id || !texts_ok) {
        util_err(err, errlen, "batch_format_result: custom_id, each choice's text and finish reason are required");
        return NULL;
    }
    if (r->kind != BATCH_COMPLETION && r->kind != BATCH_CHAT) {
        util_err(err, errlen, "batch_format_result: unknown kind %d", (int)r->kind);
        return NULL;
    }
    if (r->created < 0 || r->created >= BATCHIO_MAX_CREATED) {
        util_err(err, errlen, "batch_format_result: created %lld is out of range", (long long)r->created);
        return NULL;
    }
    if (r->prompt_tokens < 0 || r->completion_tokens < 0 || r->prompt_tokens > INT32_MAX ||
        r->completion_tokens > INT32_MAX) {
        util_err(err, errlen, "batch_format_result: token counts out of range");
        return NULL;
    }
    char hex[17], id[40];
    batch_output_hex(r->custom_id, 0, hex);
    cJSON *response = NULL;
    cJSON *root = batchio_envelope(r->custom_id, 200, &response, hex);
    if (!root) {
        util_err(err, errlen, "out of memory formatting an output line");
        return NULL;
    }
    int chat = r->kind == BATCH_CHAT, bad = 0;
    cJSON *body = cJSON_AddObjectToObject(response, "body");
    bad |= cJSON_AddNullToObject(root, "error") ? 0 : -1;
    if (!body) {
        bad = -1;
        goto out;
    }
    snprintf(id, sizeof id, "%s%s", chat ? "chatcmpl-" : "cmpl-", hex);
    bad |= batchio_add_str(body, "id", id);
    bad |= batchio_add_str(body, "object", chat ? "chat.completion" : "text_completion");
    bad |= batchio_add_num(body, "created", (double)r->created);
    bad |= batchio_add_str(body, "model", r->model ? r->model : "");
    cJSON *choices = cJSON_AddArrayToObject(body, "choices");
    for (int i = 0; i < n_ch && !bad; i++) {
        const batch_choice *ch = &chs[i];
        cJSON *choice = cJSON_CreateObject();
        if (!choices || !choice || !cJSON_AddItemToArray(choices, choice)) {
            cJSON_Delete(choice);
            bad = -1;
            goto out;
        }
        bad |= batchio_add_num(choice, "index", i);
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(choice, "message");
            bad |= msg ? 0 : -1;
            if (msg) {
                bad |= batchio_add_str(msg, "role", "assistant");
                bad |= batchio_add_str(msg, "content", ch->text);
            }
        } else {
            bad |= batchio_add_str(choice, "text", ch->text);
        }
        if (ch->logprobs)
            bad |= batchio_add_logprobs(choice, ch->logprobs, ch->n_logprobs, chat);
        else
            bad |= cJSON_AddNullToObject(choice, "logprobs") ? 0 : -1;
        bad |= batchio_add_str(choice, "finish_reason", ch->finish == BATCH_FINISH_STOP ? "stop" : "length");
    }
    cJSON *usage = cJSON_AddObjectToObject(body, "usage");
    bad |= usage ? 0 : -1;
    if (usage) {
        bad |= batchio_add_num(usage, "prompt_tokens", r->prompt_tokens);
        bad |= batchio_add_num(usage, "completion_tokens", r->completion_tokens);
        bad |= batchio_add_num(usage, "total_tokens", (double)r->prompt_tokens + r->completion_tokens);
        cJSON *pdet = r->usage_details ? cJSON_AddObjectToObject(usage, "prompt_tokens_details") : NULL;
        bad |= r->usage_details && !pdet ? -1 : 0;
        if (pdet)
            bad |= batchio_add_num(pdet, "cached_tokens", (double)r->cached_tokens);
        cJSON *det = r->usage_details ? cJSON_AddObjectToObject(usage, "completion_tokens_details") : NULL;
        bad |= r->usage_details && !det ? -1 : 0;
        if (det) {
            bad |= batchio_add_num(det, "accepted_prediction_tokens", (double)r->accepted_prediction_tokens);
            bad |= batchio_add_num(det, "rejected_prediction_tokens", (double)r->rejected_prediction_tokens);
        }
    }
    if (r->system_fingerprint)
        bad |= batchio_add_str(body, "system_fingerprint", r->system_fingerprint);
    else
        bad |= cJSON_AddNullToObject(body, "system_fingerprint") ? 0 : -1;
out:
    if (bad) {
        cJSON_Delete(root);
        util_err(err, errlen, "out of memory formatting an output line");
        return NULL;
    }
    char *line = batchio_print(root, err, errlen);
    cJSON_Delete(root);
    return line;
}

char *batch_format_error(const char *custom_id, size_t line_no, int status_code, const char *message)
{
    if (status_code < 100 || status_code > 599)
        return NULL;
    char hex[17];
    batch_output_hex(custom_id, line_no, hex);
    cJSON *response = NULL;
    cJSON *root = batchio_envelope(custom_id, status_code, &response, hex);
    if (!root)
        return NULL;
    int bad = cJSON_AddNullToObject(response, "body") ? 0 : -1;
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    bad |= e ? 0 : -1;
    if (e) {
        bad |= batchio_add_str(e, "message", message ? message : "");
        bad |= batchio_add_str(e, "type", status_code < 500 ? "invalid_request_error" : "server_error");
        bad |= cJSON_AddNullToObject(e, "param") ? 0 : -1;
        bad |= cJSON_AddNullToObject(e, "code") ? 0 : -1;
    }
    char *line = bad ? NULL : batchio_print(root, NULL, 0);
    cJSON_Delete(root);
    return line;
}

/* --------------------------------------------------------------- resume */

/* Check one complete output line (line[0..len), no '\n') and add its
 * custom_id to done; -1 with the reason in why. */
static int batchio_scan_line(const char *line, size_t len, batch_idset *done, char *why, size_t whylen)
{
    size_t at;
    if (len == 0)
        return util_err(why, whylen, "it is empty");
    if (memchr(line, '\0', len))
        return util_err(why, whylen, "it holds a NUL byte");
    if (!batchio_utf8_ok(line, len, &at))
        return util_err(why, whylen, "invalid UTF-8 at byte %zu", at);
    if (batchio_nul_escape(line, len, &at))
        return util_err(why, whylen, "a \\u0000 escape at byte %zu", at);
    char *buf = mallocCheck(len + 1);
    memcpy(buf, line, len);
    buf[len] = '\0';
    cJSON *root = cJSON_ParseWithOpts(buf, NULL, 1);
    int rc = -1;
    const cJSON *id, *cid, *response, *error;
    if (!root || !cJSON_IsObject(root)) {
        util_err(why, whylen, root ? "not a JSON object" : "not JSON");
        goto done;
    }
    id = cJSON_GetObjectItemCaseSensitive(root, "id");
    cid = cJSON_GetObjectItemCaseSensitive(root, "custom_id");
    response = cJSON_GetObjectItemCaseSensitive(root, "response");
    error = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (!cJSON_IsString(id) || strncmp(id->valuestring, "batch_req_", 10) != 0) {
        util_err(why, whylen, "no \"id\": \"batch_req_...\"");
        goto done;
    }
    if (!cid || !(cJSON_IsString(cid) || cJSON_IsNull(cid))) {
        util_err(why, whylen, "no \"custom_id\" string or null");
        goto done;
    }
    if (!response || !(cJSON_IsObject(response) || cJSON_IsNull(response)) || !error) {
        util_err(why, whylen, "no \"response\" and \"error\"");
        goto done;
    }
    if (cJSON_IsString(cid))
        batch_idset_add(done, cid->valuestring);
    rc = 0;
done:
    cJSON_Delete(root);
    free(buf);
    return rc;
}

/* 1 when the torn tail t[0..n) may be the start of an output line. */
static int batchio_tail_ok(const char *t, size_t n)
{
    size_t h = strlen(BATCHIO_LINE_HEAD);
    return n < BATCH_MAX_OUTPUT_LINE && memcmp(t, BATCHIO_LINE_HEAD, n < h ? n : h) == 0;
}

/* The scan's messages, shared by the file and the buffer variants. */
static int batchio_scan_fail_line(const char *name, size_t line_no, const char *why, char *err,
                                  size_t errlen)
{
    return util_err(err, errlen,
                    "%s: line %zu is not a batch output line (%s); not a file written by selfspec batch?",
                    name, line_no, why);
}

static int batchio_scan_fail_tail(const char *name, size_t n, char *err, size_t errlen)
{
    return util_err(err, errlen,
                    "%s: ends with %zu bytes without a newline that do not start an output line; "
                    "not a file written by selfspec batch?", name, n);
}

int batch_scan_buffer(const char *data, size_t len, batch_idset *done, size_t *valid_bytes,
                      size_t *n_lines, char *err, size_t errlen)
{
    size_t pos = 0, lines = 0;
    char why[160];
    *valid_bytes = 0;
    if (n_lines)
        *n_lines = 0;
    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        if (!nl)
            break;
        size_t n = (size_t)(nl - (data + pos));
        if (n >= BATCH_MAX_OUTPUT_LINE)
            return batchio_scan_fail_line("output", lines + 1, "too long", err, errlen);
        if (batchio_scan_line(data + pos, n, done, why, sizeof why) < 0)
            return batchio_scan_fail_line("output", lines + 1, why, err, errlen);
        pos += n + 1;
        lines++;
    }
    if (pos < len && !batchio_tail_ok(data + pos, len - pos))
        return batchio_scan_fail_tail("output", len - pos, err, errlen);
    *valid_bytes = pos;
    if (n_lines)
        *n_lines = lines;
    return 0;
}

int batch_scan_output(const char *path, batch_idset *done, off_t *valid_bytes, size_t *n_lines,
                      char *err, size_t errlen)
{
    *valid_bytes = 0;
    if (n_lines)
        *n_lines = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return util_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return util_err(err, errlen, "'%s' is not a regular file (cannot resume into it)", path);
    }
    char *chunk = mallocCheck(BATCHIO_SCAN_CHUNK);
    char *line = NULL, why[160];
    size_t cap = 0, n = 0, lines = 0;
    off_t pos = 0;                           /* start of the current line */
    int rc = -1;
    for (;;) {
        ssize_t got = read(fd, chunk, BATCHIO_SCAN_CHUNK);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            util_err(err, errlen, "read error on '%s': %s", path, strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        size_t off = 0;
        while (off < (size_t)got) {
            const char *nl = memchr(chunk + off, '\n', (size_t)got - off);
            size_t seg = nl ? (size_t)(nl - (chunk + off)) : (size_t)got - off;
            if (seg >= BATCH_MAX_OUTPUT_LINE - n) {
                batchio_scan_fail_line(path, lines + 1, "too long", err, errlen);
                goto out;
            }
            if (n + seg > cap) {
                size_t nc = cap ? cap : 4096;
                while (nc < n + seg)
                    nc *= 2;
                char *nb = realloc(line, nc);
                if (!nb) {
                    util_err(err, errlen, "out of memory scanning '%s'", path);
                    goto out;
                }
                line = nb, cap = nc;
            }
            memcpy(line + n, chunk + off, seg);
            n += seg;
            off += seg;
            if (!nl)
                break;
            off++;                           /* the newline */
            if (batchio_scan_line(line, n, done, why, sizeof why) < 0) {
                batchio_scan_fail_line(path, lines + 1, why, err, errlen);
                goto out;
            }
            pos += (off_t)n + 1;
            lines++;
            n = 0;
        }
    }
    if (n > 0 && !batchio_tail_ok(line, n)) {
        batchio_scan_fail_tail(path, n, err, errlen);
        goto out;
    }
    *valid_bytes = pos;
    if (n_lines)
        *n_lines = lines;
    rc = 0;
out:
    free(chunk);
    free(line);
    close(fd);
    return rc;
}
