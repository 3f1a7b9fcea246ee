#!/usr/bin/env python3
"""Skippability of two or more models by normalized depth, side by side.

    python3 scripts/transfer_report.py A.json.report.json B.json.report.json [C...] \
        [-o build/transfer.png] [--bins 4]

Each report is the per-sublayer table `selfspec search` writes next to its
config (OUT.report.json): for every attention and MLP sublayer, the draft's
top-1 agreement with the full model when that sublayer alone is skipped
("match_alone"). Depth is normalized as (layer + 0.5) / n_layers, the same
mapping `selfspec search --seed-config` uses to carry a set between models.

Prints, per depth bin and sublayer kind, each model's mean agreement and
the Spearman rank correlation of each pair of curves (interpolated onto
common depths), and draws one plot (two panels: attention, MLP) when
matplotlib is installed.
"""
import argparse
import json
import os
import sys


def load(path):
    with open(path) as f:
        rep = json.load(f)
    L = rep["n_layers"]
    curves = {"attn": [], "mlp": []}
    for s in rep["sublayers"]:
        curves[s["kind"]].append(((s["layer"] + 0.5) / L, s["match_alone"]))
    for k in curves:
        curves[k].sort()
    name = os.path.basename(path).split(".json")[0]
    return name, rep.get("full_match", 1.0), curves


def interp(curve, x):
    xs = [p[0] for p in curve]
    ys = [p[1] for p in curve]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va and vb else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("-o", "--out", default="build/transfer.png")
    ap.add_argument("--bins", type=int, default=4)
    a = ap.parse_args()
    if len(a.reports) < 2:
        ap.error("give two or more reports")
    models = [load(p) for p in a.reports]
    grid = [(i + 0.5) / 40 for i in range(40)]
    print(f"agreement with the full model, one sublayer skipped (mean per depth bin; "
          f"full-model self-agreement {' / '.join(f'{m[1]:.3f}' for m in models)})")
    print(f"{'kind':5} {'depth':11} " + " ".join(f"{m[0][:24]:>24}" for m in models))
    for kind in ("attn", "mlp"):
        for b in range(a.bins):
            lo, hi = b / a.bins, (b + 1) / a.bins
            cells = []
            for _, _, c in models:
                v = [y for x, y in c[kind] if lo <= x < hi]
                cells.append(f"{sum(v) / len(v):24.3f}" if v else f"{'-':>24}")
            print(f"{kind:5} {lo:.2f}-{hi:.2f}  " + " ".join(cells))
        for i in range(len(models)):
            for j in range(i + 1, len(models)):
                rho = spearman([interp(models[i][2][kind], x) for x in grid],
                               [interp(models[j][2][kind], x) for x in grid])
                print(f"{kind:5} rank correlation of the depth profiles of {models[i][0]} and "
                      f"{models[j][0]}: {rho:.2f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: pip install matplotlib)", file=sys.stderr)
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind, title in zip(axes, ("attn", "mlp"), ("attention skipped alone", "MLP skipped alone")):
        for (name, _, c), style in zip(models, ("o-", "s--", "^:", "d-.")):
            ax.plot([p[0] for p in c[kind]], [p[1] for p in c[kind]], style, ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("normalized depth (layer + 0.5) / layers")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("draft top-1 agreement with the full model")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"plot: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
