/*
 * validate.c - real decoding beside the replay objective, the objective's
 * rank correlation, and the tune step as one call (see validate.h).
 */
#include "tune/validate.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

static int null_emit(void *ctx, int32_t token)
{
    (void)ctx;
    (void)token;
    return 0;
}

int tune_measure_many(const tune_bench *b, int n_cfg, const skip_set *const *ss, const spec_params *const *sp,
                      int32_t **ids, const int32_t *lens, int32_t n, int32_t n_new, tune_measured *out, char *err,
                      size_t errlen)
{
    gen_params gp = {.max_tokens = n_new, .sampling = {.temperature = 0, .top_p = 1}, .ignore_eos = 1};
    double secs[TUNE_MEASURE_MAX] = {0}, toks[TUNE_MEASURE_MAX] = {0}, drafted[TUNE_MEASURE_MAX] = {0},
           accepted[TUNE_MEASURE_MAX] = {0};
    if (n_cfg < 1 || n_cfg > TUNE_MEASURE_MAX)
        return util_err(err, errlen, "measuring: %d configurations (1..%d)", n_cfg, TUNE_MEASURE_MAX);
    for (int32_t i = 0; i < n; i++)
        for (int k = 0; k < n_cfg; k++) {
            int c = (k + i) % n_cfg;   /* each configuration first, second, ... equally often */
            spec_params p;
            spec_params_default(&p);
            if (sp[c])
                p = *sp[c];
            gen_stats st;
            spec_stats sps;
            memset(&sps, 0, sizeof sps);
            if (b->decode(b->m, b->kv_cap, ss[c], &p, ids[i], lens[i], &gp, null_emit, NULL, &st,
                          ss[c] ? &sps : NULL, err, errlen) != 0)
                return -1;
            secs[c] += st.decode_seconds;
            toks[c] += st.generated_tokens - 1;
            if (ss[c]) {
                drafted[c] += (double)sps.counts.num_draft_tokens;
                accepted[c] += (double)sps.counts.num_accepted_tokens;
            }
        }
    for (int c = 0; c < n_cfg; c++) {
        out[c].tps = secs[c] > 0 ? toks[c] / secs[c] : 0;
        out[c].accept_rate = drafted[c] > 0 ? accepted[c] / drafted[c] : 0;
    }
    return 0;
}

int tune_measure(const tune_bench *b, const skip_set *ss, const spec_params *sp, int32_t **ids, const int32_t *lens,
                 int32_t n, int32_t n_new, tune_measured *out, char *err, size_t errlen)
{
    return tune_measure_many(b, 1, &ss, &sp, ids, lens, n, n_new, out, err, errlen);
}

/* Ranks from 1, ties the mean of the ranks they span. */
static void ranks(const double *a, int n, double *r)
{
    for (int i = 0; i < n; i++) {
        r[i] = 1;
        for (int j = 0; j < n; j++)
            r[i] += (a[j] < a[i]) + 0.5 * (j != i && a[j] == a[i]);
    }
}

double tune_spearman(const double *a, const double *b, int n)
{
    if (n < 2)
        return 0.0;
    double *ra = mallocCheck((size_t)n * sizeof *ra), *rb = mallocCheck((size_t)n * sizeof *rb);
    ranks(a, n, ra);
    ranks(b, n, rb);
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        ma += ra[i] / n;
        mb += rb[i] / n;
    }
    for (int i = 0; i < n; i++) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    free(ra);
    free(rb);
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0.0;
}

static int by_est(const void *a, const void *b)
{
    const search_entry *x = a, *y = b;
    return (x->sc.tokens_per_s > y->sc.tokens_per_s) - (x->sc.tokens_per_s < y->sc.tokens_per_s);
}

