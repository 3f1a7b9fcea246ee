/*
 * test_lines.c - api/lines.h: complete lines as they arrive from a pipe, no
 * wait when nothing is ready, a last line without '\n', blank lines, and an
 * over-long line handed over once and the rest of it dropped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "api/batchio.h"
#include "api/lines.h"

static void put(int fd, const char *s)
{
    assert_int_equal(write(fd, s, strlen(s)), (ssize_t)strlen(s));
}

static void expect_line(lines_reader *r, int wait, const char *want)
{
    const char *line;
    size_t n;
    assert_int_equal(lines_next(r, wait, &line, &n), 1);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(line, want, n);
}

static void test_pipe(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    lines_reader r;
    lines_init(&r, p[0], NULL);
    const char *line;
    size_t n;
    assert_int_equal(lines_next(&r, 0, &line, &n), 0);   /* nothing yet: no wait */
    put(p[1], "{\"a\": 1}\n{\"b\"");
    expect_line(&r, 0, "{\"a\": 1}");
    assert_int_equal(lines_next(&r, 0, &line, &n), 0);   /* half a line: not handed out */
    assert_int_equal(r.eof, 0);
    put(p[1], ": 2}\n\n");
    expect_line(&r, 0, "{\"b\": 2}");
    expect_line(&r, 0, "");                             /* a blank line is a line */
    put(p[1], "last");
    close(p[1]);
    expect_line(&r, 1, "last");                         /* no '\n' at the end: still a line */
    assert_int_equal(lines_next(&r, 1, &line, &n), 0);
    assert_int_equal(r.eof, 1);
    lines_free(&r);
    close(p[0]);
}

static void test_over_long(void **state)
{
    (void)state;
    char path[] = "/tmp/selfspec-test-lines-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    put(fd, "first\n");
    size_t big = (size_t)BATCH_MAX_LINE * 3 + 17;
    char *s = malloc(big + 1);
    memset(s, 'x', big);
    s[big] = '\0';
    put(fd, s);
    put(fd, "\nafter\n");
    free(s);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    lines_reader r;
    lines_init(&r, fd, NULL);
    expect_line(&r, 1, "first");
    const char *line;
    size_t n;
    assert_int_equal(lines_next(&r, 1, &line, &n), 1);   /* one piece of the long line ... */
    assert_true(n > BATCH_MAX_LINE && n < big);
    assert_true(r.cap <= 2 * ((size_t)BATCH_MAX_LINE + 2));
    expect_line(&r, 1, "after");                          /* ... and nothing else of it */
    assert_int_equal(lines_next(&r, 1, &line, &n), 0);
    lines_free(&r);
    close(fd);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipe),
        cmocka_unit_test(test_over_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
