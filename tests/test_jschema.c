/*
 * test_jschema.c - the JSON Schema compiler and byte matcher
 * (common/decode/jschema.h):
 *   - documents accepted and refused, byte by byte, in the fixed layout;
 *   - the forced text where the schema leaves one continuation;
 *   - every unsupported keyword, a recursive $ref, too many alternatives,
 *     too deep a nesting, a huge enum: an error naming the problem;
 *   - the fuzzer's seeds (tests/fuzz/schema_seeds/: the schema suite and
 *     hostile schemas) through the fuzz target's walk, each in bounded time.
 * The schema suite's random documents are validated by the jsonschema
 * package in tests/test_schema.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decode/jschema.h"
#include "fuzz/schema_walk.h"

#define SEEDS_DIR "tests/fuzz/schema_seeds"

static jschema *compile_ok(const char *schema)
{
    char err[512] = "";
    jschema *s = NULL;
    int rc = jschema_compile(&s, schema, strlen(schema), 0, err, sizeof err);
    if (rc != 0)
        fail_msg("schema %s: %s", schema, err);
    return s;
}

/* 1: every byte of text accepted and the end accepting; 0: a byte refused
 * (or the end not accepting) */
static int accepts(const jschema *s, const char *text)
{
    static js_state st;
    js_start(s, &st);
    return js_feed(s, &st, text, strlen(text)) && js_accepting(s, &st);
}

static void test_object_layout(void **state)
{
    (void)state;
    jschema *s = compile_ok("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                            "\"age\":{\"type\":\"integer\"},\"nick\":{\"type\":\"string\",\"maxLength\":3}},"
                            "\"required\":[\"name\",\"age\"],\"additionalProperties\":false}");
    assert_true(accepts(s, "{\"name\": \"Ann\", \"age\": 31}"));
    assert_true(accepts(s, "{\"name\": \"Ann\", \"age\": 31, \"nick\": \"An\"}"));
    assert_true(accepts(s, "{\"name\": \"\\u00e9\\n\\\"\", \"age\": -0}"));
    assert_true(accepts(s, "{\"name\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\", \"age\": 7}"));
    assert_false(accepts(s, "{\"name\":\"Ann\", \"age\": 31}"));       /* the layout: ": " */
    assert_false(accepts(s, "{\"name\": \"Ann\",\"age\": 31}"));       /* ", " */
    assert_false(accepts(s, "{\"age\": 31, \"name\": \"Ann\"}"));      /* the schema's order */
    assert_false(accepts(s, "{\"name\": \"Ann\"}"));                   /* age is required */
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 3.5}"));     /* an integer */
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 01}"));      /* no leading zero */
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 1, \"nick\": \"Anna\"}"));   /* maxLength */
    assert_false(accepts(s, "{\"name\": \"A\x01\", \"age\": 1}"));     /* a raw control character */
    assert_false(accepts(s, "{\"name\": \"\xc0\xaf\", \"age\": 1}"));  /* an overlong form */
    assert_false(accepts(s, "{\"name\": \"\xed\xa0\x80\", \"age\": 1}"));   /* a surrogate */
    assert_false(accepts(s, "{\"name\": \"\\ud800\", \"age\": 1}"));   /* an escaped surrogate */
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 31} "));     /* nothing after the end */
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 31, \"x\": 1}"));
    assert_false(accepts(s, "{\"name\": \"Ann\", \"age\": 1234567890123456}"));   /* 16 digits */
    jschema_free(s);
}

static void test_values(void **state)
{
    (void)state;
    jschema *s = compile_ok("{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"minItems\":1,\"maxItems\":3}");
    assert_true(accepts(s, "[1]"));
    assert_true(accepts(s, "[1.5, -2e+10, 0.25E-3]"));
    assert_false(accepts(s, "[]"));
    assert_false(accepts(s, "[1, 2, 3, 4]"));
    assert_false(accepts(s, "[1.]"));
    assert_false(accepts(s, "[1e1234]"));
    jschema_free(s);
    s = compile_ok("{\"enum\":[\"a\",\"ab\",1,12,null,[1,2],{\"k\":true}]}");
    assert_true(accepts(s, "\"a\""));
    assert_true(accepts(s, "\"ab\""));
    assert_true(accepts(s, "1"));
    assert_true(accepts(s, "12"));
    assert_true(accepts(s, "null"));
    assert_true(accepts(s, "[1, 2]"));
    assert_true(accepts(s, "{\"k\": true}"));
    assert_false(accepts(s, "\"b\""));
    assert_false(accepts(s, "123"));
    assert_false(accepts(s, "[1,2]"));
    jschema_free(s);
    s = compile_ok("{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]},"
                   "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"a\"]},"
                   "{\"type\":\"null\"}]}");
    assert_true(accepts(s, "{\"a\": 1}"));
    assert_true(accepts(s, "{\"a\": \"x\"}"));
    assert_true(accepts(s, "null"));
    assert_false(accepts(s, "{\"a\": true}"));
    jschema_free(s);
    s = compile_ok("{\"$defs\":{\"p\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},"
                   "\"required\":[\"x\"]}},\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/p\"}}");
    assert_true(accepts(s, "[{\"x\": 1}, {\"x\": 2}]"));
    assert_false(accepts(s, "[{\"y\": 1}]"));
    jschema_free(s);
    char err[256];
    assert_int_equal(jschema_compile(&s, "", 0, 1, err, sizeof err), 0);   /* json_object: any object */
    assert_true(accepts(s, "{\"a\": [1, {\"b\": null}], \"c\": \"d\"}"));
    assert_true(accepts(s, "{}"));
    assert_false(accepts(s, "[1]"));
    assert_false(accepts(s, "\"s\""));
    jschema_free(s);
}

