/*
 * e2e_selfspec.c - end-to-end exactness check of self-speculative greedy
 * decoding on the real model (release build; not a cmocka test).
 *
 * Built with the release CFLAGS against build/libselfspec.a into build/e2e/
 * and run by `make test` (target e2e), from the repository root.
 *
 * Model: $SELFSPEC_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf. When
 * the file is absent it says so and exits 0 (skipped).
 *
 * Prompts: the 24 of configs/prompts/heldout.jsonl and the first 6 of
 * configs/prompts/calibration.jsonl (JSONL, {"prompt": ...}), each put into
 * the model's chat template and tokenized with special tokens parsed.
 *
 * For every prompt, plain greedy decoding of 128 new tokens (ignore EOS) is
 * the reference. gen_selfspec must give exactly the same ids with:
 *   - the shipped skip-set config (skipset_find in $SELFSPEC_CONFIGS, else
 *     configs/); when there is none, that configuration is skipped with a note;
 *   - skip nothing (the draft is the full model);
 *   - skip every sublayer but one (attention of layer 0 kept);
 *   - skip every MLP;
 *   - skip every attention;
 *   - two random skip sets (fixed seed; each sublayer skipped with
 *     probability 1/4, resp. 1/8, so that some drafts are accepted: sets
 *     that skip half the model are no different from the extremes above);
 *   - context drafts alone (--draft context, no skip set), and chained
 *     context + layer drafts (--draft chain) and --draft auto with the
 *     second random set, on the extreme-set prompts.
 * Run time (reduced on purpose): plain decoding and the shipped config run
 * on all 30 prompts x 128 tokens; the other six sets run on the first
 * E2E_EXTREME_PROMPTS prompts (8 by default; $E2E_EXTREME_PROMPTS overrides,
 * up to 30). Bad sets are slow: their drafts are confidently wrong, and the
 * adaptive exit threshold only rises by ~0.001 per verification, so nearly
 * every emitted token costs max_draft draft steps plus a 13-token verify
 * (the "all but attention 0" set runs at about a quarter of plain speed).
 * Measured on a loaded 2-core machine, one thread: ~3 minutes in all. On a
 * busy machine set OMP_NUM_THREADS=1: with two OpenMP threads competing for
 * two busy cores, plain decoding ran 10x slower (9 tok/s instead of 92).
 * $E2E_PROMPTS limits the number of prompts (for a quick look), $E2E_NEW the
 * new tokens per prompt (default 128; `make test-qwen` runs Qwen2.5-1.5B,
 * eleven times larger, on fewer prompts and tokens).
 *
 * Prints the acceptance rate and tokens/s of every configuration. Exits 1 on
 * any mismatch, naming the configuration, the prompt index and the first
 * differing position; 2 on a setup error.
 */
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#include "decode/generate.h"
#include "format/gguf.h"
#include "model/model.h"
#include "decode/skipset.h"
#include "decode/spec.h"
#include "oracle.h"
#include "text/chat.h"
#include "text/prompts.h"
#include "text/tokenizer.h"
#include "util/util.h"

#define DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define N_NEW_DEFAULT 128
#define N_HELDOUT 24
#define N_CALIB 6
#define N_PROMPTS (N_HELDOUT + N_CALIB)
#define EXTREME_PROMPTS 8

typedef struct {
    int32_t *ids;
    int32_t n;
    int32_t cap;
} idbuf;

static int collect(void *ctx, int32_t tok)
{
    idbuf *b = ctx;
    if (b->n < b->cap)
        b->ids[b->n] = tok;
    b->n++;
    return 0;
}

static const tokenizer *g_tok;

static int is_eog(const void *ctx, int32_t tok)
{
    (void)ctx;
    return tokenizer_is_eog(g_tok, tok);
}

/* Read up to max prompts of a JSONL file into out[]; returns how many. */
/* The first `max` prompts of a JSONL prompt file (text/prompts.h). */
static int read_prompts(const char *path, int max, char **out)
{
    char err[512], *all[256];
    int n = prompts_load_jsonl(path, all, 256, err, sizeof err);
    if (n < 0) {
        fprintf(stderr, "e2e_selfspec: %s\n", err);
        return -1;
    }
    int keep = n < max ? n : max;
    memcpy(out, all, (size_t)keep * sizeof *out);
    prompts_free(all + keep, n - keep);
    return keep;
}

