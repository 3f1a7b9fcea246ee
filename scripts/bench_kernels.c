/*
 * bench_kernels.c - the few-token kernel against BLAS, on the shapes of the
 * default model (all 30 layers' projections plus the 49152 x 576 head, random
 * weights), for T = 1..256 tokens. Median of 5 runs of each; both paths run
 * back to back for each T, so their ratio is measured side by side.
 *
 *   make build/bench_kernels && build/bench_kernels [threads]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include <omp.h>

#include "kernels/qmat.h"
#include "util/util.h"

typedef struct {
    int32_t rows, cols, count;
} shape;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        omp_set_num_threads(atoi(argv[1]));
    openblas_set_num_threads(1);
    /* SmolLM2-135M: per layer qkv 960x576, o 576x576, gate|up 3072x576, down 576x1536; head 49152x576 */
    shape shapes[] = {{960, 576, 30}, {576, 576, 30}, {3072, 576, 30}, {576, 1536, 30}, {49152, 576, 1}};
    int ns = sizeof shapes / sizeof shapes[0];
    /* distinct copies, so every product streams its weights from memory as in decoding */
    qmat *W[5];
    for (int i = 0; i < ns; i++) {
        W[i] = mallocCheck((size_t)shapes[i].count * sizeof(qmat));
        for (int c = 0; c < shapes[i].count; c++) {
            int32_t rows = shapes[i].rows, cols = shapes[i].cols;
            uint8_t *q = alignedCheck(qmat_q_bytes(rows, cols));
            float *d = alignedCheck(qmat_dm_bytes(rows, cols)), *m = alignedCheck(qmat_dm_bytes(rows, cols));
            for (size_t k = 0; k < qmat_q_bytes(rows, cols); k++)
                q[k] = (uint8_t)(rand() & 15);
            for (size_t k = 0; k < qmat_dm_bytes(rows, cols) / 4; k++)
                d[k] = 0.01f, m[k] = -0.08f;
            W[i][c] = (qmat){rows, cols, q, d, m};
        }
    }
    float *X = alignedCheck(256 * 1536 * sizeof(float)), *Y = alignedCheck((size_t)256 * 49152 * sizeof(float));
    for (int k = 0; k < 256 * 1536; k++)
        X[k] = (float)((k * 37) % 101) / 50.0f - 1.0f;
    void *scratch = alignedCheck(qmat_scratch_bytes(1536, 256));
    printf("threads %d; all projections of one forward pass (30 layers + head)\n", omp_get_max_threads());
    printf("%4s %12s %12s %8s\n", "T", "kernel ms", "BLAS ms", "BLAS/kernel");
    int Ts[] = {1, 4, 8, 13, 16, 32, 64, 128, 256};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        int T = Ts[ti];
        double tk[5], tb[5];
        for (int r = 0; r < 5; r++) {
            double t0 = util_now();
            for (int i = 0; i < ns; i++)
                for (int c = 0; c < shapes[i].count; c++)
                    qmat_matmul(&W[i][c], X, W[i][c].cols, T, Y, W[i][c].rows, scratch);
            double t1 = util_now();
            for (int i = 0; i < ns; i++)
                for (int c = 0; c < shapes[i].count; c++)
                    qmat_matmul_blas(&W[i][c], X, W[i][c].cols, T, Y, W[i][c].rows);
            tb[r] = util_now() - t1;
            tk[r] = t1 - t0;
        }
        qsort(tk, 5, sizeof tk[0], cmp_d);
        qsort(tb, 5, sizeof tb[0], cmp_d);
        printf("%4d %12.2f %12.2f %8.2f\n", T, tk[2] * 1e3, tb[2] * 1e3, tb[2] / tk[2]);
    }
    return 0;
}