static void test_forced(void **state)
{
    (void)state;
    jschema *s = compile_ok("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                            "\"ok\":{\"type\":\"boolean\"},\"kind\":{\"enum\":[\"alpha\",\"alps\"]}},"
                            "\"required\":[\"name\",\"ok\",\"kind\"],\"additionalProperties\":false}");
    static js_state st;
    char f[64];
    js_start(s, &st);
    size_t n = js_forced(s, &st, f, sizeof f);
    assert_int_equal(n, 10);
    assert_memory_equal(f, "{\"name\": \"", 10);
    assert_true(js_feed(s, &st, f, n));
    assert_int_equal(js_forced(s, &st, f, sizeof f), 0);   /* the string's text is free */
    assert_true(js_feed(s, &st, "Bo\"", 3));
    n = js_forced(s, &st, f, sizeof f);
    assert_int_equal(n, 8);
    assert_memory_equal(f, ", \"ok\": ", 8);
    assert_true(js_feed(s, &st, f, n));
    assert_true(js_feed(s, &st, "t", 1));
    n = js_forced(s, &st, f, sizeof f);   /* the rest of true, the next key, what alpha and alps share */
    assert_int_equal(n, 17);
    assert_memory_equal(f, "rue, \"kind\": \"alp", 17);
    assert_true(js_feed(s, &st, f, n));
    assert_int_equal(js_forced(s, &st, f, sizeof f), 0);
    assert_true(js_feed(s, &st, "ha\"", 3));
    n = js_forced(s, &st, f, sizeof f);
    assert_int_equal(n, 1);
    assert_memory_equal(f, "}", 1);
    assert_true(js_feed(s, &st, "}", 1));
    assert_true(js_accepting(s, &st));
    assert_true(js_finished(s, &st));
    jschema_free(s);
}

static void refused(const char *schema, const char *why)
{
    char err[512] = "";
    jschema *s = NULL;
    int rc = jschema_compile(&s, schema, strlen(schema), 0, err, sizeof err);
    if (rc == 0 || !strstr(err, why))
        fail_msg("schema %s: rc %d, error '%s', expected one naming '%s'", schema, rc, err, why);
    assert_null(s);
}

static void test_refused(void **state)
{
    (void)state;
    refused("{\"type\":\"integer\",\"minimum\":0}", "'minimum' is not supported");
    refused("{\"type\":\"string\",\"pattern\":\"a+\"}", "'pattern'");
    refused("{\"type\":\"string\",\"format\":\"date\"}", "'format'");
    refused("{\"allOf\":[{\"type\":\"string\"}]}", "'allOf'");
    refused("{\"not\":{\"type\":\"string\"}}", "'not'");
    refused("{\"type\":\"array\",\"prefixItems\":[]}", "'prefixItems'");
    refused("{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":true}", "only false");
    refused("{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "'b' is not among");
    refused("{\"type\":\"strin\"}", "unknown type");
    refused("{\"$defs\":{\"n\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"}}},\"$ref\":\"#/$defs/n\"}",
            "recursive");
    refused("{\"$ref\":\"http://example.com/s.json\"}", "only \"#/$defs/NAME\"");
    refused("{\"$ref\":\"#/$defs/missing\"}", "not found");
    refused("{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", "minLength > maxLength");
    refused("{\"enum\":[1.5]}", "only integer numbers");
    refused("{\"enum\":[]}", "empty enum");
    refused("{\"type\": ", "not valid JSON");
    refused("[1]", "must be an object");
    refused("false", "must be an object");
    /* anyOf inside anyOf: 3 * 3 = 9 alternatives open at once */
    refused("{\"anyOf\":[{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\"},{\"type\":\"null\"}]},"
            "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\"},{\"type\":\"null\"}]},"
            "{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\"},{\"type\":\"null\"}]}]}",
            "anyOf alternatives");
    char deep[4096] = "";
    for (int i = 0; i < 30; i++)
        strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{\"type\":\"integer\"}");
    for (int i = 0; i < 30; i++)
        strcat(deep, "}");
    refused(deep, "nests deeper");
}

/* Every seed through the fuzz target's walk; none may take long. */
static void test_seeds(void **state)
{
    (void)state;
    DIR *d = opendir(SEEDS_DIR);
    if (!d)
        fail_msg("cannot open %s (run from the repository root)", SEEDS_DIR);
    struct dirent *e;
    int n = 0, compiled = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", SEEDS_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        uint8_t *buf = malloc(len ? (size_t)len : 1);
        assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        compiled += schema_walk_one(buf, (size_t)len);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (s > 20.0)   /* generous: the sanitizer build on a busy machine */
            fail_msg("%s took %.1f s", e->d_name, s);
        free(buf);
        n++;
    }
    closedir(d);
    print_message("%d seeds, %d compiled\n", n, compiled);
    assert_true(n >= 40 && compiled >= 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_object_layout),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_forced),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
