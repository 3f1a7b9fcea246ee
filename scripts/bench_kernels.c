/*
 * bench_kernels.c - the integer kernel (qmat_matmul) on the shapes of the
 * default model (all 30 layers' projections plus the 49152 x 576 head,
 * random weights, distinct copies so every product streams its weights from
 * memory as in decoding), for T = 1..256 tokens, in three weight forms:
 *   u8   8-bit levels spanning 0..255 (a Q8_0 / re-quantized matrix, such
 *        as SmolLM2's tied Q8_0 head), tier QMAT_TIER_8BIT;
 *   u8n  levels <= 15 kept one per byte (tier QMAT_TIER_NIBBLE);
 *   u4   the same levels packed two per byte (QMAT_U4: a Q4_0 / Q4_1 matrix).
 * Per T and form: the median over reps of one pass over every projection,
 * in ms, G multiply-adds/s, and GB/s of weight bytes (q + d + m) streamed;
 * then each form's T=8 / T=1 time ratio. The forms run interleaved, rep by
 * rep, so their ratios are measured side by side. --blas adds the
 * dequantize + sgemm path (u8 weights).
 *
 * --amx runs every form twice, interleaved rep by rep: the build's kernel
 * (qmat_set_amx(0)) and the AMX kernel for every T (qmat_set_amx(1)), and
 * prints the AMX column and the time ratio build / AMX per form (the CPU
 * must have AMX).
 *
 * Built with -DBENCH_OLD_QMAT against an older qmat.c (one without the fmt
 * and tier fields) it measures that kernel on u8 and u8n only: the way to
 * compare two kernels in one session, e.g.
 *   make build/bench_kernels && build/bench_kernels 2
 *   build/bench_kernels 2 5 1,2,4,8,16,32,64
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cblas.h>
#include <omp.h>

#include "kernels/qmat.h"
#include "util/util.h"

typedef struct {
    int32_t rows, cols, count;
} shape;

enum { F_U8, F_U8N, F_U4, N_FORMS };
static const char *form_name[N_FORMS] = {"u8", "u8n", "u4"};

#define BLAS_PANEL 128   /* rows dequantized per sgemm call (multiple of 16) */

/* --blas: dequantized float panels of W times X with BLAS sgemm (Y = X .
 * W^T). Not bit-exact across T (sgemm's summation order depends on the
 * shape), so on no forward path: it lives here, the one program linking
 * OpenBLAS, as the baseline the integer kernel is timed against. */
