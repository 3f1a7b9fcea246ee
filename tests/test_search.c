/*
 * test_search.c - skip-set transfer across model depths (normalized depth).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tune/search.h"
#include "decode/skipset.h"

/* A set on 30 layers maps to 60 and 15 layers by l / (L - 1); first and
 * last layers map to first and last. */
static void test_transfer_depths(void **state)
{
    (void)state;
    skip_set src, up, down, same;
    skipset_init(&src, 30);
    src.attn_skip[0] = 1;       /* depth 0 */
    src.attn_skip[29] = 1;      /* depth 1 */
    src.mlp_skip[10] = 1;       /* depth 10/29 */
    skipset_transfer(&src, 60, &up);
    assert_int_equal(up.n_layers, 60);
    assert_true(up.attn_skip[0] && up.attn_skip[59]);
    assert_true(up.mlp_skip[20]);           /* round(10/29 * 59) = 20 */
    assert_int_equal(skipset_count(&up), 3);
    skipset_transfer(&src, 15, &down);
    assert_true(down.attn_skip[0] && down.attn_skip[14]);
    assert_true(down.mlp_skip[5]);          /* round(10/29 * 14) = 5 */
    skipset_transfer(&src, 30, &same);      /* identity at equal depth */
    for (int l = 0; l < 30; l++) {
        assert_int_equal(same.attn_skip[l], src.attn_skip[l]);
        assert_int_equal(same.mlp_skip[l], src.mlp_skip[l]);
    }
    skipset_free(&src);
    skipset_free(&up);
    skipset_free(&down);
    skipset_free(&same);
}

/* Collapsing depth merges neighbours: never more skips than the target has. */
static void test_transfer_collapse(void **state)
{
    (void)state;
    skip_set src, dst;
    skipset_init(&src, 40);
    for (int l = 0; l < 40; l++)
        src.attn_skip[l] = src.mlp_skip[l] = 1;
    skipset_transfer(&src, 4, &dst);
    assert_int_equal(skipset_count(&dst), 8);
    skipset_free(&src);
    skipset_free(&dst);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transfer_depths),
        cmocka_unit_test(test_transfer_collapse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
