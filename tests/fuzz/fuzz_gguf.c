/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader.
 *
 * Parses the input with gguf_open_memory and, when it is accepted, walks every
 * key/value pair and tensor (gguf_walk.h), dequantizing each tensor's first
 * block. Build: make fuzz (or by hand with clang -fsanitize=fuzzer,address,
 * undefined tests/fuzz/fuzz_gguf.c common/util/util.c common/format/gguf.c
 * -Icommon -lm).
 * Run: build/fuzz/fuzz_gguf -max_total_time=300 tests/fuzz/corpus-work \
 *          tests/fuzz/corpus build/fuzz-seeds   (the seeds: make unit)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/gguf.h"
#include "gguf_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    gguf_file *f = NULL;
    volatile uint64_t sink;
    if (gguf_open_memory(data, size, &f, err, sizeof err) != 0) {
        if (f != NULL || err[0] == '\0')
            abort();              /* failures must clean up and explain */
        return 0;
    }
    sink = gguf_walk(f);
    (void)sink;
    gguf_close(f);
    return 0;
}