static void blas_matmul(const qmat *W, const float *X, int ldx, int T, float *Y, int ldy)
{
    int32_t n_panels = (W->rows + BLAS_PANEL - 1) / BLAS_PANEL;
    #pragma omp parallel if (!omp_in_parallel())
    {
        float *panel = alignedCheck((size_t)BLAS_PANEL * W->cols * sizeof(float));
        #pragma omp for schedule(dynamic, 1)
        for (int32_t p = 0; p < n_panels; p++) {
            int32_t r0 = p * BLAS_PANEL;
            int32_t np = W->rows - r0 < BLAS_PANEL ? W->rows - r0 : BLAS_PANEL;
            for (int32_t i = 0; i < np; i++)
                qmat_dequant_row(W, r0 + i, panel + (size_t)i * W->cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, np, W->cols, 1.0f,
                        X, ldx, panel, W->cols, 0.0f, Y + r0, ldy);
        }
        free(panel);
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* SmolLM2-135M: per layer qkv 960x576, o 576x576, gate|up 3072x576, down 576x1536; head 49152x576 */
static const shape shapes[] = {{960, 576, 30}, {576, 576, 30}, {3072, 576, 30}, {576, 1536, 30}, {49152, 576, 1}};
#define NS ((int)(sizeof shapes / sizeof shapes[0]))

static uint64_t rng = 88172645463325252ull;
static uint32_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Every copy of every shape in form f; *bytes: weight bytes of one pass. */
static qmat *make_form(int f, size_t *bytes)
{
    qmat *W = mallocCheck(sizeof(qmat) * 121);
    size_t k = 0;
    *bytes = 0;
    for (int i = 0; i < NS; i++)
        for (int c = 0; c < shapes[i].count; c++, k++) {
            int32_t rows = shapes[i].rows, cols = shapes[i].cols, nb = cols / QMAT_BLOCK;
            memset(&W[k], 0, sizeof W[k]);
            W[k].rows = rows;
            W[k].cols = cols;
#ifdef BENCH_OLD_QMAT
            size_t qb = qmat_q_bytes(rows, cols);
#else
            W[k].fmt = f == F_U4 ? QMAT_U4 : QMAT_U8;
            W[k].tier = f == F_U8 ? QMAT_TIER_8BIT : QMAT_TIER_NIBBLE;
            size_t qb = qmat_q_bytes_fmt(rows, cols, W[k].fmt);
#endif
            W[k].q = alignedCheck(qb);
            W[k].d = alignedCheck(qmat_dm_bytes(rows, cols));
            W[k].m = alignedCheck(qmat_dm_bytes(rows, cols));
            *bytes += qb + 2 * qmat_dm_bytes(rows, cols);
            uint8_t *lv = mallocCheck((size_t)cols);
            float *d = mallocCheck((size_t)nb * sizeof(float)), *m = mallocCheck((size_t)nb * sizeof(float));
            for (int32_t r = 0; r < rows; r++) {
                for (int32_t j = 0; j < cols; j++)
                    lv[j] = (uint8_t)(next_rand() & (f == F_U8 ? 255 : 15));
                for (int32_t b = 0; b < nb; b++)
                    d[b] = f == F_U8 ? 0.0006f : 0.01f, m[b] = -0.08f;
                qmat_set_row(&W[k], r, lv, d, m);
            }
            free(lv);
            free(d);
            free(m);
        }
    return W;
}

static int use_cpu_time;

static double bench_now(void)
{
    if (!use_cpu_time)
        return util_now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* amx: -1 leaves the setting alone, 0 the build's kernel, 1 AMX for every T */
static double run_pass(const qmat *W, const float *X, int T, float *Y, void *scratch, int amx)
{
#ifndef BENCH_OLD_QMAT
    if (amx >= 0)
        qmat_set_amx(amx);
#endif
    double t0 = bench_now();
    for (int k = 0; k < 121; k++)
        qmat_matmul(&W[k], X, W[k].cols, T, Y, W[k].rows, scratch);
    return bench_now() - t0;
}

int main(int argc, char **argv)
{
    int use_blas = 0, use_amx = 0, pos = 0, threads = 0, reps = 5;
    int Ts[64] = {1, 2, 3, 4, 5, 8, 13, 16, 32, 64, 128, 256}, nT = 12;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--blas") == 0) {
            use_blas = 1;
        } else if (strcmp(argv[i], "--amx") == 0) {
            use_amx = 1;
        } else if (strcmp(argv[i], "--cpu") == 0) {
            use_cpu_time = 1;
        } else if (pos == 0) {
            threads = atoi(argv[i]), pos++;
        } else if (pos == 1) {
            reps = atoi(argv[i]), pos++;
        } else if (pos == 2) {
            nT = 0;
            for (char *s = argv[i]; *s && nT < 64;) {
                Ts[nT++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
            }
            pos++;
        }
    }
    if (threads > 0)
        omp_set_num_threads(threads);
    if (reps < 1 || reps > 99)
        reps = 5;
    int maxT = 1;
    for (int i = 0; i < nT; i++) {
        if (Ts[i] < 1 || Ts[i] > 256) {
            fprintf(stderr, "T must be in 1..256\n");
            return 2;
        }
        maxT = Ts[i] > maxT ? Ts[i] : maxT;
    }
    openblas_set_num_threads(1);
#ifdef BENCH_OLD_QMAT
    int nforms = 2;
    const char *kernel = "old";
#else
    int nforms = N_FORMS;
    const char *kernel = "new";
    if (use_amx && !qmat_amx_available()) {
        fprintf(stderr, "--amx: this CPU (or OS) has no AMX\n");
        return 2;
    }
#endif
    qmat *W[N_FORMS];
    size_t bytes[N_FORMS];
    for (int f = 0; f < nforms; f++)
        W[f] = make_form(f, &bytes[f]);
    double macs = 0;
    for (int i = 0; i < NS; i++)
        macs += (double)shapes[i].rows * shapes[i].cols * shapes[i].count;
    float *X = alignedCheck((size_t)maxT * 1536 * sizeof(float));
    float *Y = alignedCheck((size_t)maxT * 49152 * sizeof(float));
    for (int k = 0; k < maxT * 1536; k++)
        X[k] = (float)((k * 37) % 101) / 50.0f - 1.0f;
    void *scratch = alignedCheck(qmat_scratch_bytes(1536, maxT));
    printf("kernel %s, threads %d, %s time, median of %d; one pass = all projections of a forward pass (30 layers + head), %.1f M MAC/token\n",
           kernel, omp_get_max_threads(), use_cpu_time ? "CPU" : "wall", reps, macs / 1e6);
    for (int f = 0; f < nforms; f++)
        printf("  %-4s weights %.1f MB per pass\n", form_name[f], bytes[f] / 1e6);
    printf("%4s", "T");
    for (int f = 0; f < nforms; f++) {
        printf("  %7s %6s %6s", form_name[f], "GMAC/s", "GB/s");
        if (use_amx)
            printf("  %7s %6s %5s", "amx ms", "GMAC/s", "x");
    }
    if (use_blas)
        printf("  %9s", "BLAS ms");
    printf("\n");
    double ms1[N_FORMS] = {0}, ms8[N_FORMS] = {0};
    for (int ti = 0; ti < nT; ti++) {
        int T = Ts[ti];
        double tk[N_FORMS][99], ta[N_FORMS][99], tb[99];
        for (int f = 0; f < nforms; f++) {   /* warm-up */
            run_pass(W[f], X, T, Y, scratch, use_amx ? 0 : -1);
            if (use_amx)
                run_pass(W[f], X, T, Y, scratch, 1);
        }
        for (int r = 0; r < reps; r++) {
            for (int f = 0; f < nforms; f++) {
                tk[f][r] = run_pass(W[f], X, T, Y, scratch, use_amx ? 0 : -1);
                if (use_amx)
                    ta[f][r] = run_pass(W[f], X, T, Y, scratch, 1);
            }
            if (use_blas) {
                double t1 = bench_now();
                for (int k = 0; k < 121; k++)
                    blas_matmul(&W[F_U8][k], X, W[F_U8][k].cols, T, Y, W[F_U8][k].rows);
                tb[r] = bench_now() - t1;
            }
        }
        printf("%4d", T);
        for (int f = 0; f < nforms; f++) {
            qsort(tk[f], (size_t)reps, sizeof tk[f][0], cmp_d);
            double t = tk[f][reps / 2];
            printf("  %7.2f %6.1f %6.1f", t * 1e3, macs * T / t / 1e9, bytes[f] / t / 1e9);
            if (use_amx) {
                qsort(ta[f], (size_t)reps, sizeof ta[f][0], cmp_d);
                double a = ta[f][reps / 2];
                printf("  %7.2f %6.1f %5.2f", a * 1e3, macs * T / a / 1e9, t / a);
            }
            if (T == 1)
                ms1[f] = t;
            if (T == 8)
                ms8[f] = t;
        }
        if (use_blas) {
            qsort(tb, (size_t)reps, sizeof tb[0], cmp_d);
            printf("  %9.2f", tb[reps / 2] * 1e3);
        }
        printf("\n");
        fflush(stdout);
    }
    if (ms1[0] > 0 && ms8[0] > 0) {
        printf("T=8 / T=1:");
        for (int f = 0; f < nforms; f++)
            printf("  %s %.2f", form_name[f], ms8[f] / ms1[f]);
        printf("\n");
    }
    return 0;
}
