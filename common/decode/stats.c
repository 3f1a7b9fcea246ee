/*
 * stats.c - a generation's figures as JSON (see stats.h).
 */
#include "decode/stats.h"

#include <math.h>

void stats_add_number(cJSON *obj, const char *key, double v, int digits)
{
    double scale = pow(10.0, digits);
    cJSON_AddNumberToObject(obj, key, isfinite(v) ? round(v * scale) / scale : 0.0);
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0.0;
}

cJSON *stats_json(const char *mode, int threads, const gen_stats *st, const spec_stats *sp, const char *skip_src)
{
    cJSON *o = cJSON_CreateObject();
    double total = st->prefill_seconds + st->decode_seconds;
    int32_t decoded = st->generated_tokens > 1 ? st->generated_tokens - 1 : 0;   /* the first comes from prefill */
    cJSON_AddStringToObject(o, "mode", mode);
    cJSON_AddNumberToObject(o, "threads", threads);
    cJSON_AddNumberToObject(o, "prompt_tokens", st->prompt_tokens);
    cJSON_AddNumberToObject(o, "generated_tokens", st->generated_tokens);
    stats_add_number(o, "seconds", total, 4);
    stats_add_number(o, "tokens_per_s", ratio(st->generated_tokens, total), 2);
    stats_add_number(o, "prefill_seconds", st->prefill_seconds, 4);
    stats_add_number(o, "prefill_tokens_per_s", ratio(st->prompt_tokens, st->prefill_seconds), 2);
    stats_add_number(o, "decode_seconds", st->decode_seconds, 4);
    stats_add_number(o, "decode_tokens_per_s", ratio(decoded, st->decode_seconds), 2);
    if (!sp)
        return o;
    cJSON_AddStringToObject(o, "skip_config", skip_src ? skip_src : "");
    cJSON_AddNumberToObject(o, "drafted", (double)sp->counts.num_draft_tokens);
    cJSON_AddNumberToObject(o, "accepted", (double)sp->counts.num_accepted_tokens);
    cJSON_AddNumberToObject(o, "verifications", (double)sp->verifications);
    stats_add_number(o, "acceptance_rate", ratio((double)sp->counts.num_accepted_tokens, (double)sp->counts.num_draft_tokens), 4);
    stats_add_number(o, "mean_accepted_per_verify", ratio((double)sp->counts.num_accepted_tokens, (double)sp->verifications), 3);
    stats_add_number(o, "final_gamma", sp->final_gamma, 4);
    stats_add_number(o, "draft_seconds", sp->draft_seconds, 4);
    stats_add_number(o, "verify_seconds", sp->verify_seconds, 4);
    cJSON *src = cJSON_AddObjectToObject(o, "sources");
    for (int i = 0; i < SPEC_SRC_N; i++) {
        if (!sp->counts.src_blocks[i])
            continue;
        cJSON *one = cJSON_AddObjectToObject(src, spec_source_name(i));
        cJSON_AddNumberToObject(one, "blocks", (double)sp->counts.src_blocks[i]);
        cJSON_AddNumberToObject(one, "drafted", (double)sp->counts.src_drafted[i]);
        cJSON_AddNumberToObject(one, "accepted", (double)sp->counts.src_accepted[i]);
        stats_add_number(one, "acceptance_rate", ratio((double)sp->counts.src_accepted[i], (double)sp->counts.src_drafted[i]), 4);
        stats_add_number(one, "mean_accepted", ratio((double)sp->counts.src_accepted[i], (double)sp->counts.src_blocks[i]), 3);
    }
    cJSON *by_pos = cJSON_AddArrayToObject(o, "acceptance_by_position");
    for (int i = 0; i < SPEC_MAX_DRAFT && sp->counts.drafted_per_pos[i]; i++)
        cJSON_AddItemToArray(by_pos, cJSON_CreateNumber(round(1e4 * (double)sp->counts.accepted_per_pos[i] /
                                                                 (double)sp->counts.drafted_per_pos[i]) / 1e4));
    return o;
}
