/*
 * skipset.c - skip-set configs (see skipset.h). JSON through cJSON.
 */
#include "decode/skipset.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "util/util.h"

void skipset_init(skip_set *s, int32_t n_layers)
{
    memset(s, 0, sizeof *s);
    s->n_layers = n_layers;
    s->attn_skip = callocCheck((size_t)n_layers, 1);
    s->mlp_skip = callocCheck((size_t)n_layers, 1);
    s->exit = (skip_exit){NAN, NAN, NAN, NAN};
    snprintf(s->source, sizeof s->source, "none");
}

void skipset_free(skip_set *s)
{
    free(s->attn_skip);
    free(s->mlp_skip);
    free(s->head_tokens);
    memset(s, 0, sizeof *s);
}

void skipset_copy(skip_set *dst, const skip_set *s)
{
    skipset_init(dst, s->n_layers);
    memcpy(dst->attn_skip, s->attn_skip, (size_t)s->n_layers);
    memcpy(dst->mlp_skip, s->mlp_skip, (size_t)s->n_layers);
    if (s->head_tokens) {
        dst->head_tokens = mallocCheck((size_t)s->n_head_tokens * sizeof(int32_t));
        memcpy(dst->head_tokens, s->head_tokens, (size_t)s->n_head_tokens * sizeof(int32_t));
    }
    dst->n_head_tokens = s->n_head_tokens;
    dst->exit = s->exit;
    dst->speedup = s->speedup;
    snprintf(dst->source, sizeof dst->source, "%s", s->source);
}

void skipset_default_path(const char *dir, const model_config *c, char *out, size_t outlen)
{
    char slug[128];
    size_t k = 0;
    for (const char *p = c->name; *p && k < sizeof slug - 1; p++)
        slug[k++] = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32
                           : ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')) ? *p : '-');
    slug[k] = '\0';
    snprintf(out, outlen, "%s/%s.json", dir, k ? slug : "model");
}

int32_t skipset_count(const skip_set *s)
{
    int32_t n = 0;
    for (int32_t l = 0; l < s->n_layers; l++)
        n += s->attn_skip[l] + s->mlp_skip[l];
    return n;
}

/* Read an array of layer indices into flags; reject bad entries. */
static int read_layers(const cJSON *root, const char *key, int32_t n_layers, uint8_t *flags,
                       const char *path, char *err, size_t errlen)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!arr)
        return 0;   /* absent = skip none */
    if (!cJSON_IsArray(arr))
        return util_err(err, errlen, "%s: \"%s\" must be an array of layer indices", path, key);
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        /* valueint is cJSON's saturated conversion: no out-of-range cast */
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)it->valueint)
            return util_err(err, errlen, "%s: \"%s\" holds a non-integer entry", path, key);
        int v = it->valueint;
        if (v < 0 || v >= n_layers)
            return util_err(err, errlen, "%s: \"%s\" names layer %d, but the model has layers 0..%d",
                            path, key, v, n_layers - 1);
        if (flags[v])
            return util_err(err, errlen, "%s: \"%s\" lists layer %d twice", path, key, v);
        flags[v] = 1;
    }
    return 0;
}

static int read_head(const cJSON *root, skip_set *s, const model_config *c, const char *path,
                     char *err, size_t errlen)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "draft_head");
    if (!arr)
        return 0;
    if (!cJSON_IsArray(arr))
        return util_err(err, errlen, "%s: \"draft_head\" must be an array of token ids", path);
    int32_t n = cJSON_GetArraySize(arr);
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "draft_head_size");
    if (size && cJSON_IsNumber(size) && size->valueint > 0 && size->valueint < n)
        n = size->valueint;
    n -= n % QMAT_ROWS;   /* the head is packed in 16-row groups */
    if (n <= 0)
        return 0;
    s->head_tokens = mallocCheck((size_t)n * sizeof(int32_t));
    uint8_t *seen = callocCheck((size_t)c->vocab_size, 1);
    int rc = 0;
    for (int32_t i = 0; i < n && rc == 0; i++) {
        const cJSON *it = cJSON_GetArrayItem(arr, i);
        int v = cJSON_IsNumber(it) && it->valuedouble == (double)it->valueint ? it->valueint : -1;
        if (v < 0 || v >= c->vocab_size || seen[v])
            rc = util_err(err, errlen, "%s: draft_head entry %d (%d) is not a new token id < %d",
                          path, i, v, c->vocab_size);
        else
            seen[v] = 1, s->head_tokens[i] = v;
    }
    free(seen);
    s->n_head_tokens = rc == 0 ? n : 0;
    return rc;
}

