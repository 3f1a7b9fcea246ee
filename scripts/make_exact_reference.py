#!/usr/bin/env python3
"""make_exact_reference.py - an exact-arithmetic second reference for a
llama.cpp logit fixture (tests/fixtures/*logits.json), for the positions
where llama.cpp's own numerics move its logits far from the model's.

Why: on Qwen2.5 the first tokens of a prompt carry "massive activations"
(residual-stream entries near 3,600 against ~10 elsewhere). llama.cpp
multiplies K-quant weights with activations quantized to Q8_K (int8, one
scale per 256 values); with one huge entry in a block the rest of that
block rounds to zero, and its logits at those positions move by up to 12
from what the model computes in exact arithmetic. selfspec quantizes per 32
values, so it lands elsewhere. A test cannot then tell a selfspec bug from
llama.cpp's rounding at those positions.

What this writes, per prompt of the fixture (in place, or to --out):
  exact_top5[pos]   the exact-arithmetic logits of llama.cpp's top-5 ids;
  exact_top1[pos]   [id, margin] of the exact logits' argmax;
and in the header:
  exact_reference   how it was computed, and q8k_max_abs_diff: the largest
                    |logit| difference, over every position and llama.cpp's
                    top-5 ids, between llama.cpp and the same numpy forward
                    with activations quantized as llama.cpp's Q8_K. That
                    number validates the numpy model against llama.cpp: it is
                    llama.cpp's forward pass, up to that rounding.

The forward pass is written from the GGUF tensors alone, with weights
dequantized by gguf-py (llama.cpp's own Python package, PyPI `gguf`): RMSNorm,
Q/K/V (+ biases for qwen2), RoPE (NeoX pairs for qwen2, adjacent for llama),
causal GQA attention, SwiGLU, float64 for the exact pass. Architectures:
llama, qwen2, qwen3 (per-head Q/K RMS norms, no biases), gemma3
(embeddings times sqrt(dim), per-head Q/K RMS norms,
post-attention and post-MLP norms, GeGLU with tanh GELU, local layers with a
512-token sliding window and their own RoPE base, head size from
attention.key_length). The emulated pass quantizes each product's input as
llama.cpp does for that weight's type: Q8_K (per 256) for K-quants, Q8_0
(per 32) for the 32-wide types.

Usage:
    python3 scripts/make_exact_reference.py -m models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf \\
        -f tests/fixtures/qwen_logits.json
"""
import argparse
import json
import sys

import numpy as np


def q8_0(h):
    """Activations as llama.cpp's quantize_row_q8_0 leaves them: per 32
    values d = max|x| / 127, q = round(x / d)."""
    b = h.reshape(h.shape[0], -1, 32)
    d = np.abs(b).max(axis=2, keepdims=True) / 127.0
    q = np.round(np.where(d > 0, b / np.where(d > 0, d, 1), 0))
    return (q * d).reshape(h.shape)


def q8k(h):
    """Activations as llama.cpp's quantize_row_q8_K leaves them: per 256
    values, the scale from the entry of largest magnitude (sign included),
    q = round(x * -127 / max) clamped to 127, value q / (-127 / max)."""
    b = h.reshape(h.shape[0], -1, 256)
    idx = np.abs(b).argmax(axis=2)[..., None]
    mx = np.take_along_axis(b, idx, axis=2)
    out = np.zeros_like(b)
    nz = mx != 0
    iscale = np.where(nz, -127.0 / np.where(nz, mx, 1), 0)
    q = np.minimum(np.round(b * iscale), 127)
    out = np.where(nz, q / np.where(nz, iscale, 1), 0)
    return out.reshape(h.shape)


