/*
 * fuzz_schema.c - libFuzzer target for the JSON Schema compiler and its
 * matcher (common/decode/jschema.h): any input either compiles or is
 * refused with a message, and a compiled schema's matcher never reaches a
 * dead end, never disagrees with its forced text, never crashes or hangs
 * (tests/fuzz/schema_walk.h).
 * Build: make fuzz. Run: build/fuzz/fuzz_schema -max_total_time=60
 *        -dict=tests/fuzz/schema.dict tests/fuzz/schema_seeds
 *        (add a scratch corpus folder first to keep what it finds out of the seeds)
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz/schema_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    schema_walk_one(data, size);
    return 0;
}