/* The exit constants, by name, with their ranges: [lo, hi], or [lo, hi)
 * where hi_open. */
static const struct {
    const char *name;
    size_t off;
    float lo, hi;
    int hi_open;
} exit_fields[] = {
    {"gamma_init", offsetof(skip_exit, gamma_init), 0.0f, 1.0f, 0},
    {"gamma_step", offsetof(skip_exit, gamma_step), 0.0f, 1.0f, 1},
    {"gamma_ema", offsetof(skip_exit, gamma_ema), 0.0f, 1.0f, 0},
    {"ar_init", offsetof(skip_exit, ar_init), 0.0f, 1.0f, 0},
};
#define N_EXIT_FIELDS ((int)(sizeof exit_fields / sizeof exit_fields[0]))

static float *exit_field(skip_exit *e, int i)
{
    return (float *)((char *)e + exit_fields[i].off);
}

/* "exit": an object of known members, each a number in its range. */
static int read_exit(const cJSON *root, skip_exit *e, const char *path, char *err, size_t errlen)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "exit");
    if (!o)
        return 0;   /* an older config: the defaults */
    if (!cJSON_IsObject(o))
        return util_err(err, errlen, "%s: \"exit\" must be an object of draft-exit constants", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        int i = 0;
        while (i < N_EXIT_FIELDS && strcmp(it->string, exit_fields[i].name) != 0)
            i++;
        if (i == N_EXIT_FIELDS)
            return util_err(err, errlen, "%s: unknown \"exit\" member \"%s\" (known: gamma_init, gamma_step, "
                            "gamma_ema, ar_init)", path, it->string);
        double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
        if (!(v >= exit_fields[i].lo && (exit_fields[i].hi_open ? v < exit_fields[i].hi : v <= exit_fields[i].hi)))
            return util_err(err, errlen, "%s: \"exit\".%s must be a number in [%g, %g%s", path, it->string,
                            exit_fields[i].lo, exit_fields[i].hi, exit_fields[i].hi_open ? ")" : "]");
        *exit_field(e, i) = (float)v;
    }
    return 0;
}

/* The speedup the search recorded: "measured", else "estimated". */
static float read_speedup(const cJSON *root)
{
    const char *keys[] = {"measured", "estimated"};
    for (int i = 0; i < 2; i++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
        const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, "speedup") : NULL;
        if (cJSON_IsNumber(v) && v->valuedouble > 0)
            return (float)v->valuedouble;
    }
    return 0.0f;
}

static int check_model(const cJSON *root, const model_config *c, const char *path, char *err, size_t errlen)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *nl = m ? cJSON_GetObjectItemCaseSensitive(m, "n_layers") : NULL;
    if (nl && (!cJSON_IsNumber(nl) || nl->valueint != c->n_layers))
        return util_err(err, errlen, "%s: made for a %d-layer model, this model has %d layers",
                        path, nl && cJSON_IsNumber(nl) ? nl->valueint : -1, c->n_layers);
    return 0;
}