class Model:
    def __init__(self, path):
        from gguf import GGUFReader
        self.r = GGUFReader(path)
        self.t = {t.name: t for t in self.r.tensors}
        f = self.r.fields
        self.arch = bytes(f["general.architecture"].parts[-1]).decode()
        if self.arch not in ("llama", "qwen2", "qwen3", "gemma3", "phi3"):
            raise SystemExit("unsupported architecture " + self.arch)

        def u(k, d=None):
            key = self.arch + "." + k
            return int(f[key].parts[-1][0]) if key in f else d

        def fl(k, d):
            key = self.arch + "." + k
            return float(f[key].parts[-1][0]) if key in f else d
        self.n_layers = u("block_count")
        self.n_heads = u("attention.head_count")
        self.n_kv = u("attention.head_count_kv", self.n_heads)
        self.dim = u("embedding_length")
        self.hd = u("attention.key_length", self.dim // self.n_heads)
        self.base = fl("rope.freq_base", 10000.0)
        self.eps = fl("attention.layer_norm_rms_epsilon", 1e-5)
        self.neox = self.arch in ("qwen2", "qwen3", "gemma3", "phi3")
        scaling = f.get(self.arch + ".rope.scaling.type")
        self.rope_scale = 1.0
        if scaling is not None and bytes(scaling.parts[-1]).decode() == "linear":
            self.rope_scale = 1.0 / fl("rope.scaling.factor", 1.0)
        self.rope_freqs = (self.w("rope_freqs.weight", np.float64) if "rope_freqs.weight" in self.t
                           else np.ones(self.hd // 2))
        self.gemma = self.arch == "gemma3"
        self.qk_norm = self.arch in ("qwen3", "gemma3")
        self.window = u("attention.sliding_window", 0) if self.gemma else 0
        self.base_swa = fl("rope.freq_base_swa", 10000.0)

    def local(self, l):
        """Gemma 3: of every 6 layers the first 5 are local (sliding window)."""
        return self.window > 0 and l % 6 < 5

    def quant_for(self, quant, name):
        """The activation rounding llama.cpp applies before weight `name`
        (the emulated pass; quant is q8k there, the identity when exact)."""
        if quant is q8k and self.t[name].tensor_type.name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
            return q8_0
        return quant

    def w(self, name, dtype):
        from gguf.quants import dequantize
        t = self.t[name]
        return dequantize(t.data, t.tensor_type).astype(dtype)

    def has(self, name):
        return name in self.t

    def rope(self, x, pos, base=None):
        # x (T, heads, hd)
        half = self.hd // 2
        freq = self.rope_scale * (base or self.base) ** (-2.0 * np.arange(half) / self.hd) / self.rope_freqs
        ang = pos[:, None] * freq[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.neox:
            a, b = x[..., :half], x[..., half:]
            return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
        return out

    def forward(self, runs):
        """Logits (T, vocab) of several prompts at once, layer by layer (each
        weight dequantized once for all). runs: list of (ids, quant, dtype);
        quant(h) is applied to the input of every matrix product (the
        identity for the exact pass)."""
        emb = self.w("token_embd.weight", np.float32)
        xs = [emb[np.array(ids)].astype(dt) for ids, _, dt in runs]
        if self.gemma:
            xs = [x * dt(np.sqrt(np.float32(self.dim))) for x, (_, _, dt) in zip(xs, runs)]
        del emb
        grp = self.n_heads // self.n_kv

        def rms(x, w):
            return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + self.eps) * w.astype(x.dtype)

        def gelu(a):
            return 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))

        for l in range(self.n_layers):
            fused = self.has("blk.%d.attn_qkv.weight" % l)
            names = ["attn_norm.weight", "ffn_norm.weight", "attn_output.weight", "ffn_up.weight",
                     "ffn_down.weight"]
            names += ["attn_qkv.weight"] if fused else ["attn_q.weight", "attn_k.weight", "attn_v.weight",
                                                        "ffn_gate.weight"]
            if self.qk_norm:
                names += ["attn_q_norm.weight", "attn_k_norm.weight"]
            if self.gemma:
                names += ["post_attention_norm.weight", "post_ffw_norm.weight"]
            W = {n: self.w("blk.%d.%s" % (l, n), np.float64) for n in names}
            if fused:   # Phi-3: Q, K, V rows stacked; gate rows, then up rows
                qd, kd = self.n_heads * self.hd, self.n_kv * self.hd
                qkv = W.pop("attn_qkv.weight")
                W["attn_q.weight"], W["attn_k.weight"], W["attn_v.weight"] = qkv[:qd], qkv[qd:qd + kd], qkv[qd + kd:]
                gu = W.pop("ffn_up.weight")
                W["ffn_gate.weight"], W["ffn_up.weight"] = gu[:len(gu) // 2], gu[len(gu) // 2:]
            Q = lambda quant, n: self.quant_for(quant, "blk.%d.%s" % (l, n))  # noqa: E731
            bias = self.has("blk.%d.attn_q.bias" % l)
            if bias:
                for n in ("attn_q.bias", "attn_k.bias", "attn_v.bias"):
                    W[n] = self.w("blk.%d.%s" % (l, n), np.float64)
            for r, (ids, quant, dt) in enumerate(runs):
                x, T = xs[r], len(ids)
                g = {n: w.astype(dt) for n, w in W.items()} if dt != np.float64 else W
                pos = np.arange(T, dtype=np.float64)
                mask = np.triu(np.full((T, T), -np.inf), 1)
                if self.local(l):   # keys p - window < k <= p
                    mask = mask + np.tril(np.full((T, T), -np.inf), -self.window)
                h = rms(x, g["attn_norm.weight"])
                q = Q(quant, "attn_q.weight")(h) @ g["attn_q.weight"].T
                k = Q(quant, "attn_k.weight")(h) @ g["attn_k.weight"].T
                v = Q(quant, "attn_v.weight")(h) @ g["attn_v.weight"].T
                if bias:
                    q, k, v = q + g["attn_q.bias"], k + g["attn_k.bias"], v + g["attn_v.bias"]
                q, k = q.reshape(T, self.n_heads, self.hd), k.reshape(T, self.n_kv, self.hd)
                if self.qk_norm:
                    def hrms(z, w):
                        return z / np.sqrt((z * z).mean(axis=2, keepdims=True) + self.eps) * w.astype(z.dtype)
                    q, k = hrms(q, g["attn_q_norm.weight"]), hrms(k, g["attn_k_norm.weight"])
                base = self.base_swa if self.local(l) else self.base
                q = self.rope(q, pos, base).astype(dt)
                k = self.rope(k, pos, base).astype(dt)
                v = v.reshape(T, self.n_kv, self.hd)
                att = np.empty((T, self.n_heads, self.hd), dt)
                for hh in range(self.n_heads):
                    kh, vh = k[:, hh // grp], v[:, hh // grp]
                    sc = q[:, hh] @ kh.T / np.sqrt(self.hd) + mask
                    sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                    att[:, hh] = (sc / sc.sum(axis=1, keepdims=True)) @ vh
                o = Q(quant, "attn_output.weight")(att.reshape(T, -1)) @ g["attn_output.weight"].T
                x = x + (rms(o, g["post_attention_norm.weight"]) if self.gemma else o)
                h = rms(x, g["ffn_norm.weight"])
                a = Q(quant, "ffn_gate.weight")(h) @ g["ffn_gate.weight"].T
                u = Q(quant, "ffn_up.weight")(h) @ g["ffn_up.weight"].T
                act = gelu(a) if self.gemma else a / (1 + np.exp(-a))
                o = Q(quant, "ffn_down.weight")(act * u) @ g["ffn_down.weight"].T
                xs[r] = x + (rms(o, g["post_ffw_norm.weight"]) if self.gemma else o)
            print("  layer %d/%d" % (l + 1, self.n_layers), file=sys.stderr, end="\r")
        head = "output.weight" if self.has("output.weight") else "token_embd.weight"
        hw = self.w(head, np.float32)
        nw = self.w("output_norm.weight", np.float64)
        out = [self.quant_for(quant, head)(rms(x, nw)).astype(np.float64) @ hw.T.astype(np.float64)
               if dt == np.float64 else self.quant_for(quant, head)(rms(x, nw)) @ hw.T
               for x, (_, quant, dt) in zip(xs, runs)]
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-f", "--fixture", required=True, help="logit fixture to extend (in place)")
    ap.add_argument("-o", "--out", help="write here instead of in place")
    args = ap.parse_args()
    fx = json.load(open(args.fixture))
    m = Model(args.model)
    worst_q8k = 0.0
    names = list(fx["prompts"])
    runs = []
    for name in names:
        ids = fx["prompts"][name]["ids"]
        runs += [(ids, lambda h: h, np.float64), (ids, q8k, np.float32)]
    logits = m.forward(runs)
    for j, name in enumerate(names):
        p = fx["prompts"][name]
        exact, emul = logits[2 * j], logits[2 * j + 1]
        p["exact_top5"], p["exact_top1"] = [], []
        dq = 0.0
        for t, row in enumerate(p["prompt_top5"]):
            tids = [i for i, _ in row]
            p["exact_top5"].append([round(float(exact[t, i]), 4) for i in tids])
            o = np.argsort(-exact[t])[:2]
            p["exact_top1"].append([int(o[0]), round(float(exact[t, o[0]] - exact[t, o[1]]), 4)])
            dq = max(dq, max(abs(float(emul[t, i]) - lv) for i, lv in row))
        worst_q8k = max(worst_q8k, dq)
        d0 = max(abs(a - b) for a, (_, b) in zip(p["exact_top5"][0], p["prompt_top5"][0]))
        print("%-8s q8k-emulation vs llama.cpp max %.4f; exact vs llama.cpp at pos 0: %.3f"
              % (name, dq, d0), file=sys.stderr)
    fx["header"]["exact_reference"] = {
        "script": "scripts/make_exact_reference.py",
        "how": "numpy forward from gguf-py dequantized tensors, float64, no activation "
               "quantization; exact_top5 = those logits at llama.cpp's top-5 ids, exact_top1 = "
               "[argmax, top-1 minus top-2]",
        "q8k_max_abs_diff": round(worst_q8k, 4),
        "q8k_note": "the same numpy forward with activations quantized as llama.cpp's Q8_K, "
                    "against llama.cpp's logits (max over every position and top-5 id)",
    }
    with open(args.out or args.fixture, "w") as f:
        json.dump(fx, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
