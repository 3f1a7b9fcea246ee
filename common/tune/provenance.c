/*
 * provenance.c - the config members `selfspec search` records about how it
 * chose (see provenance.h).
 */
#include "tune/provenance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/util.h"

/* A path as the config records it: from "configs/" on when it has one
 * (repository-relative), else as given. */
static const char *repo_rel(const char *path)
{
    const char *rel = strstr(path, "configs/");
    return rel ? rel : path;
}

cJSON *prov_score_json(const search_score *sc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tokens_per_s", sc->tokens_per_s);
    cJSON_AddNumberToObject(o, "speedup", sc->speedup);
    cJSON_AddNumberToObject(o, "match_rate", sc->match_rate);
    cJSON_AddNumberToObject(o, "acceptance_rate", sc->accept_rate);
    cJSON_AddNumberToObject(o, "mean_accepted", sc->mean_accepted);
    return o;
}

cJSON *prov_point_json(const tune_point *g, int full)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "head_size", g->head_size);
    cJSON_AddNumberToObject(o, "gamma_init", round(g->gamma_init * 1e4) / 1e4);
    cJSON_AddNumberToObject(o, "draft_base_ms", round(g->draft_base * 1e7) / 1e4);
    cJSON_AddNumberToObject(o, "speedup", round(g->sc.speedup * 1e4) / 1e4);
    if (full) {
        cJSON_AddNumberToObject(o, "tokens_per_s", round(g->sc.tokens_per_s * 100) / 100);
        cJSON_AddNumberToObject(o, "acceptance_rate", round(g->sc.accept_rate * 1e4) / 1e4);
        cJSON_AddNumberToObject(o, "mean_accepted", round(g->sc.mean_accepted * 1e3) / 1e3);
    }
    return o;
}

/* verify[0..max_k] in ms, two decimals. */
static void add_verify(cJSON *cost, const cost_model *cm)
{
    cJSON *ver = cJSON_AddArrayToObject(cost, "verify_k_plus_1");
    for (int k = 0; k <= cm->max_k; k++)
        cJSON_AddItemToArray(ver, cJSON_CreateNumber(round(cm->verify[k] * 1e5) / 1e2));
}

cJSON *prov_tune_json(const tune_result *tr, const cost_model *cm, const spec_params *sp, int threads)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "what", "draft head size x exit threshold gamma_init for the chosen skip set, "
                            "each scored by the replay objective, the draft base cost timed per head size");
    cJSON_AddNumberToObject(t, "seconds", round(tr->seconds * 10) / 10);
    cJSON_AddNumberToObject(t, "threads", threads);
    cJSON *cost = cJSON_AddObjectToObject(t, "cost_model_ms");
    cJSON_AddNumberToObject(cost, "full_step", cm->verify[0] * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base_full_head", cm->base * 1e3);
    cJSON_AddNumberToObject(cost, "attn_sublayer", cm->attn * 1e3);
    cJSON_AddNumberToObject(cost, "mlp_sublayer", cm->mlp * 1e3);
    add_verify(cost, cm);
    cJSON *fixed = cJSON_AddObjectToObject(t, "fixed");
    cJSON_AddNumberToObject(fixed, "max_draft", sp->max_draft);
    cJSON_AddNumberToObject(fixed, "ar_target", round(sp->ar_target * 1e4) / 1e4);
    cJSON_AddNumberToObject(fixed, "ar_decay", round(sp->ar_decay * 1e4) / 1e4);
    cJSON *hs = cJSON_AddArrayToObject(t, "head_sizes");
    for (int32_t i = 0; tr->n_gammas > 0 && i < tr->n; i += tr->n_gammas)
        cJSON_AddItemToArray(hs, cJSON_CreateNumber(tr->grid[i].head_size));
    cJSON *gs = cJSON_AddArrayToObject(t, "gamma_inits");
    for (int32_t j = 0; j < tr->n_gammas; j++)
        cJSON_AddItemToArray(gs, cJSON_CreateNumber(round(tr->gammas[j] * 1e4) / 1e4));
    cJSON *grid = cJSON_AddArrayToObject(t, "grid");
    for (int32_t i = 0; i < tr->n; i++)
        cJSON_AddItemToArray(grid, prov_point_json(&tr->grid[i], 0));
    if (tr->before >= 0)
        cJSON_AddItemToObject(t, "before", prov_point_json(&tr->grid[tr->before], 1));
    cJSON_AddItemToObject(t, "chosen", prov_point_json(&tr->grid[tr->best], 1));
    if (tr->plain.tps > 0) {
        cJSON *me = cJSON_AddObjectToObject(t, "measured");
        cJSON_AddStringToObject(me, "on", "calibration prompts, greedy");
        cJSON_AddNumberToObject(me, "plain_tokens_per_s", tr->plain.tps);
        if (tr->m_before.tps > 0) {
            cJSON_AddNumberToObject(me, "before_tokens_per_s", tr->m_before.tps);
            cJSON_AddNumberToObject(me, "before_speedup", tr->m_before.tps / tr->plain.tps);
        }
        cJSON_AddNumberToObject(me, "tuned_tokens_per_s", tr->m_tuned.tps);
        cJSON_AddNumberToObject(me, "tuned_speedup", tr->m_tuned.tps / tr->plain.tps);
        cJSON_AddNumberToObject(me, "tuned_acceptance_rate", tr->m_tuned.accept_rate);
    }
    return t;
}

