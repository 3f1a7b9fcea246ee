/*
 * util.c - checked allocation, clock and error helpers (see util.h).
 */
#include "util/util.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void util_oom(size_t size, const char *file, int line)
{
    fprintf(stderr, "selfspec: out of memory allocating %zu bytes at %s:%d\n", size, file, line);
    exit(1);
}

void *util_malloc_check(size_t size, const char *file, int line)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        util_oom(size, file, line);
    return p;
}

void *util_calloc_check(size_t n, size_t size, const char *file, int line)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        util_oom(n * size, file, line);
    return p;
}

void *util_realloc_check(void *p, size_t size, const char *file, int line)
{
    void *q = realloc(p, size ? size : 1);
    if (!q)
        util_oom(size, file, line);
    return q;
}

void *util_aligned_check(size_t size, const char *file, int line)
{
    void *p = NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        util_oom(size, file, line);
    return p;
}

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int util_verr(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    return -1;
}

int util_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    util_verr(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

char *util_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        util_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = mallocCheck(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = reallocCheck(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        util_err(err, errlen, "read error on '%s'", path);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

int util_exe_dir(char *buf, size_t n)
{
    char exe[4096];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = k > 0 ? (exe[k] = '\0', strrchr(exe, '/')) : NULL;
    if (!slash || (size_t)(slash - exe) + 1 > n) {
        snprintf(buf, n, ".");
        return -1;
    }
    *slash = '\0';
    snprintf(buf, n, "%s", exe);
    return 0;
}
