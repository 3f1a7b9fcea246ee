/*
 * cli.h - helpers shared by the subcommands of bin/selfspec: number
 * parsing with clear messages, default paths, loading a model's tokenizer.
 */
#ifndef SELFSPEC_CLI_H
#define SELFSPEC_CLI_H

#include <stddef.h>

#include "text/tokenizer.h"

#define DEFAULT_MODEL_REL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* Parse an integer in [lo, hi] / a float; print "selfspec: <what> ..." and
 * return -1 when malformed. */
int cli_parse_int(const char *s, const char *what, long lo, long hi, long *out);
int cli_parse_float(const char *s, const char *what, float *out);

/* The default model: $SELFSPEC_MODEL, else ../models/... next to the
 * executable, else relative to the working directory. */
const char *cli_default_model(char *buf, size_t n);

/* configs/: $SELFSPEC_CONFIGS, else ../configs next to the executable. */
void cli_configs_dir(char *buf, size_t n);

/* Build the tokenizer of a GGUF model; prints the error. */
tokenizer *cli_load_tokenizer(const char *model_path);

#endif
