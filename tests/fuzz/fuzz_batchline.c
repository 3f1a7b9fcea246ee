/*
 * fuzz_batchline.c - libFuzzer target for the batch file I/O
 * (common/api/batchio.h).
 *
 * The input is one batch input line: batch_parse_line must accept it (and
 * then every field must be in its documented range), skip it as blank, or
 * reject it with a message. Either way the output line it leads to
 * (batch_format_result with the prompt or last message as the text, or
 * batch_format_error) must be one line that cJSON parses back to the same
 * custom_id, that is byte-identical when formatted again, and that the
 * resume scan accepts, torn or whole. The raw input is also scanned as if it
 * were an output file (any answer but a crash is fine).
 * Build: make fuzz. Run: build/fuzz/fuzz_batchline -max_total_time=60
 *        -dict=tests/fuzz/batchline.dict
 *        tests/fuzz/batchline_seeds   (add a scratch corpus folder first to
 *        keep what it finds out of the seeds)
 */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/batchio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* The request's invariants after a successful parse. */
static void fuzz_check_request(const batch_request *r)
{
    CHECK(r->custom_id != NULL);
    CHECK(r->max_tokens >= 1);
    CHECK(r->temperature >= 0.0 && r->temperature <= 2.0);
    CHECK(r->top_p > 0.0 && r->top_p <= 1.0);
    CHECK(r->top_k >= 0);
    CHECK(r->n_stop >= 0 && r->n_stop <= BATCH_MAX_STOP);
    for (int i = 0; i < r->n_stop; i++)
        CHECK(r->stop[i] && r->stop[i][0] != '\0');
    if (r->has_seed)
        CHECK(r->seed <= 9007199254740991ull);
    if (r->kind == BATCH_COMPLETION) {
        CHECK(r->prompt != NULL && r->messages == NULL);
    } else {
        CHECK(r->kind == BATCH_CHAT && r->prompt == NULL);
        CHECK(r->n_messages >= 1 && r->messages != NULL);
        for (int i = 0; i < r->n_messages; i++)
            CHECK(r->messages[i].content != NULL && r->messages[i].role <= BATCH_ROLE_ASSISTANT);
    }
}

/* line: one output line; it must parse back with custom_id and be scanned. */
static void fuzz_check_output(const char *line, const char *custom_id)
{
    size_t n = strlen(line);
    CHECK(n > 1 && line[n - 1] == '\n' && memchr(line, '\n', n - 1) == NULL);
    cJSON *j = cJSON_Parse(line);
    CHECK(j != NULL);
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(j, "custom_id");
    if (custom_id)
        CHECK(cJSON_IsString(cid) && strcmp(cid->valuestring, custom_id) == 0);
    else
        CHECK(cJSON_IsNull(cid));
    cJSON_Delete(j);

    char err[256];
    size_t valid = 0, lines = 0;
    batch_idset *done = batch_idset_new();
    CHECK(batch_scan_buffer(line, n, done, &valid, &lines, err, sizeof err) == 0);
    CHECK(valid == n && lines == 1);
    CHECK(custom_id ? batch_idset_has(done, custom_id) == 1 : batch_idset_count(done) == 0);
    CHECK(batch_scan_buffer(line, n - 1, done, &valid, &lines, err, sizeof err) == 0);
    CHECK(valid == 0 && lines == 0);        /* torn: redo it */
    batch_idset_free(done);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    batch_request r;
    int rc = batch_parse_line((const char *)data, size, &r, err, sizeof err);
    CHECK(rc >= -1 && rc <= 1);
    if (rc == 0) {
        fuzz_check_request(&r);
        const char *text = r.kind == BATCH_COMPLETION ? r.prompt : r.messages[r.n_messages - 1].content;
        batch_result res = { .custom_id = r.custom_id, .kind = r.kind, .model = r.model,
                             .created = 1700000000, .text = text,
                             .finish = r.n_stop ? BATCH_FINISH_STOP : BATCH_FINISH_LENGTH,
                             .prompt_tokens = r.n_messages, .completion_tokens = r.max_tokens };
        char *a = batch_format_result(&res, err, sizeof err);
        char *b = batch_format_result(&res, err, sizeof err);
        CHECK(a && b && strcmp(a, b) == 0);
        fuzz_check_output(a, r.custom_id);
        free(a);
        free(b);
    } else if (rc == -1) {
        CHECK(err[0] != '\0');
        CHECK(r.prompt == NULL && r.messages == NULL && r.n_stop == 0 && r.model == NULL);
        char *a = batch_format_error(r.custom_id, 1, 400, err);
        char *b = batch_format_error(r.custom_id, 1, 400, err);
        CHECK(a && b && strcmp(a, b) == 0);
        fuzz_check_output(a, r.custom_id);
        free(a);
        free(b);
    } else {
        CHECK(r.custom_id == NULL);
    }
    batch_request_free(&r);

    /* the input as an output file */
    batch_idset *done = batch_idset_new();
    size_t valid = 0, lines = 0;
    if (batch_scan_buffer((const char *)data, size, done, &valid, &lines, err, sizeof err) == 0)
        CHECK(valid <= size && (valid == 0 || data[valid - 1] == '\n'));
    else
        CHECK(err[0] != '\0');
    batch_idset_free(done);
    return 0;
}