/* The layer count a config was made for: its "model": {"n_layers"}. */
static int file_layers(const cJSON *root, const char *path, int32_t *n, char *err, size_t errlen)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *nl = m ? cJSON_GetObjectItemCaseSensitive(m, "n_layers") : NULL;
    if (!cJSON_IsNumber(nl) || nl->valuedouble != (double)nl->valueint || nl->valueint < 1 ||
        nl->valueint > SKIPSET_MAX_LAYERS)
        return util_err(err, errlen, "%s: no valid model.n_layers (1..%d)", path, SKIPSET_MAX_LAYERS);
    *n = nl->valueint;
    return 0;
}

int skipset_load(skip_set *s, const char *path, const model_config *c, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    size_t len;
    char *text = util_read_file(path, &len, err, errlen);
    if (!text)
        return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return util_err(err, errlen, "%s: not a JSON object", path);
    }
    int32_t n_layers = c ? c->n_layers : 0;
    int rc = c ? check_model(root, c, path, err, errlen) : file_layers(root, path, &n_layers, err, errlen);
    if (rc == 0) {
        skipset_init(s, n_layers);
        rc = read_layers(root, "attn_skip", n_layers, s->attn_skip, path, err, errlen);
    }
    if (rc == 0)
        rc = read_layers(root, "mlp_skip", n_layers, s->mlp_skip, path, err, errlen);
    if (rc == 0 && c)   /* a foreign config's head is in another vocabulary */
        rc = read_head(root, s, c, path, err, errlen);
    if (rc == 0)
        rc = read_exit(root, &s->exit, path, err, errlen);
    s->speedup = read_speedup(root);
    cJSON_Delete(root);
    if (rc != 0) {
        skipset_free(s);
        return -1;
    }
    snprintf(s->source, sizeof s->source, "%s", path);
    return 0;
}

int skipset_set_head(skip_set *s, int32_t draft_head, char *err, size_t errlen)
{
    if (draft_head < 0)
        return 0;                      /* the config's own */
    if (draft_head % QMAT_ROWS)
        return util_err(err, errlen, "the draft head size must be a multiple of %d, got %d", QMAT_ROWS, draft_head);
    if (draft_head > s->n_head_tokens)
        return util_err(err, errlen, "a draft head of %d tokens was asked for; the config lists %d",
                        draft_head, s->n_head_tokens);
    if (draft_head == 0) {             /* the full head */
        free(s->head_tokens);
        s->head_tokens = NULL;
    }
    s->n_head_tokens = draft_head;
    return 0;
}

int skipset_choose(skip_set *s, const char *skip, int32_t draft_head, const char *configs_dir,
                   const model_config *c, char *err, size_t errlen)
{
    char path[4096 + 300];
    if (skip && !strcmp(skip, "none")) {
        skipset_init(s, c->n_layers);
        return 0;
    }
    if (skip) {
        snprintf(path, sizeof path, "%s", skip);
    } else if (skipset_find(configs_dir, c, path, sizeof path) != 0) {
        memset(s, 0, sizeof *s);
        util_err(err, errlen, "no skip-set config for model '%s' in %s", c->name, configs_dir);
        return 1;
    }
    if (skipset_load(s, path, c, err, errlen) != 0)
        return -1;
    if (skipset_set_head(s, draft_head, err, errlen) != 0) {
        skipset_free(s);
        return -1;
    }
    return 0;
}

int skipset_pays(const skip_set *s)
{
    return !(s->speedup > 0.0f && s->speedup < 1.0f);
}

/* Does the config's "model" entry describe c? */
static int config_matches(const char *path, const model_config *c)
{
    size_t len;
    char err[8];
    char *text = util_read_file(path, &len, err, sizeof err);
    if (!text)
        return 0;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *m = root ? cJSON_GetObjectItemCaseSensitive(root, "model") : NULL;
    const cJSON *name = m ? cJSON_GetObjectItemCaseSensitive(m, "name") : NULL;
    const cJSON *nl = m ? cJSON_GetObjectItemCaseSensitive(m, "n_layers") : NULL;
    const cJSON *dim = m ? cJSON_GetObjectItemCaseSensitive(m, "dim") : NULL;
    const cJSON *voc = m ? cJSON_GetObjectItemCaseSensitive(m, "vocab_size") : NULL;
    int ok = cJSON_IsString(name) && !strcmp(name->valuestring, c->name) &&
             cJSON_IsNumber(nl) && nl->valueint == c->n_layers &&
             cJSON_IsNumber(dim) && dim->valueint == c->dim &&
             cJSON_IsNumber(voc) && voc->valueint == c->vocab_size;
    cJSON_Delete(root);
    return ok;
}

