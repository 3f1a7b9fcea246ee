/*
 * test_util.c - common/util: reallocCheck keeps the contents, never returns
 * NULL (size 0 included), and out of memory is the one message and exit of
 * every *Check allocator (a child process asks for more than exists).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/util.h"

/* Under AddressSanitizer an impossible allocation must return NULL (as
 * without it), not abort: the *Check allocators' own message is tested.
 * The child's leak check runs before, so exit(1) is its status (LSan
 * would turn an exit with a leak into its own status). */
void __lsan_do_leak_check(void) __attribute__((weak));
const char *__asan_default_options(void);
__attribute__((used)) const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

static void test_realloc_check(void **state)
{
    (void)state;
    char *p = reallocCheck(NULL, 4);
    memcpy(p, "abc", 4);
    for (size_t n = 8; n <= (1u << 20); n *= 4) {
        p = reallocCheck(p, n);
        assert_string_equal(p, "abc");
    }
    p = reallocCheck(p, 2);
    assert_memory_equal(p, "ab", 2);
    p = reallocCheck(p, 0);   /* not a free: still a pointer to free */
    assert_non_null(p);
    free(p);
}

/* In a child: allocations no machine has. The child must exit 1 with the
 * one out-of-memory line naming this file (ASan would report instead of
 * returning NULL: __asan_default_options above). */
static void test_out_of_memory_style(void **state)
{
    (void)state;
    for (int which = 0; which < 2; which++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        if (pid == 0) {
            if (__lsan_do_leak_check)
                __lsan_do_leak_check();
            dup2(fds[1], 2);
            close(fds[0]);
            void *p = malloc(16);
            size_t huge = (size_t)1 << 62;
            if (which == 0)
                p = reallocCheck(p, huge);
            else
                p = mallocCheck(huge);
            _exit(p ? 0 : 2);
        }
        close(fds[1]);
        char buf[512] = "";
        ssize_t k, got = 0;
        while ((k = read(fds[0], buf + got, sizeof buf - 1 - (size_t)got)) > 0)
            got += k;
        close(fds[0]);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 1);
        assert_non_null(strstr(buf, "selfspec: out of memory allocating 4611686018427387904 bytes at "));
        assert_non_null(strstr(buf, "test_util.c:"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_realloc_check),
        cmocka_unit_test(test_out_of_memory_style),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
