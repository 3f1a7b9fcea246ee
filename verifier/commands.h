/*
 * commands.h - the subcommands of bin/selfspec, one file each in verifier/:
 * each takes its own argv (argv[0] = the subcommand's name) and returns the
 * process exit status (0 ok, 1 failure, 2 bad usage).
 */
#ifndef SELFSPEC_COMMANDS_H
#define SELFSPEC_COMMANDS_H

int cmd_generate(int argc, char **argv);   /* generate.c */
int cmd_search(int argc, char **argv);     /* search.c */
int cmd_batch(int argc, char **argv);      /* batch.c */
int cmd_worker(int argc, char **argv);     /* worker.c */
int cmd_serve(int argc, char **argv);      /* serve.c */

#endif
