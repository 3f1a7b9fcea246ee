/*
 * test_fuzz_corpus.c - replay the fuzzing corpus through the GGUF reader.
 *
 * Every file in tests/fuzz/corpus/ (minimised inputs found by fuzz_gguf) and
 * in the seed directory (small valid GGUF files that tests/fuzz/make_seeds.c
 * writes at build time: $SELFSPEC_FUZZ_SEEDS, which `make unit` sets, else
 * build/fuzz-seeds) is read into a heap buffer of exactly its size and
 * parsed with gguf_open_memory; accepted files are walked like the fuzzer
 * does (tests/fuzz/gguf_walk.h). Under the ASan/UBSan test build this proves
 * the corpus is crash-free and that every seed is accepted. Run from the
 * repository root.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "fuzz/gguf_walk.h"

#define CORPUS_DIR "tests/fuzz/corpus"
#define SEEDS_DIR "build/fuzz-seeds"

/* Read a whole file into an exactly-sized malloc'd buffer. */
static uint8_t *corpus_read(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long n = ftell(fp);
    assert_true(n >= 0);
    rewind(fp);
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *size = (size_t)n;
    return buf;
}

/* Replay every file of dir; counts into *n_files and *n_ok. */
static void corpus_replay_dir(const char *dir, size_t *n_files, size_t *n_ok)
{
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open %s (run tests from the repository root; "
                 "the seeds are written by make unit)", dir);
    volatile uint64_t sink = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[1024], err[256] = "";
        size_t size;
        gguf_file *f = NULL;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        uint8_t *buf = corpus_read(path, &size);
        if (gguf_open_memory(buf, size, &f, err, sizeof err) == 0) {
            sink += gguf_walk(f);
            gguf_close(f);
            (*n_ok)++;
        } else {
            assert_null(f);
            if (err[0] == '\0')
                fail_msg("%s: failed without an error message", path);
        }
        free(buf);
        (*n_files)++;
    }
    closedir(d);
    (void)sink;
}

static void test_replay_corpus(void **state)
{
    size_t n_files = 0, n_ok = 0;
    corpus_replay_dir(CORPUS_DIR, &n_files, &n_ok);
    print_message("replayed %zu corpus files (%zu accepted)\n", n_files, n_ok);
    assert_true(n_files > 0);
}

/* The seeds are valid files: each one is accepted and walked. */
static void test_replay_seeds(void **state)
{
    const char *dir = getenv("SELFSPEC_FUZZ_SEEDS");
    size_t n_files = 0, n_ok = 0;
    corpus_replay_dir(dir && *dir ? dir : SEEDS_DIR, &n_files, &n_ok);
    print_message("replayed %zu seed files (%zu accepted)\n", n_files, n_ok);
    assert_true(n_files > 0);
    assert_int_equal(n_ok, n_files);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_corpus),
        cmocka_unit_test(test_replay_seeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
