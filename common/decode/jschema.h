/*
 * jschema.h - JSON output constraints: a JSON Schema (a documented subset)
 * compiled into a byte-level pushdown matcher, the automaton that
 * `response_format` decoding walks (decode/grammar.h lifts it to tokens).
 *
 * What the matcher accepts is JSON in one fixed layout, Python's
 * json.dumps default: ", " between members and items, ": " after a key, no
 * other whitespace. A fixed layout keeps the model from looping on
 * whitespace, and makes every key, colon, comma and closing bracket the
 * only possible continuation where the schema decides it -- the forced
 * text (js_forced) that speculation proposes for free. Object members
 * come in the order the schema lists them (optional ones may be left
 * out), as xgrammar and llama.cpp's json-schema grammars do.
 *
 * The subset (anything else in a schema is an error naming it, never
 * silence):
 *   type: object, array, string, number, integer, boolean, null, or a list
 *     of these; no type (and no other keyword): any JSON value
 *   object: properties, required, additionalProperties (false; absent
 *     means false when properties are given); an object without
 *     properties takes any keys and values
 *   array: items, minItems, maxItems (prefixItems / tuples: no)
 *   string: minLength, maxLength (code points); pattern and format: no
 *   number, integer: at most 15 digits before and after the point, an
 *     exponent of up to 3 digits; minimum, maximum, multipleOf: no
 *   enum, const: any JSON values (matched as their compact text in the
 *     layout above)
 *   anyOf (and oneOf where its branches are disjoint: it is read as anyOf)
 *   $ref to "#/$defs/NAME" or "#/definitions/NAME", not recursive
 *   annotations ignored: title, description, default, examples, $schema,
 *     $id, $comment, strict, deprecated, readOnly, writeOnly
 * Limits, each an error when exceeded: JS_MAX_NODES nodes, JS_MAX_PROPS
 * properties per object, nesting of JS_MAX_DEPTH - 1, JS_MAX_CFG
 * alternatives alive at once (anyOf inside anyOf multiplies), literal
 * texts of JS_MAX_LITERAL bytes, JS_MAX_SCHEMA bytes of schema text.
 * "any JSON" values nest up to the same depth; deeper containers are not
 * offered.
 *
 * Strings are valid UTF-8 (no surrogates, no overlong forms), control
 * characters only escaped, \u escapes not surrogates. Thread-safety: a
 * compiled jschema is read-only; each sequence has its own js_state.
 */
#ifndef SELFSPEC_JSCHEMA_H
#define SELFSPEC_JSCHEMA_H

#include <stddef.h>
#include <stdint.h>

#define JS_MAX_NODES 4096
#define JS_MAX_PROPS 64
#define JS_MAX_DEPTH 24
#define JS_MAX_CFG 8
#define JS_MAX_LITERAL 4096
#define JS_MAX_SCHEMA (256u << 10)
#define JS_MAX_NUM_DIGITS 15
#define JS_MAX_EXP_DIGITS 3

typedef struct jschema jschema;

/* One frame of a matcher stack: a value being read. */
typedef struct {
    uint16_t node;
    uint8_t mode, sub;
    uint16_t idx;              /* object: the next property allowed; key: the chosen one */
    uint16_t n;                /* string: continuation bytes left / hex digits seen */
    uint32_t pos;              /* chars of a key or literal, code points of a string, items, digits */
    uint64_t m;                /* key: candidate properties; literal: [lo, hi); string: byte range / \u value */
} js_frame;

/* One way of having read the text so far. */
typedef struct {
    uint8_t depth;             /* 0: the document is complete */
    js_frame f[JS_MAX_DEPTH];
} js_cfg;

/* Where the matcher is: every configuration still alive (anyOf keeps
 * several). n == 0: dead (never reached by text js_step accepted). */
typedef struct {
    uint8_t n;
    js_cfg c[JS_MAX_CFG];
} js_state;

/* Compile a schema given as JSON text (len bytes). any_json: ignore
 * schema, accept any JSON object ({"type": "json_object"}). Returns 0, or
 * -1 with a one-line reason in err ("schema.properties.age: 'minimum' is
 * not supported"). */
int jschema_compile(jschema **out, const char *schema, size_t len, int any_json, char *err, size_t errlen);
void jschema_free(jschema *s);

/* The state before any text. */
void js_start(const jschema *s, js_state *st);

/* Copy only what is in use (a js_state is large; its used part small). */
void js_copy(js_state *dst, const js_state *src);

/* Feed one byte. Returns 1 when the text so far is still a prefix of some
 * accepted document (st advanced), 0 when not (st is then dead: n == 0). */
int js_step(const jschema *s, js_state *st, uint8_t byte);

/* js_step from src into dst (src unchanged; they must differ). */
int js_step_into(const jschema *s, const js_state *src, js_state *dst, uint8_t byte);

/* Feed len bytes; 1 when every byte was accepted. */
int js_feed(const jschema *s, js_state *st, const char *bytes, size_t len);

/* 1 when the text so far is a complete accepted document. */
int js_accepting(const jschema *s, const js_state *st);

/* 1 when no byte may follow (the document is complete and cannot grow). */
int js_finished(const jschema *s, const js_state *st);

/* 1 when st is inside one string's text (one configuration, between
 * characters): then any whole UTF-8 characters other than '"', '\\' and
 * control characters are allowed, up to *room more code points
 * (UINT32_MAX: no maxLength), and leave st inside the string. */
int js_string_room(const jschema *s, const js_state *st, uint32_t *room);

/* The forced continuation: the longest text (at most cap bytes) such that
 * at each byte exactly one byte is allowed and the document cannot end
 * there. Returns its length (0: a choice is next). */
size_t js_forced(const jschema *s, const js_state *st, char *out, size_t cap);

#endif
