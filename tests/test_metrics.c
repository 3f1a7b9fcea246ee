/*
 * test_metrics.c - the Prometheus metrics module (common/api/metrics.h):
 * every vLLM-named series is present with its TYPE line, counters and
 * histograms count what was observed (cumulative buckets, +Inf = count,
 * sum), label values are escaped, failure reasons and caller series, bad
 * names are refused, and every sample line parses as `name{labels} value`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/metrics.h"

/* The value of the first sample line starting with `series` + " ". */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; *p; p = strchr(p, '\n') + 1) {
        if (!strncmp(p, series, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        if (!strchr(p, '\n'))
            break;
    }
    fail_msg("no sample '%s' in:\n%s", series, text);
    return 0;
}

static void test_names_and_values(void **state)
{
    metrics *m = metrics_new("selfspec:", "Smol\"LM\\2\n");
    assert_non_null(m);
    metrics_request_done(m, 0, 10, 5, 0.05, 0.45);   /* tpot (0.45-0.05)/4 = 0.1 */
    metrics_request_done(m, 1, 7, 1, 0.002, 0.002);
    metrics_prefix_cache(m, 10, 0);
    metrics_prefix_cache(m, 7, 16);   /* more than asked: counted as given */
    metrics_prefix_cache(m, -1, -1);  /* nothing */
    metrics_request_failed(m, "invalid");
    metrics_request_failed(m, "invalid");
    metrics_request_failed(m, "Bad Reason!");        /* only [a-z_] kept: "adeason" */
    metrics_engine e = {.running = 3, .waiting = 2, .kv_used = 1, .kv_total = 4,
                        .spec = {.num_drafts = 9, .num_draft_tokens = 30, .num_accepted_tokens = 21,
                                 .drafted_per_pos = {9, 7}, .accepted_per_pos = {8, 5},
                                 .src_blocks = {4, 5, 0}, .src_drafted = {10, 20, 0}, .src_accepted = {6, 15, 0}}};
    metrics_set_engine(m, &e);
    assert_int_equal(metrics_set_extra(m, "stream_pending", "Entries pending.", METRICS_GAUGE, 4), 0);
    assert_int_equal(metrics_set_extra(m, "stream_pending", "Entries pending.", METRICS_GAUGE, 6), 0);
    assert_int_equal(metrics_set_extra(m, "dead_lettered_total", "Dead.", METRICS_COUNTER, 2), 0);
    assert_int_equal(metrics_set_extra(m, "9bad", "x", METRICS_GAUGE, 1), -1);
    assert_int_equal(metrics_set_extra(m, "bad-name", "x", METRICS_GAUGE, 1), -1);
    char *t = metrics_render(m);
    assert_non_null(t);
    const char *L = "model_name=\"Smol\\\"LM\\\\2\\n\"";
    char s[256];
#define S(fmt, ...) (snprintf(s, sizeof s, fmt, __VA_ARGS__), s)
    assert_true(sample(t, S("selfspec:num_requests_running{%s}", L)) == 3);
    assert_true(sample(t, S("selfspec:num_requests_waiting{%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:kv_cache_usage_perc{%s}", L)) == 0.25);
    assert_true(sample(t, S("selfspec:prompt_tokens_total{%s}", L)) == 17);
    assert_true(sample(t, S("selfspec:generation_tokens_total{%s}", L)) == 6);
    assert_true(sample(t, S("selfspec:prefix_cache_queries_total{%s}", L)) == 17);
    assert_true(sample(t, S("selfspec:prefix_cache_hits_total{%s}", L)) == 16);
    assert_true(sample(t, S("selfspec:request_success_total{finished_reason=\"stop\",%s}", L)) == 1);
    assert_true(sample(t, S("selfspec:request_success_total{finished_reason=\"length\",%s}", L)) == 1);
    assert_true(sample(t, S("selfspec:request_failure_total{reason=\"invalid\",%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:request_failure_total{reason=\"adeason\",%s}", L)) == 1);
    /* TTFT: 0.002 <= 0.005 bucket; 0.05 in 0.06 */
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_bucket{le=\"0.001\",%s}", L)) == 0);
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_bucket{le=\"0.0050000000000000001\",%s}", L)) == 1);
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_bucket{le=\"0.059999999999999998\",%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_bucket{le=\"+Inf\",%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_count{%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:time_to_first_token_seconds_sum{%s}", L)) > 0.0519 &&
                sample(t, S("selfspec:time_to_first_token_seconds_sum{%s}", L)) < 0.0521);
    /* TPOT: one observation (the 1-token request has none), 0.1 -> le 0.1 */
    assert_true(sample(t, S("selfspec:time_per_output_token_seconds_count{%s}", L)) == 1);
    assert_true(sample(t, S("selfspec:time_per_output_token_seconds_bucket{le=\"0.074999999999999997\",%s}", L)) == 0);
    assert_true(sample(t, S("selfspec:e2e_request_latency_seconds_count{%s}", L)) == 2);
    assert_true(sample(t, S("selfspec:spec_decode_num_drafts_total{%s}", L)) == 9);
    assert_true(sample(t, S("selfspec:spec_decode_num_draft_tokens_total{%s}", L)) == 30);
    assert_true(sample(t, S("selfspec:spec_decode_num_accepted_tokens_total{%s}", L)) == 21);
    assert_true(sample(t, S("selfspec:spec_decode_num_accepted_tokens_per_pos_total{%s,position=\"0\"}", L)) == 8);
    assert_true(sample(t, S("selfspec:spec_decode_num_accepted_tokens_per_pos_total{%s,position=\"1\"}", L)) == 5);
    assert_null(strstr(t, "position=\"2\""));   /* only positions ever drafted */
    assert_true(sample(t, S("selfspec:spec_decode_num_drafts_by_source_total{%s,source=\"context\"}", L)) == 5);
    assert_true(sample(t, S("selfspec:spec_decode_num_draft_tokens_by_source_total{%s,source=\"layers\"}", L)) == 10);
    assert_true(sample(t, S("selfspec:spec_decode_num_accepted_tokens_by_source_total{%s,source=\"context\"}", L)) ==
                15);
    assert_true(sample(t, S("selfspec:spec_decode_num_accepted_tokens_by_source_total{%s,source=\"chain\"}", L)) == 0);
    assert_null(strstr(t, "position=\"2\""));
    assert_true(sample(t, S("selfspec:stream_pending{%s}", L)) == 6);
    assert_true(sample(t, S("selfspec:dead_lettered_total{%s}", L)) == 2);
    assert_non_null(strstr(t, "# TYPE selfspec:dead_lettered_total counter\n"));
    assert_non_null(strstr(t, "# TYPE selfspec:stream_pending gauge\n"));
    assert_non_null(strstr(t, "# TYPE selfspec:time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(t, "# TYPE selfspec:spec_decode_num_drafts_total counter\n"));
    assert_null(strstr(t, "9bad"));
    /* every line: a comment, or name{...} value */
    size_t n_lines = 0;
    for (char *p = t; *p;) {
        char *nl = strchr(p, '\n');
        assert_non_null(nl);
        *nl = '\0';
        if (*p != '#') {
            char *sp = strrchr(p, ' ');
            assert_true(sp && sp < nl);
            char *end;
            strtod(sp + 1, &end);
            assert_true(end == nl || !strncmp(sp + 1, "+Inf", 4));
            assert_true(strchr(p, '{') && strchr(p, '{') < sp);
        }
        *nl = '\n';
        n_lines++;
        p = nl + 1;
    }
    assert_true(n_lines > 50);
#undef S
    free(t);
    metrics_free(m);
}

static void test_bad_prefix_and_limits(void **state)
{
    assert_null(metrics_new("bad prefix", "m"));
    assert_null(metrics_new("1x", "m"));
    metrics *m = metrics_new("", NULL);
    assert_non_null(m);
    for (int i = 0; i < 20; i++) {
        char r[16];
        snprintf(r, sizeof r, "r%c", 'a' + i);
        metrics_request_failed(m, r);
    }
    metrics_request_done(m, 0, -1, -1, -1, -1);   /* nothing observed but the outcome */
    char name[32];
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "x%d", i);
        ok += metrics_set_extra(m, name, "h", METRICS_GAUGE, i) == 0;
    }
    assert_int_equal(ok, METRICS_MAX_EXTRA);
    char *t = metrics_render(m);
    assert_non_null(t);
    assert_non_null(strstr(t, "request_failure_total{reason=\"other\",model_name=\"\"} 13\n"));
    assert_true(sample(t, "time_to_first_token_seconds_count{model_name=\"\"}") == 0);
    assert_true(sample(t, "prompt_tokens_total{model_name=\"\"}") == 0);
    assert_true(sample(t, "request_success_total{finished_reason=\"stop\",model_name=\"\"}") == 1);
    free(t);
    metrics_free(m);
    metrics_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_values),
        cmocka_unit_test(test_bad_prefix_and_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
