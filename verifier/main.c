/*
 * main.c - bin/selfspec: pick the subcommand and hand it the rest of argv.
 * The subcommands live one per file (commands.h); everything they do that
 * is more than option parsing lives in the library, common/.
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *what;
} command;

static const command COMMANDS[] = {
    {"generate", cmd_generate, "generate text from a prompt"},
    {"batch", cmd_batch, "run an OpenAI batch file through the batching engine"},
    {"search", cmd_search, "find the sublayers the draft skips"},
    {"worker", cmd_worker, "decode the jobs of a Redis stream (consumer group)"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server"},
};
#define N_COMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: selfspec <command> [options]\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-10s %s (selfspec %s --help)\n", COMMANDS[i].name, COMMANDS[i].what, COMMANDS[i].name);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name))
            return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "selfspec: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