double tune_validate_objective(const char *state_path, const tune_bench *b, const skip_set *best, int32_t **ids,
                               const int32_t *lens, int32_t np, int32_t n_new, int nsets, double *est_out,
                               double *meas_out, FILE *log)
{
    char err[256];
    if (nsets < 3)
        return NAN;
    const model *m = b->m;
    search_entry *rows = NULL;
    int n = search_state_read(state_path, m->config.n_layers, &rows);
    if (n < nsets) {
        free(rows);
        return NAN;
    }
    qsort(rows, (size_t)n, sizeof *rows, by_est);
    if (log)
        fprintf(log, "search: validating the objective on %d sets (real decoding)...\n", nsets);
    double rho = 0;
    for (int i = 0; i < nsets; i++) {
        const search_entry *r = &rows[(size_t)((double)i * (n - 1) / (nsets - 1))];
        skip_set s;
        skipset_init(&s, m->config.n_layers);
        search_bits_to_set(r->bits, &s);
        if (best->head_tokens) {
            s.head_tokens = mallocCheck((size_t)best->n_head_tokens * sizeof(int32_t));
            memcpy(s.head_tokens, best->head_tokens, (size_t)best->n_head_tokens * sizeof(int32_t));
            s.n_head_tokens = best->n_head_tokens;
        }
        tune_measured me = {0};
        int rc = tune_measure(b, &s, NULL, ids, lens, np, n_new, &me, err, sizeof err);
        skipset_free(&s);
        if (rc != 0) {
            if (log)
                fprintf(log, "selfspec: measuring: %s\n", err);
            rho = NAN;
            break;
        }
        est_out[i] = r->sc.tokens_per_s;
        meas_out[i] = me.tps;
        if (log)
            fprintf(log, "  set %d: estimated %.1f tok/s, measured %.1f tok/s\n", i + 1, est_out[i], me.tps);
    }
    free(rows);
    return isnan(rho) ? NAN : tune_spearman(est_out, meas_out, nsets);
}

int tune_parse_list(const char *arg, int32_t *ints, float *floats, int32_t *n, char *err, size_t errlen)
{
    char buf[1024];
    *n = 0;
    if (snprintf(buf, sizeof buf, "%s", arg) >= (int)sizeof buf)
        return util_err(err, errlen, "list too long");
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        if (*n == SEARCH_TUNE_MAX)
            return util_err(err, errlen, "takes at most %d values", SEARCH_TUNE_MAX);
        errno = 0;
        if (ints) {
            long v = strtol(t, &end, 10);
            if (errno || *end || end == t || v < 0 || v > (1L << 24))
                return util_err(err, errlen, "values must be integers in [0, %ld], got '%s'", 1L << 24, t);
            ints[(*n)++] = (int32_t)v;
        } else {
            float f = strtof(t, &end);
            if (errno || *end || end == t || !(f >= 0.0f && f <= 1.0f))
                return util_err(err, errlen, "values must be numbers in [0, 1], got '%s'", t);
            floats[(*n)++] = f;
        }
    }
    if (*n == 0)
        return util_err(err, errlen, "needs at least one value");
    return 0;
}

int32_t tune_norm_head(int32_t h, int32_t vocab)
{
    return h >= vocab - vocab % 16 ? 0 : h - h % 16;
}

int tune_run(const calib_set *cs, const model *m, fwd_state *fs, const skip_set *ss, const int32_t *heads,
             int32_t n_heads, const float *gammas, int32_t n_gammas, int32_t before_head, float before_gamma,
             const cost_model *cm, const spec_params *sp, tune_result *tr, FILE *log, char *err, size_t errlen)
{
    int32_t V = m->config.vocab_size;
    memset(tr, 0, sizeof *tr);
    tr->before = -1;
    if (n_heads < 1 || n_heads > SEARCH_TUNE_MAX || n_gammas < 1 || n_gammas > SEARCH_TUNE_MAX)
        return util_err(err, errlen, "the tune step takes 1..%d head sizes and 1..%d exit thresholds",
                        SEARCH_TUNE_MAX, SEARCH_TUNE_MAX);
    if (cs->n_seqs < 2)
        return util_err(err, errlen, "the tune step needs at least 2 calibration prompts (its heads are counted on "
                        "one half and scored on the other); --no-tune skips it");
    double t0 = util_now();
    memcpy(tr->heads, heads, (size_t)n_heads * sizeof(int32_t));
    tr->n_heads = n_heads;
    memcpy(tr->gammas, gammas, (size_t)n_gammas * sizeof(float));
    tr->n_gammas = n_gammas;
    int have_h = 0, have_g = 0;
    for (int32_t i = 0; i < tr->n_heads; i++)
        have_h |= tune_norm_head(tr->heads[i], V) == tune_norm_head(before_head, V);
    for (int32_t j = 0; j < tr->n_gammas; j++)
        have_g |= tr->gammas[j] == before_gamma;
    if (!have_h && tr->n_heads < SEARCH_TUNE_MAX)
        tr->heads[tr->n_heads++] = before_head;
    if (!have_g && tr->n_gammas < SEARCH_TUNE_MAX)
        tr->gammas[tr->n_gammas++] = before_gamma;
    tune_opts to = {.head_sizes = tr->heads, .n_heads = tr->n_heads, .gammas = tr->gammas,
                    .n_gammas = tr->n_gammas, .reps = 41};
    if (log)
        fprintf(log, "search: tune step: %d head sizes x %d exit thresholds for the chosen set...\n", tr->n_heads,
                tr->n_gammas);
    if (search_tune(cs, m, fs, ss, cm, sp, &to, tr->grid, &tr->n, &tr->best, err, errlen) != 0)
        return -1;
    for (int32_t i = 0; i < tr->n; i++)
        if (tr->grid[i].head_size == tune_norm_head(before_head, V) && tr->grid[i].gamma_init == before_gamma)
            tr->before = i;
    tr->seconds = util_now() - t0;
    if (!log)
        return 0;
    fprintf(log, "search: estimated speedup over plain (rows: draft head, 0 = full %d; columns: gamma_init)\n"
            "  head   base ms", V);
    for (int32_t j = 0; j < tr->n_gammas; j++)
        fprintf(log, "  %5.2f", tr->gammas[j]);
    for (int32_t i = 0; i < tr->n; i++) {
        const tune_point *g = &tr->grid[i];
        if (i % tr->n_gammas == 0)
            fprintf(log, "\n  %5d  %7.3f ", g->head_size, g->draft_base * 1e3);
        fprintf(log, "  %4.3f%s", g->sc.speedup, i == tr->best ? "*" : i == tr->before ? "o" : " ");
    }
    fprintf(log, "\n  (* chosen, o before the tune; %.1f s)\n", tr->seconds);
    return 0;
}

