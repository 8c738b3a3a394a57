#!/usr/bin/python3
"""Plots the post-hoc KV-compression study (`kvlab lowrank-study`, docs/lowrank.md).

  scripts/plot_lowrank_study.py RESULTS.h5 [--out-dir DIR]

Reads /study/<task>/{models,layers,spectra} and writes into DIR (default: the results
file's directory, i.e. results/), printing the paths:
  <stem>_capability.png  per task (rows): capability (bits per byte, or MQAR accuracy)
                         against KV-cache elements per token per layer. Left column: no
                         fine-tuning; right: after fine-tuning. One colour per method (MLA
                         trained from scratch in black, svd, qrcp, rsvd, cur); weight-only
                         dashed, data-aware solid; the MHA base as a star at its full cache
                         (right: the MHA base fine-tuned as long, the control).
  <stem>_spectra.png     per task: the singular values of [wk; wv] and of the K/V
                         activations of each layer, normalised by the largest, with the
                         budgets as vertical lines.
  <stem>_errors.png      per task: the relative K/V error on validation batches (mean over
                         layers) against the budget, per method and mode.
Needs h5py and matplotlib (Debian: python3-h5py, python3-matplotlib); uses the Agg backend.
"""
import argparse
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"mla": "black", "svd": "tab:blue", "qrcp": "tab:orange", "rsvd": "tab:green", "cur": "tab:red"}


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read_table(group):
    cols = {}
    for k in group:
        d = group[k]
        if d.dtype.kind in ("O", "S"):
            cols[k] = [text(x) for x in d[()]]
        else:
            cols[k] = list(d[()])
    n = len(next(iter(cols.values()))) if cols else 0
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def finite(x):
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def capability(row, metric, prefix=""):
    if metric == "val_accuracy":
        return float(row[prefix + "val_accuracy"])
    return float(row[prefix + "val_bits_per_byte"])


def plot_capability(tasks, out):
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.2 * len(tasks)), squeeze=False)
    for r, (name, g) in enumerate(tasks):
        rows = read_table(g["models"])
        metric = text(g["models"].attrs["metric"])
        ylabel = "val accuracy" if metric == "val_accuracy" else "val bits per byte"
        for c, ft in enumerate([False, True]):
            ax = axes[r][c]
            prefix = "ft_" if ft else ""
            mla = sorted((int(x["budget"]), capability(x, metric)) for x in rows if x["kind"] == "mla")
            mla = [p for p in mla if finite(p[1])]
            if mla:
                ax.plot(*zip(*mla), "o-", color=COLOURS["mla"], label="MLA (trained)", lw=2)
            methods = sorted({x["method"] for x in rows if x["kind"] == "compressed"},
                             key=lambda m: list(COLOURS).index(m) if m in COLOURS else 99)
            for m in methods:
                for da in (0, 1):
                    pts = sorted((int(x["budget"]), capability(x, metric, prefix)) for x in rows
                                 if x["kind"] == "compressed" and x["method"] == m and int(x["data_aware"]) == da)
                    pts = [p for p in pts if finite(p[1])]
                    if pts:
                        ax.plot(*zip(*pts), "s-" if da else "^--", color=COLOURS.get(m, None), alpha=0.85,
                                label=f"{m} {'data-aware' if da else 'weight-only'}{' +ft' if ft else ''}")
            for x in rows:
                if x["kind"] == "mha":
                    y = capability(x, metric, prefix)
                    if finite(y):
                        ax.plot([int(x["budget"])], [y], "*", ms=14, color="gold", mec="black",
                                label="MHA base" + (" +ft (control)" if ft else ""))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("KV-cache elements per token per layer")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}: {'after fine-tuning' if ft else 'no fine-tuning'}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_spectra(tasks, out):
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for c, (name, g) in enumerate(tasks):
        ax = axes[0][c]
        w, a = g["spectra"]["weight"][()], g["spectra"]["activation"][()]
        for layer in range(w.shape[0]):
            ax.semilogy(range(1, w.shape[1] + 1), w[layer] / w[layer][0], "-", label=f"[wk; wv] layer {layer}")
            ax.semilogy(range(1, a.shape[1] + 1), a[layer] / a[layer][0], "--", label=f"K/V activations layer {layer}")
        budgets = sorted({int(x["budget"]) for x in read_table(g["models"]) if x["kind"] == "compressed"})
        for b in budgets:
            ax.axvline(b, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("index i (budgets dotted)")
        ax.set_ylabel("σ_i / σ_1")
        ax.set_title(f"{name}: singular spectra")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_errors(tasks, out):
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for c, (name, g) in enumerate(tasks):
        ax = axes[0][c]
        rows = [x for x in read_table(g["models"]) if x["kind"] == "compressed"]
        for m in sorted({x["method"] for x in rows}):
            for da in (0, 1):
                pts = sorted((int(x["budget"]), float(x["kv_rel_error"])) for x in rows
                             if x["method"] == m and int(x["data_aware"]) == da)
                if pts:
                    ax.plot(*zip(*pts), "s-" if da else "^--", color=COLOURS.get(m, None),
                            label=f"{m} {'data-aware' if da else 'weight-only'}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("KV-cache elements per token per layer")
        ax.set_ylabel("relative K/V error (validation, mean over layers)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.results))
    stem = os.path.splitext(os.path.basename(args.results))[0]
    with h5py.File(args.results, "r") as f:
        if "study" not in f:
            sys.exit(f"{args.results}: no /study group; run kvlab lowrank-study first")
        tasks = [(name, f["study"][name]) for name in f["study"]]
        outs = []
        for suffix, fn in (("capability", plot_capability), ("spectra", plot_spectra), ("errors", plot_errors)):
            path = os.path.join(out_dir, f"{stem}_{suffix}.png")
            fn(tasks, path)
            outs.append(path)
    for p in outs:
        print(p)


if __name__ == "__main__":
    main()