/* The "measured" member of a confirming run (on: what was decoded). */
static void add_measured(cJSON *root, const char *on, const tune_measured *plain, const tune_measured *spec)
{
    cJSON *me = cJSON_AddObjectToObject(root, "measured");
    cJSON_AddStringToObject(me, "on", on);
    cJSON_AddNumberToObject(me, "plain_tokens_per_s", plain->tps);
    cJSON_AddNumberToObject(me, "selfspec_tokens_per_s", spec->tps);
    cJSON_AddNumberToObject(me, "speedup", spec->tps / plain->tps);
    cJSON_AddNumberToObject(me, "acceptance_rate", spec->accept_rate);
}

char *prov_search_json(const prov_search *p, const calib_set *cs, const cost_model *cm, const search_score *sc,
                       const tune_measured *plain, const tune_measured *spec, double rho, const tune_result *tr,
                       const spec_params *sp)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *cal = cJSON_AddObjectToObject(root, "calibration");
    cJSON_AddStringToObject(cal, "prompts", repo_rel(p->prompts_path));
    cJSON_AddNumberToObject(cal, "n_prompts", cs->n_seqs);
    cJSON_AddNumberToObject(cal, "new_tokens_per_prompt", p->n_new);
    cJSON_AddNumberToObject(cal, "positions", cs->n_positions);
    cJSON_AddStringToObject(cal, "text", "the model's own greedy continuations of the prompts (chat template applied)");
    cJSON *se = cJSON_AddObjectToObject(root, "search");
    cJSON_AddStringToObject(se, "strategy", p->random_only ? "random sets on the replay objective (baseline)"
                                           : "sensitivity + least-harm prefix + local search on the replay objective");
    cJSON_AddNumberToObject(se, "budget_seconds", p->budget);
    cJSON_AddNumberToObject(se, "head_size", p->head_size);
    cJSON_AddNumberToObject(se, "seed", (double)p->seed);
    cJSON_AddNumberToObject(se, "threads", p->threads);
    cJSON *cost = cJSON_AddObjectToObject(root, "cost_model_ms");
    cJSON_AddNumberToObject(cost, "full_step", cm->verify[0] * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base", cm->base * 1e3);
    cJSON_AddNumberToObject(cost, "draft_base_pruned_head", cm->base_pruned * 1e3);
    cJSON_AddNumberToObject(cost, "attn_sublayer", cm->attn * 1e3);
    cJSON_AddNumberToObject(cost, "mlp_sublayer", cm->mlp * 1e3);
    add_verify(cost, cm);
    cJSON_AddItemToObject(root, "estimated", prov_score_json(sc));
    if (plain->tps > 0)
        add_measured(root, "calibration prompts, greedy", plain, spec);
    if (!isnan(rho))
        cJSON_AddNumberToObject(root, "objective_rank_correlation", rho);
    if (tr)
        cJSON_AddItemToObject(root, "tune", prov_tune_json(tr, cm, sp, p->threads));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *prov_tuned_json(const char *seed_path, const tune_result *tr, const cost_model *cm, const spec_params *sp,
                      int threads)
{
    char err[256];
    size_t len;
    char *text = util_read_file(seed_path, &len, err, sizeof err);
    cJSON *root = text ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        root = cJSON_CreateObject();
    }
    const char *drop[] = {"model", "attn_skip", "mlp_skip", "draft_head", "draft_head_size", "exit",
                          "estimated", "measured", "tune"};
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(root, drop[i]);
    cJSON_AddItemToObject(root, "estimated", prov_score_json(&tr->grid[tr->best].sc));
    if (tr->plain.tps > 0)
        add_measured(root, "calibration prompts, greedy (the tune step's confirming run)", &tr->plain, &tr->m_tuned);
    cJSON_AddItemToObject(root, "tune", prov_tune_json(tr, cm, sp, threads));
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

char *prov_transfer_json(const char *seed_config, int32_t from_layers)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *t = cJSON_AddObjectToObject(root, "transferred");
    cJSON_AddStringToObject(t, "from", repo_rel(seed_config));
    cJSON_AddNumberToObject(t, "from_layers", from_layers);
    cJSON_AddStringToObject(t, "mapping", "layer l of L -> round(l / (L - 1) * (L' - 1)), no search");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

int prov_write_transfer(const char *seed_path, const model_config *c, const char *configs_dir, const char *out_path,
                        int32_t head_size, prov_transfer_info *info, char *err, size_t errlen)
{
    char e[256], own[1024];
    skip_set src, dst, mine = {0};
    if (skipset_load(&src, seed_path, NULL, e, sizeof e) != 0)
        return util_err(err, errlen, "seed config: %s", e);
    skipset_transfer(&src, c->n_layers, &dst);
    if (skipset_find(configs_dir, c, own, sizeof own) == 0 && skipset_load(&mine, own, c, e, sizeof e) == 0 &&
        mine.head_tokens) {
        dst.head_tokens = mine.head_tokens;
        dst.n_head_tokens = mine.n_head_tokens;
        mine.head_tokens = NULL;
    }
    skipset_free(&mine);
    char *extra = prov_transfer_json(seed_path, src.n_layers);
    int rc = skipset_save(&dst, out_path, c, head_size, extra, err, errlen);
    if (info)
        *info = (prov_transfer_info){src.n_layers, skipset_count(&src), skipset_count(&dst)};
    free(extra);
    skipset_free(&src);
    skipset_free(&dst);
    return rc;
}

int prov_read_calibration(const char *config_path, const char *configs_dir, char *prompts, size_t plen,
                          int32_t *n_new, char *err, size_t errlen)
{
    size_t len;
    if (plen)
        prompts[0] = '\0';
    *n_new = 0;
    char *text = util_read_file(config_path, &len, err, errlen);
    if (!text)
        return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return util_err(err, errlen, "%s: not a JSON object", config_path);
    }
    const cJSON *cal = cJSON_GetObjectItemCaseSensitive(root, "calibration");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(cal, "prompts");
    const cJSON *nn = cJSON_GetObjectItemCaseSensitive(cal, "new_tokens_per_prompt");
    if (cJSON_IsString(pr) && pr->valuestring[0]) {
        if (access(pr->valuestring, R_OK) == 0 || strncmp(pr->valuestring, "configs/", 8) != 0)
            snprintf(prompts, plen, "%s", pr->valuestring);
        else
            snprintf(prompts, plen, "%s/%s", configs_dir, pr->valuestring + 8);
    }
    if (cJSON_IsNumber(nn) && nn->valuedouble >= 8 && nn->valuedouble <= 4096)
        *n_new = (int32_t)nn->valuedouble;
    cJSON_Delete(root);
    return 0;
}
