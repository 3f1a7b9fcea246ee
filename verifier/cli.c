/*
 * cli.c - helpers shared by the subcommands (see cli.h).
 */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "format/gguf.h"
#include "util/util.h"

int cli_parse_int(const char *s, const char *what, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "selfspec: %s must be an integer in [%ld, %ld], got '%s'\n", what, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, const char *what, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "selfspec: %s must be a number, got '%s'\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The default model: $SELFSPEC_MODEL, else ../models/... relative to the
 * executable, else relative to the working directory. */
const char *cli_default_model(char *buf, size_t n)
{
    const char *env = getenv("SELFSPEC_MODEL");
    if (env && *env)
        return env;
    char exe[PATH_MAX];
    if (util_exe_dir(exe, sizeof exe) == 0) {
        snprintf(buf, n, "%s/../%s", exe, DEFAULT_MODEL_REL);
        if (access(buf, R_OK) == 0)
            return buf;
    }
    return DEFAULT_MODEL_REL;
}

/* configs/: $SELFSPEC_CONFIGS, else ../configs next to the executable. */
void cli_configs_dir(char *buf, size_t n)
{
    const char *env = getenv("SELFSPEC_CONFIGS");
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    if (util_exe_dir(exe, sizeof exe) == 0)
        snprintf(buf, n, "%s/../configs", exe);
    else
        snprintf(buf, n, "configs");
}

tokenizer *cli_load_tokenizer(const char *model_path)
{
    char err[512];
    gguf_file *g = NULL;
    tokenizer *tok = NULL;
    if (gguf_open(model_path, &g, err, sizeof err) != 0 || tokenizer_build(&tok, g, err, sizeof err) != 0) {
        fprintf(stderr, "selfspec: tokenizer of '%s': %s\n", model_path, err);
        tok = NULL;
    }
    gguf_close(g);
    return tok;
}