int skipset_find(const char *dir, const model_config *c, char *out, size_t outlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int found = -1;
    struct dirent *e;
    while (found != 0 && (e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
            continue;
        snprintf(out, outlen, "%s/%s", dir, e->d_name);
        if (config_matches(out, c))
            found = 0;
    }
    closedir(d);
    return found;
}

static cJSON *layer_array(const uint8_t *flags, int32_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (int32_t l = 0; l < n; l++)
        if (flags[l])
            cJSON_AddItemToArray(a, cJSON_CreateNumber(l));
    return a;
}

int skipset_save(const skip_set *s, const char *path, const model_config *c, int32_t head_size,
                 const char *extra_json, char *err, size_t errlen)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *m = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(m, "name", c->name);
    cJSON_AddNumberToObject(m, "n_layers", c->n_layers);
    cJSON_AddNumberToObject(m, "dim", c->dim);
    cJSON_AddNumberToObject(m, "vocab_size", c->vocab_size);
    cJSON_AddItemToObject(root, "attn_skip", layer_array(s->attn_skip, s->n_layers));
    cJSON_AddItemToObject(root, "mlp_skip", layer_array(s->mlp_skip, s->n_layers));
    if (s->head_tokens) {
        cJSON_AddNumberToObject(root, "draft_head_size", head_size > 0 ? head_size : s->n_head_tokens);
        cJSON_AddItemToObject(root, "draft_head", cJSON_CreateIntArray(s->head_tokens, s->n_head_tokens));
    }
    cJSON *ex = NULL;
    skip_exit e = s->exit;
    for (int i = 0; i < N_EXIT_FIELDS; i++)
        if (!isnan(*exit_field(&e, i))) {
            ex = ex ? ex : cJSON_AddObjectToObject(root, "exit");
            /* the float's shortest decimal, so 0.6f reads back as 0.6f and prints as 0.6 */
            char num[32];
            snprintf(num, sizeof num, "%.7g", *exit_field(&e, i));
            cJSON_AddItemToObject(ex, exit_fields[i].name, cJSON_CreateNumber(strtod(num, NULL)));
        }
    if (extra_json) {
        cJSON *extra = cJSON_Parse(extra_json);
        cJSON *it = extra ? extra->child : NULL;
        while (it) {
            cJSON *next = it->next;
            if (!cJSON_GetObjectItemCaseSensitive(root, it->string))
                cJSON_AddItemToObject(root, it->string, cJSON_Duplicate(it, 1));
            it = next;
        }
        cJSON_Delete(extra);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        return util_err(err, errlen, "cannot write '%s'", path);
    }
    int bad = fputs(text, f) < 0 || fputc('\n', f) == EOF;
    bad |= fclose(f) != 0;
    free(text);
    return bad ? util_err(err, errlen, "error writing '%s'", path) : 0;
}

void skipset_mask(const skip_set *s, layer_mask *mask)
{
    mask->attn = mallocCheck((size_t)s->n_layers);
    mask->mlp = mallocCheck((size_t)s->n_layers);
    for (int32_t l = 0; l < s->n_layers; l++) {
        mask->attn[l] = !s->attn_skip[l];
        mask->mlp[l] = !s->mlp_skip[l];
    }
}

void skipset_mask_free(layer_mask *mask)
{
    free(mask->attn);
    free(mask->mlp);
    mask->attn = mask->mlp = NULL;
}
