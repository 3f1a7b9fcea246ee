/*
 * cuda_device.c - parsing of --device values, shared by the CUDA backend and
 * its stub (plain C, compiled in every build). See cuda_backend.h.
 */
#include <stdlib.h>
#include <string.h>

#include "model/cuda_backend.h"

int cuda_parse_device(const char *s, int *device)
{
    if (!s)
        return -1;
    if (!strcmp(s, "cpu")) {
        *device = -1;
        return 0;
    }
    if (!strcmp(s, "cuda")) {
        *device = 0;
        return 0;
    }
    if (!strncmp(s, "cuda:", 5) && s[5]) {
        char *end;
        long v = strtol(s + 5, &end, 10);
        if (*end || v < 0 || v > 1024)
            return -1;
        *device = (int)v;
        return 0;
    }
    return -1;
}
