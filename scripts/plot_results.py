#!/usr/bin/python3
"""Plots a kvlab results file (config.md, "Results file").

  scripts/plot_results.py RESULTS.h5 [--out-dir DIR]

Writes two PNGs into DIR (default: the results file's directory, i.e. results/) and
prints their paths:
  <stem>_pareto.png  capability vs KV-cache elements per token (log x): every completed run
                     as a small dot, each variant's mean over seeds with sample-std error
                     bars, labelled by variant. Capability is val_accuracy when the runs have
                     it (MQAR), else val_loss.
  <stem>_curves.png  train/loss and eval/loss (and eval/accuracy when logged) against step,
                     one line per run, one colour per variant; failed runs dashed.
  <stem>_capacity.png  only when the runs differ in data.num_kv_pairs (MQAR): capability
                     against the number of key-value pairs, one line per variant (mean ±
                     sample std over seeds), labelled with its KV-cache elements per token.

Variants are grouped like `kvlab report`: the run's resolved config without seed, threads,
name and output path; the attention plugin's own dimensions come from the run's params/
attributes. Runs that differ in train.lr are separate variants here (the label says lr).
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
import matplotlib.ticker  # noqa: E402

# Model hyper-parameters every plugin shares; the rest of params/ attrs are the plugin's own.
COMMON_MODEL = {"vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_hidden", "rope_theta",
                "norm_eps", "tie_embeddings", "attention", "format_version"}
IGNORED = {"seed", "name", "train.threads", "output.path", "train.checkpoint_every"}


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def flatten_config(yaml_text):
    """dump_config's layout as {"section.key": "value"} (comments and quotes dropped)."""
    out, section = {}, None
    for line in yaml_text.splitlines():
        t = line.strip()
        if not t or t.startswith("#") or ":" not in t:
            continue
        key, value = (s.strip() for s in t.split(":", 1))
        if value.startswith('"'):
            value = value[1:value.find('"', 1)] if '"' in value[1:] else value[1:]
        elif " #" in value:
            value = value[:value.index(" #")].strip()
        elif value.startswith("#"):
            value = ""
        if not line.startswith(" "):
            if value == "":
                section = key
                continue
            section = None
            out[key] = value
        elif section:
            out[section + "." + key] = value
    return out


def read_runs(path):
    runs = []
    with h5py.File(path, "r") as f:
        if "runs" not in f:
            return runs
        for rid, g in f["runs"].items():
            if not isinstance(g, h5py.Group):
                continue
            a = {k: (text(v) if isinstance(v, (bytes, str)) else v) for k, v in g.attrs.items()}
            series = {}
            for name in ("train/step", "train/loss", "eval/step", "eval/loss", "eval/accuracy"):
                if name in g:
                    series[name] = g[name][()]
            runs.append({
                "id": rid,
                "attrs": a,
                "status": a.get("status", ""),
                "config": flatten_config(a.get("config", "")),
                "final": dict(g["final"].attrs) if "final" in g else {},
                "plugin": {k: v for k, v in g["params"].attrs.items() if k not in COMMON_MODEL} if "params" in g else {},
                "series": series,
            })
    return runs


def variant_keys(runs, ignore=()):
    """A grouping key and a readable label per run (same key = same variant, seeds aside);
    config keys in `ignore` do not tell variants apart either."""
    def defining(r):
        c = {k: v for k, v in r["config"].items()
             if k not in IGNORED and k not in ignore and not k.startswith("model.")}
        c["model.attention"] = r["attrs"].get("attention", r["config"].get("model.attention", "?"))
        for k in ("d_model", "n_layers", "n_heads", "head_dim", "mlp_hidden"):
            c["model." + k] = r["config"].get("model." + k, "")
        for k, v in r["plugin"].items():
            c["model." + k] = str(v)
        return c

    defs = [defining(r) for r in runs]
    known = [d for r, d in zip(runs, defs) if r["config"]]   # runs that failed early may have no config
    names = sorted({k for d in known for k in d})
    plugin = {"model." + k for r in runs for k in r["plugin"]}   # shown as the plugin's dims instead
    differing = [k for k in names if k != "model.attention" and k not in plugin and len({d.get(k) for d in known}) > 1]
    out = []
    for r, d in zip(runs, defs):
        dims = ", ".join(f"{k} {v}" for k, v in r["plugin"].items())
        extra = ", ".join(f"{k.rsplit('.', 1)[-1]} {d.get(k)}" for k in differing)
        label = d["model.attention"] + (f" ({dims})" if dims else "") + (f", {extra}" if extra else "")
        out.append((tuple(sorted(d.items())), label))
    return out


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def label_log_ticks(ax, ticks, pad=None):
    """Labels the x values that occur on a log axis as plain numbers (pad: margin factor)."""
    if not ticks:
        return
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if pad:
        ax.set_xlim(min(ticks) / pad, max(ticks) * pad)


