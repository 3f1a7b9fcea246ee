/*
 * fuzz_oaibody.c - libFuzzer target for what `serve` and `worker` parse
 * that batch lines do not cover: HTTP request bodies (batch_parse_body,
 * common/api/batchio.h) and Redis URLs (redisq_parse_url,
 * common/serve/redisq.h). HTTP itself (request lines, headers, chunking)
 * is libmicrohttpd's.
 *
 * The first byte picks the target: 'c' a /v1/completions body, 'h' a
 * /v1/chat/completions body, 'u' a redis URL (NUL-terminated copy); the
 * rest is the input. A body must be accepted with every field in its
 * documented range, or rejected with a message and nothing left allocated;
 * a URL must be parsed with a host and a port in range, or rejected with a
 * message.
 * Build: make fuzz. Run: build/fuzz/fuzz_oaibody -max_total_time=60
 *        -dict=tests/fuzz/batchline.dict tests/fuzz/oaibody_seeds
 *        (add a scratch corpus folder first to keep what it finds out of the seeds)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/batchio.h"
#include "serve/redisq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char err[512] = "";
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] == 'u') {
        char *s = malloc(n + 1);
        CHECK(s);
        memcpy(s, in, n);
        s[n] = '\0';
        redisq_url u;
        if (redisq_parse_url(s, &u, err, sizeof err) == 0) {
            CHECK(u.host[0] != '\0' && u.port >= 1 && u.port <= 65535 && u.db >= 0);
            CHECK(strlen(u.host) < sizeof u.host && strlen(u.user) < sizeof u.user &&
                  strlen(u.password) < sizeof u.password);
        } else {
            CHECK(err[0] != '\0');
        }
        free(s);
        return 0;
    }
    batch_kind kind = data[0] == 'h' ? BATCH_CHAT : BATCH_COMPLETION;
    batch_request r;
    int stream = -1;
    int rc = batch_parse_body(in, n, kind, "srv-0", &r, &stream, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        CHECK(r.custom_id && strcmp(r.custom_id, "srv-0") == 0 && r.kind == kind);
        CHECK(stream == 0 || stream == 1);
        CHECK(r.max_tokens >= 1);
        CHECK(r.temperature >= 0.0 && r.temperature <= 2.0);
        CHECK(r.top_p > 0.0 && r.top_p <= 1.0);
        CHECK(r.top_k >= 0 && r.n_stop >= 0 && r.n_stop <= BATCH_MAX_STOP);
        if (kind == BATCH_COMPLETION)
            CHECK(r.prompt != NULL && r.messages == NULL);
        else
            CHECK(r.prompt == NULL && r.n_messages >= 1 && r.messages != NULL);
    } else {
        CHECK(err[0] != '\0' && stream == 0);
        CHECK(r.custom_id == NULL && r.prompt == NULL && r.messages == NULL && r.model == NULL);
    }
    batch_request_free(&r);
    return 0;
}
