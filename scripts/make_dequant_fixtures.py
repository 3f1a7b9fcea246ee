#!/usr/bin/env python3
"""Generate tests/fixtures/dequant.json: raw tensor bytes + reference floats.

For each supported tensor type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)
this writes a few blocks of deterministic pseudo-random raw bytes and their
dequantization by gguf-py (`gguf.quants.dequantize`), an implementation
independent of common/gguf.c. The f16 scale fields of quantized blocks are
set to finite values (mostly small positive, some negative, one subnormal)
so that no inf/nan appears. tests/test_gguf.c compares gguf_dequantize
against these values.

Usage: python3 scripts/make_dequant_fixtures.py [out.json]
(gguf-py: pip install gguf, or the copy in the llama-cpp-python sdist that
scripts/build_llama_cpp.sh unpacks: PYTHONPATH=.deps/llama.cpp/src/vendor/llama.cpp/gguf-py)
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

SEED = 20240611
OUT = "tests/fixtures/dequant.json"

# type -> (block elems, block bytes, byte offsets of f16 scale fields)
GEOMETRY = {
    QT.Q8_0: (32, 34, [0]),
    QT.Q4_0: (32, 18, [0]),
    QT.Q4_1: (32, 20, [0, 2]),
    QT.Q4_K: (256, 144, [0, 2]),
    QT.Q6_K: (256, 210, [208]),
    QT.Q5_0: (32, 22, [0]),
    QT.Q5_1: (32, 24, [0, 2]),
    QT.Q2_K: (256, 84, [80, 82]),
    QT.Q3_K: (256, 110, [108]),
    QT.Q5_K: (256, 176, [0, 2]),
    QT.IQ4_NL: (32, 18, [0]),
    QT.IQ4_XS: (256, 136, [0]),
}


def sane_scales(rng, n):
    """n finite f16 values: mostly small positive, some negative, a subnormal."""
    v = rng.uniform(1e-3, 5e-2, size=n).astype(np.float16)
    v[rng.random(n) < 0.2] *= -1
    if n > 2:
        v[1] = np.float16(3e-6)  # subnormal f16
    return v


def quant_case(rng, qt, n_blocks):
    be, bb, scale_offs = GEOMETRY[qt]
    raw = rng.integers(0, 256, size=(n_blocks, bb), dtype=np.uint8)
    for off in scale_offs:
        raw[:, off:off + 2] = sane_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1), n_blocks * be


def plain_case(rng, qt, n):
    vals = rng.uniform(-4.0, 4.0, size=n).astype(np.float32)
    vals[:4] = [0.0, -0.0, 1.0, -2.5]
    if qt == QT.F32:
        vals[4] = np.float32(1e-40)  # subnormal f32
        return vals.view(np.uint8), n
    if qt == QT.F16:
        h = vals.astype(np.float16)
        h[4:8] = [np.float16(6e-8), np.float16(-3e-5), np.float16(65504), np.float16(-65504)]
        return h.view(np.uint8), n
    # BF16: take the top half of random f32 bit patterns of finite values
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)
    bits[4] = 0x0001  # subnormal bf16
    return bits.view(np.uint8), n


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else OUT
    rng = np.random.default_rng(SEED)
    cases = []
    plan = [(QT.F32, 64), (QT.F16, 64), (QT.BF16, 64), (QT.Q8_0, 4), (QT.Q4_0, 4),
            (QT.Q4_1, 4), (QT.Q4_K, 3), (QT.Q6_K, 3), (QT.Q5_0, 4), (QT.Q5_1, 4),
            (QT.Q2_K, 3), (QT.Q3_K, 3), (QT.Q5_K, 3), (QT.IQ4_NL, 4), (QT.IQ4_XS, 3)]
    for qt, count in plan:
        if qt in GEOMETRY:
            raw, n = quant_case(rng, qt, count)
        else:
            raw, n = plain_case(rng, qt, count)
        ref = np.asarray(dequantize(raw, qt), dtype=np.float32).reshape(-1)
        assert ref.size == n and np.all(np.isfinite(ref)), qt.name
        cases.append({
            "type": qt.name,
            "type_id": int(qt),
            "n": int(n),
            "raw_hex": raw.tobytes().hex(),
            # repr of the float64 value of each float32: parses back exactly
            "expected": [float(x) for x in ref],
        })
    with open(out, "w") as f:
        json.dump({"generator": "scripts/make_dequant_fixtures.py", "seed": SEED,
                   "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