void tune_apply(const tune_result *tr, const calib_set *cs, const model *m, skip_set *ss, spec_params *sp)
{
    const tune_point *b = &tr->grid[tr->best];
    if (b->head_size > 0) {
        search_head_tokens(cs, m, b->head_size, ss);
    } else {
        free(ss->head_tokens);
        ss->head_tokens = NULL;
        ss->n_head_tokens = 0;
    }
    sp->gamma_init = b->gamma_init;
    spec_params_to_exit(sp, &ss->exit);
}

int tune_confirm(const tune_bench *b, const calib_set *cs, fwd_state *fs, skip_set *best, const cost_model *cm,
                 spec_params *sp, const int32_t *heads, int32_t n_heads, const float *gammas, int32_t n_gammas,
                 int32_t **ids, const int32_t *lens, int32_t np, int32_t n_new, tune_result *tr, tune_measured *mp,
                 tune_measured *ms, FILE *log, char *err, size_t errlen)
{
    char e[256];
    skip_set before = {0};
    spec_params sp_before = *sp;
    if (tr) {
        int32_t head_size = best->head_tokens ? best->n_head_tokens : 0;
        if (tune_run(cs, b->m, fs, best, heads, n_heads, gammas, n_gammas, head_size, sp->gamma_init, cm, sp, tr,
                     log, err, errlen) != 0)
            return -1;
        skipset_copy(&before, best);   /* the set as it was, measured beside the tuned one */
        tune_apply(tr, cs, b->m, best, sp);
        if (log)
            fprintf(log, "search: tuned: draft head %d, gamma_init %.2f: estimated %.3fx (before %.3fx)\n",
                    tr->grid[tr->best].head_size, sp->gamma_init, tr->grid[tr->best].sc.speedup,
                    tr->before >= 0 ? tr->grid[tr->before].sc.speedup : NAN);
    }
    int with_before = tr && tr->best != tr->before;
    if (log)
        fprintf(log, "search: confirming with real decoding (plain vs self-spec%s, %d prompts, interleaved)...\n",
                with_before ? " before and after the tune" : "", np);
    const skip_set *cfg_ss[3] = {NULL, best, &before};
    const spec_params *cfg_sp[3] = {NULL, sp, &sp_before};
    tune_measured mm[3] = {{0}};
    if (tune_measure_many(b, with_before ? 3 : 2, cfg_ss, cfg_sp, ids, lens, np, n_new, mm, e, sizeof e) != 0 && log)
        fprintf(log, "selfspec: measuring: %s\n", e);
    *mp = mm[0];
    *ms = mm[1];
    if (log)
        fprintf(log, "search: measured plain %.1f tok/s, self-spec %.1f tok/s (%.2fx), acceptance %.3f\n", mp->tps,
                ms->tps, ms->tps / mp->tps, ms->accept_rate);
    if (tr) {
        tr->plain = *mp;
        tr->m_tuned = *ms;
        tr->m_before = with_before ? mm[2] : *ms;
        if (with_before && log)
            fprintf(log, "search: before the tune: self-spec %.1f tok/s (%.2fx), acceptance %.3f\n", mm[2].tps,
                    mm[2].tps / mp->tps, mm[2].accept_rate);
    }
    if (before.attn_skip)
        skipset_free(&before);
    return 0;
}
