#!/usr/bin/env python3
"""Render a skip-set search report as a PNG heatmap and a text table.

`selfspec search` writes <config>.report.json next to the config it makes:
for every sublayer, the draft's top-1 match rate with the full model when only
that sublayer is skipped ("skippability"), and how often it is skipped in the
10 best sets the search found. This draws both over depth:

    python3 scripts/skip_report.py configs/smollm2-135m-8k-lc100k-mix1-ep2.json.report.json \
        [--config configs/....json] [-o build/skip_report.png]

Rows: attention / MLP; columns: layers. Needs matplotlib (pip install matplotlib).
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--config", help="the config, to outline the chosen skip set")
    ap.add_argument("-o", "--out", default="build/skip_report.png")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        sys.exit("skip_report.py needs matplotlib: pip install matplotlib")
    rep = json.load(open(a.report))
    L = rep["n_layers"]
    subs = rep["sublayers"]
    match = np.array([[s["match_alone"] for s in subs[:L]], [s["match_alone"] for s in subs[L:]]])
    intop = np.array([[s["in_top"] for s in subs[:L]], [s["in_top"] for s in subs[L:]]])
    chosen = np.zeros((2, L))
    if a.config:
        cfg = json.load(open(a.config))
        for l in cfg.get("attn_skip", []):
            chosen[0, l] = 1
        for l in cfg.get("mlp_skip", []):
            chosen[1, l] = 1
    fig, axes = plt.subplots(2, 1, figsize=(max(8, L * 0.35), 3.6), constrained_layout=True)
    for ax, data, title, cmap, vmin in ((axes[0], match, "draft top-1 match when only this sublayer is skipped "
                                         f"(nothing skipped: {rep['full_match']:.3f})", "viridis", None),
                                        (axes[1], intop, "share of the 10 best sets that skip it", "magma", 0)):
        im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin if vmin is not None else data.min(),
                       vmax=1.0 if vmin is not None else data.max())
        ax.set_yticks([0, 1], ["attn", "mlp"])
        ax.set_xticks(range(L), [str(i) for i in range(L)], fontsize=7)
        ax.set_title(title, fontsize=9)
        for (r, c) in zip(*np.nonzero(chosen)):
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[1].set_xlabel("layer" + ("  (red: skipped by the chosen set)" if a.config else ""))
    fig.savefig(a.out, dpi=120)
    print(f"layer  attn-match  attn-best  mlp-match  mlp-best")
    for l in range(L):
        print(f"{l:5d}  {match[0, l]:10.3f}  {intop[0, l]:9.2f}  {match[1, l]:9.3f}  {intop[1, l]:8.2f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
