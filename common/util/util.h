/*
 * util.h - small helpers shared by every module: checked allocation macros
 * that carry __FILE__/__LINE__ (in the spirit of llm.c's mallocCheck), a
 * monotonic clock, and bounded error-string formatting. Out of memory has
 * one style everywhere: the *Check allocators print "out of memory
 * allocating N bytes at FILE:LINE" and exit(1).
 *
 * Convention used across selfspec: functions that can fail take
 * (char *err, size_t errlen), return 0 on success and -1 on failure after
 * writing a one-line reason into err.
 */
#ifndef SELFSPEC_UTIL_H
#define SELFSPEC_UTIL_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>

void *util_malloc_check(size_t size, const char *file, int line);
void *util_calloc_check(size_t n, size_t size, const char *file, int line);
/* realloc(p, size) (size 0 counts as 1, so the result is never NULL and p is
 * never freed by it); out of memory: the same message and exit as the others. */
void *util_realloc_check(void *p, size_t size, const char *file, int line);
/* 64-byte aligned allocation; free with free(). */
void *util_aligned_check(size_t size, const char *file, int line);

#define mallocCheck(size) util_malloc_check((size), __FILE__, __LINE__)
#define callocCheck(n, size) util_calloc_check((n), (size), __FILE__, __LINE__)
#define reallocCheck(p, size) util_realloc_check((p), (size), __FILE__, __LINE__)
#define alignedCheck(size) util_aligned_check((size), __FILE__, __LINE__)

/* Seconds from a monotonic clock. */
double util_now(void);

/* The one error formatter of the engine: format a one-line message into
 * err[0..errlen) (truncated to fit, always NUL-terminated; nothing written
 * when err is NULL or errlen is 0) and return -1, for `return util_err(...)`. */
int util_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* util_err with a va_list, for wrappers that take their own arguments (the
 * GGUF cursor's error reporter); ap is consumed. Returns -1. */
int util_verr(char *err, size_t errlen, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* The folder holding the running executable (from /proc/self/exe) into buf;
 * returns 0, or -1 (buf set to ".") when it cannot be read or does not fit. */
int util_exe_dir(char *buf, size_t n);

/* Read a whole file into a malloc'd NUL-terminated buffer. */
char *util_read_file(const char *path, size_t *len, char *err, size_t errlen);

#endif