def plot_pareto(runs, keys, out_path):
    done = [(r, k) for r, k in zip(runs, keys) if r["status"] == "completed"]
    use_acc = any("val_accuracy" in r["final"] for r, _ in done)
    metric = "val_accuracy" if use_acc else "val_loss"
    groups = {}
    for r, (key, label) in done:
        if metric in r["final"] and "kv_cache_elements_per_token" in r["attrs"]:
            groups.setdefault(key, (label, []))[1].append((float(r["attrs"]["kv_cache_elements_per_token"]),
                                                           float(r["final"][metric])))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pts) in enumerate(groups.values()):
        c = colors[i % len(colors)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, s=14, color=c, alpha=0.35)
        m, s = mean_std(ys)
        ax.errorbar([xs[0]], [m], yerr=[s], fmt="o", ms=7, capsize=4, color=c, label=f"{label} (n={len(ys)})")
        ax.annotate(label.split(" (")[0].split(",")[0], (xs[0], m), textcoords="offset points", xytext=(6, 6), fontsize=8, color=c)
    ax.set_xscale("log")
    ticks = sorted({p[0] for _, pts in groups.values() for p in pts})
    label_log_ticks(ax, ticks, pad=1.3)
    ax.set_xlabel("KV-cache elements per token (all layers, log scale)")
    ax.set_ylabel(metric.replace("_", " ") + (" (higher is better)" if use_acc else " (lower is better)"))
    ax.set_title("capability vs KV-cache size (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_capacity(runs, out_path):
    """Capability against data.num_kv_pairs, one line per variant (seq_len follows the pairs)."""
    keys = variant_keys(runs, ignore=("data.num_kv_pairs", "data.seq_len"))
    done = [(r, k) for r, k in zip(runs, keys) if r["status"] == "completed"]
    use_acc = any("val_accuracy" in r["final"] for r, _ in done)
    metric = "val_accuracy" if use_acc else "val_loss"
    groups = {}
    for r, (key, label) in done:
        pairs = r["config"].get("data.num_kv_pairs")
        if metric not in r["final"] or pairs is None:
            continue
        cache = int(float(r["attrs"].get("kv_cache_elements_per_token", 0)))
        lab, by_pairs = groups.setdefault(key, (f"{label} [{cache} KV elements/token]", {}))
        by_pairs.setdefault(int(pairs), []).append(float(r["final"][metric]))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, by_pairs in groups.values():
        xs = sorted(by_pairs)
        stats = [mean_std(by_pairs[x]) for x in xs]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-", ms=5, capsize=4, lw=1.2,
                    label=f"{label} (n={min(len(v) for v in by_pairs.values())}-{max(len(v) for v in by_pairs.values())})")
        for x in xs:
            ax.scatter([x] * len(by_pairs[x]), by_pairs[x], s=10, alpha=0.3, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ticks = sorted({x for _, bp in groups.values() for x in bp})
    label_log_ticks(ax, ticks)
    ax.set_xlabel("key-value pairs per sequence (data.num_kv_pairs, log scale)")
    ax.set_ylabel(metric.replace("_", " ") + (" (higher is better)" if use_acc else " (lower is better)"))
    ax.set_title("recall capacity: capability vs number of key-value pairs (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_curves(runs, keys, out_path):
    has_acc = any(len(r["series"].get("eval/accuracy", [])) for r in runs)
    panels = [("train/loss", "train loss"), ("eval/loss", "eval loss")] + ([("eval/accuracy", "eval accuracy")]
                                                                            if has_acc else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of, labelled = {}, set()
    for r, (key, label) in zip(runs, keys):
        c = color_of.setdefault(key, colors[len(color_of) % len(colors)])
        style = "--" if r["status"] != "completed" else "-"
        for ax, (name, _) in zip(axes, panels):
            y = r["series"].get(name)
            x = r["series"].get(name.split("/")[0] + "/step")
            if y is None or x is None or len(y) == 0:
                continue
            first = key not in labelled and ax is axes[0]
            ax.plot(x[:len(y)], y, style, color=c, lw=1, alpha=0.8, label=label if first else None)
        labelled.add(key)
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    fig.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.9))
    fig.suptitle("one line per run, one colour per variant (dashed: not completed)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a kvlab results file (HDF5)")
    p.add_argument("--out-dir", default=None, help="where the PNGs go (default: the results file's directory)")
    a = p.parse_args()
    if not os.path.isfile(a.results):
        sys.exit(f"plot_results.py: error: {a.results}: no such file")
    try:
        runs = read_runs(a.results)
    except OSError as e:
        sys.exit(f"plot_results.py: error: cannot read {a.results} as HDF5 ({e}); is a sweep still writing it?")
    if not runs:
        sys.exit(f"plot_results.py: error: {a.results} has no runs (no groups under /runs)")
    out_dir = a.out_dir or os.path.dirname(os.path.abspath(a.results))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(a.results))[0]
    keys = variant_keys(runs)
    pareto = os.path.join(out_dir, f"{stem}_pareto.png")
    curves = os.path.join(out_dir, f"{stem}_curves.png")
    plot_pareto(runs, keys, pareto)
    plot_curves(runs, keys, curves)
    print(pareto)
    print(curves)
    if len({r["config"].get("data.num_kv_pairs") for r in runs if r["config"]} - {None}) > 1:
        capacity = os.path.join(out_dir, f"{stem}_capacity.png")
        plot_capacity(runs, capacity)
        print(capacity)


if __name__ == "__main__":
    main()