typedef struct {
    char name[64];
    skip_set ss;
    int n_prompts;       /* how many of the prompts it runs on */
    int present;
    int32_t draft;          /* spec_params.draft (SPEC_DRAFT_LAYERS unless a context config) */
    int no_ss;              /* draft without a skip set (context drafts only) */
    /* results */
    int64_t drafted, accepted, verifications, generated;
    double seconds, draft_seconds, verify_seconds;
    int mismatches;
} config;

int main(void)
{
    const char *model_path = getenv("SELFSPEC_MODEL");
    if (!model_path || !*model_path)
        model_path = DEFAULT_MODEL;
    if (access(model_path, R_OK) != 0) {
        printf("e2e_selfspec: SKIPPED: model '%s' not found (run 'make setup', or set SELFSPEC_MODEL)\n",
               model_path);
        return 0;
    }
    const char *cfg_dir = getenv("SELFSPEC_CONFIGS");
    if (!cfg_dir || !*cfg_dir)
        cfg_dir = "configs";
    int n_extreme = EXTREME_PROMPTS;
    const char *ne = getenv("E2E_EXTREME_PROMPTS");
    if (ne && *ne)
        n_extreme = atoi(ne);
    if (n_extreme < 1 || n_extreme > N_PROMPTS)
        n_extreme = N_PROMPTS;

    char err[512];
    double t_start = util_now();
    model m;
    if (model_load(&m, model_path, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "e2e_selfspec: cannot load '%s': %s\n", model_path, err);
        return 2;
    }
    gguf_file *g = NULL;
    tokenizer *tok = NULL;
    if (gguf_open(model_path, &g, err, sizeof err) != 0 || tokenizer_build(&tok, g, err, sizeof err) != 0) {
        fprintf(stderr, "e2e_selfspec: tokenizer of '%s': %s\n", model_path, err);
        return 2;
    }
    gguf_close(g);
    g_tok = tok;

    /* prompts */
    char *texts[N_PROMPTS];
    int nh = read_prompts("configs/prompts/heldout.jsonl", N_HELDOUT, texts);
    int nc = nh < 0 ? -1 : read_prompts("configs/prompts/calibration.jsonl", N_CALIB, texts + nh);
    if (nh < 0 || nc < 0)
        return 2;
    int n_prompts = nh + nc;
    const char *nn = getenv("E2E_NEW");
    int n_new = nn && atoi(nn) > 0 && atoi(nn) <= 4096 ? atoi(nn) : N_NEW_DEFAULT;
    const char *np = getenv("E2E_PROMPTS");   /* fewer prompts, for a quick look */
    if (np && atoi(np) > 0 && atoi(np) < n_prompts) {
        for (int i = atoi(np); i < n_prompts; i++)
            free(texts[i]);
        n_prompts = atoi(np);
        nh = nh < n_prompts ? nh : n_prompts;
        nc = n_prompts - nh;
    }
    if (n_prompts != N_PROMPTS && !(np && *np))
        printf("e2e_selfspec: note: %d prompts (%d held-out + %d calibration), expected %d\n", n_prompts, nh, nc,
               N_PROMPTS);
    if (n_prompts == 0) {
        fprintf(stderr, "e2e_selfspec: no prompts\n");
        return 2;
    }
    if (n_extreme > n_prompts)
        n_extreme = n_prompts;
    int32_t *pids[N_PROMPTS], plen[N_PROMPTS], max_len = 0;
    for (int i = 0; i < n_prompts; i++) {
        char *chat = tokenizer_chat_prompt(tok, NULL, texts[i], err, sizeof err);
        if (!chat) {
            fprintf(stderr, "e2e_selfspec: chat template: %s\n", err);
            return 2;
        }
        size_t n = 0;
        if (tokenizer_encode(tok, chat, strlen(chat), tokenizer_add_bos(tok), 1, &pids[i], &n, err, sizeof err) != 0 ||
            n == 0) {
            fprintf(stderr, "e2e_selfspec: tokenizing prompt %d: %s\n", i, n ? err : "empty");
            return 2;
        }
        plen[i] = (int32_t)n;
        max_len = plen[i] > max_len ? plen[i] : max_len;
        free(chat);
    }

    int32_t ctx = max_len + n_new + SPEC_MAX_DRAFT + 8;
    kv_cache kv;
    fwd_state fs;
    if (kv_init(&kv, &m.config, ctx, err, sizeof err) != 0) {
        fprintf(stderr, "e2e_selfspec: %s\n", err);
        return 2;
    }
    fwd_state_init(&fs, &m.config, 256, ctx);
    gen_params gp = {.max_tokens = n_new, .sampling = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f},
                     .ignore_eos = 1, .is_eog = is_eog, .eog_ctx = NULL};
    spec_params sp;
    spec_params_default(&sp);
    printf("e2e_selfspec: model %s (%d layers), %d prompts (longest %d tokens), %d new tokens each, "
           "greedy, ignore EOS; extreme skip sets on the first %d prompts\n",
           m.config.name, m.config.n_layers, n_prompts, max_len, n_new, n_extreme);

    /* reference: plain decoding */
    idbuf ref[N_PROMPTS];
    double plain_s = 0.0;
    int64_t plain_tokens = 0;
    for (int i = 0; i < n_prompts; i++) {
        gen_stats st;
        ref[i] = (idbuf){.ids = malloc(n_new * sizeof(int32_t)), .n = 0, .cap = n_new};
        if (gen_plain(&m, &fs, &kv, pids[i], plen[i], &gp, collect, &ref[i], &st, err, sizeof err) != 0) {
            fprintf(stderr, "e2e_selfspec: gen_plain, prompt %d: %s\n", i, err);
            return 2;
        }
        if (ref[i].n != n_new) {
            fprintf(stderr, "e2e_selfspec: plain decoding of prompt %d gave %d tokens, want %d\n", i, ref[i].n,
                    n_new);
            return 2;
        }
        plain_s += st.prefill_seconds + st.decode_seconds;
        plain_tokens += st.generated_tokens;
    }
    printf("  %-28s %3d prompts  %6.1f tok/s  (%.1f s)\n", "plain", n_prompts, plain_tokens / plain_s, plain_s);
    fflush(stdout);

    /* the skip sets */
    enum { N_CONFIGS = 10 };
    config cf[N_CONFIGS];
    memset(cf, 0, sizeof cf);
    int L = m.config.n_layers;
    char shipped[1024];
    snprintf(cf[0].name, sizeof cf[0].name, "shipped config");
    cf[0].n_prompts = n_prompts;
    if (skipset_find(cfg_dir, &m.config, shipped, sizeof shipped) == 0) {
        if (skipset_load(&cf[0].ss, shipped, &m.config, err, sizeof err) != 0) {
            fprintf(stderr, "e2e_selfspec: the shipped config does not load: %s\n", err);
            return 1;
        }
        cf[0].present = 1;
        printf("  shipped config: %s (%d sublayers skipped, draft head %d, gamma_init %s)\n", shipped,
               skipset_count(&cf[0].ss), cf[0].ss.n_head_tokens, isnan(cf[0].ss.exit.gamma_init) ? "default" : "tuned");
    } else {
        printf("  note: no skip-set config for '%s' in %s/: the shipped-config check is skipped\n", m.config.name,
               cfg_dir);
    }
    snprintf(cf[1].name, sizeof cf[1].name, "skip none");
    skipset_init(&cf[1].ss, L);
    snprintf(cf[2].name, sizeof cf[2].name, "all but attn 0");
    skipset_init(&cf[2].ss, L);
    memset(cf[2].ss.attn_skip, 1, (size_t)L);
    memset(cf[2].ss.mlp_skip, 1, (size_t)L);
    cf[2].ss.attn_skip[0] = 0;
    snprintf(cf[3].name, sizeof cf[3].name, "every MLP");
    skipset_init(&cf[3].ss, L);
    memset(cf[3].ss.mlp_skip, 1, (size_t)L);
    snprintf(cf[4].name, sizeof cf[4].name, "every attention");
    skipset_init(&cf[4].ss, L);
    memset(cf[4].ss.attn_skip, 1, (size_t)L);
    uint64_t rng = 0x5e1f5eedull;
    for (int r = 0; r < 2; r++) {
        config *c = &cf[5 + r];
        uint64_t mask = r == 0 ? 3 : 7;   /* skip with probability 1/4, then 1/8 */
        skipset_init(&c->ss, L);
        for (int l = 0; l < L; l++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            c->ss.attn_skip[l] = ((rng >> 33) & mask) == 0;
            c->ss.mlp_skip[l] = ((rng >> 45) & mask) == 0;
        }
        snprintf(c->name, sizeof c->name, "random %d (%d skipped)", r + 1, skipset_count(&c->ss));
    }
    snprintf(cf[7].name, sizeof cf[7].name, "context drafts");
    skipset_init(&cf[7].ss, L);
    cf[7].draft = SPEC_DRAFT_CONTEXT;
    cf[7].no_ss = 1;
    for (int k = 8; k < 10; k++) {
        config *c = &cf[k];
        skipset_init(&c->ss, L);
        memcpy(c->ss.attn_skip, cf[6].ss.attn_skip, (size_t)L);
        memcpy(c->ss.mlp_skip, cf[6].ss.mlp_skip, (size_t)L);
        c->draft = k == 8 ? SPEC_DRAFT_CHAIN : SPEC_DRAFT_AUTO;
        snprintf(c->name, sizeof c->name, "%s + random 2", k == 8 ? "chain" : "auto");
    }
    for (int k = 1; k < N_CONFIGS; k++) {
        cf[k].present = 1;
        if (k >= 1)
            cf[k].n_prompts = n_extreme;
    }

    int total_mismatch = 0;
    for (int k = 0; k < N_CONFIGS; k++) {
        config *c = &cf[k];
        if (!c->present)
            continue;
        idbuf got = {.ids = malloc((n_new + 1) * sizeof(int32_t)), .n = 0, .cap = n_new + 1};
        for (int i = 0; i < c->n_prompts; i++) {
            gen_stats st;
            spec_stats ss;
            got.n = 0;
            spec_params spc = sp;   /* the shipped config drafts with its own tuned exit, as generate does */
            spc.draft = c->draft;
            spec_params_apply_exit(&spc, &c->ss.exit, 0);
            if (gen_selfspec(&m, &fs, &kv, c->no_ss ? NULL : &c->ss, &spc, pids[i], plen[i], &gp, collect, &got, &st,
                             &ss, err, sizeof err) != 0) {
                fprintf(stderr, "e2e_selfspec: gen_selfspec (%s), prompt %d: %s\n", c->name, i, err);
                return 2;
            }
            c->drafted += ss.counts.num_draft_tokens;
            c->accepted += ss.counts.num_accepted_tokens;
            c->verifications += ss.verifications;
            c->generated += st.generated_tokens;
            c->seconds += st.prefill_seconds + st.decode_seconds;
            c->draft_seconds += ss.draft_seconds;
            c->verify_seconds += ss.verify_seconds;
            int32_t n = got.n < ref[i].n ? got.n : ref[i].n, pos = 0;
            if (n > got.cap)
                n = got.cap;
            while (pos < n && got.ids[pos] == ref[i].ids[pos])
                pos++;
            if (pos < n || got.n != ref[i].n) {
                c->mismatches++;
                if (pos < n)
                    printf("MISMATCH [%s] prompt %d: first difference at position %d: plain %d, self-spec %d "
                           "(%d tokens each)\n",
                           c->name, i, pos, ref[i].ids[pos], got.ids[pos], got.n);
                else
                    printf("MISMATCH [%s] prompt %d: plain emitted %d tokens, self-spec %d\n", c->name, i,
                           ref[i].n, got.n);
            }
        }
        free(got.ids);
        printf("  %-28s %3d prompts  %6.1f tok/s  acceptance %.3f  %.2f accepted/verify  draft %.1f s, "
               "verify %.1f s  %s\n",
               c->name, c->n_prompts, c->seconds > 0 ? c->generated / c->seconds : 0.0,
               c->drafted ? (double)c->accepted / c->drafted : 0.0,
               c->verifications ? (double)c->accepted / c->verifications : 0.0, c->draft_seconds, c->verify_seconds,
               c->mismatches ? "MISMATCH" : "identical");
        fflush(stdout);
        total_mismatch += c->mismatches;
    }

    for (int k = 0; k < N_CONFIGS; k++)
        if (cf[k].present || k == 0)
            skipset_free(&cf[k].ss);
    for (int i = 0; i < n_prompts; i++) {
        free(ref[i].ids);
        free(pids[i]);
        free(texts[i]);
    }
    fwd_state_free(&fs);
    kv_free(&kv);
    tokenizer_free(tok);
    model_free(&m);
    printf("e2e_selfspec: %s (%.1f s)\n", total_mismatch ? "FAILED" : "passed", util_now() - t_start);
    if (total_mismatch) {
        printf("e2e_selfspec: %d prompt runs differ from plain decoding\n", total_mismatch);
        return 1;
    }
    return 0;
}
