#!/usr/bin/env python3
"""kvmtrain's plots, as PNG (matplotlib from Debian's python3-matplotlib). kvmtrain calls this file;
it can be run by hand too:

  plot.py sweep SUMMARY.json OUT.png          loss curves of every run of a sweep on one chart
  plot.py position-loss POSITION.json OUT.png loss by position block (kvmtrain eval --task position-loss)
  plot.py passkey PASSKEY.json OUT.png        accuracy heatmap, depth x context length
  plot.py kvm-bench KVM_BENCH.json OUT.png    the complexity bench (bench/kvm_bench_plot.py)
"""
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display on the build machines
import matplotlib.pyplot as plt


def read_log(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # a line cut by a crash
    except OSError:
        pass
    return rows


def smooth(xs, k):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_sweep(src, dst):
    summary = json.load(open(src))
    base = os.path.dirname(os.path.abspath(src))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(summary["runs"]):
        log = run["log"]
        rows = read_log(log if os.path.isabs(log) or os.path.exists(log) else os.path.join(base, log))
        if not rows:
            continue
        color = f"C{i % 10}"
        tokens = run.get("batch_size", 1) * run.get("seq_len", 1)
        steps = [r["step"] for r in rows if "loss" in r and math.isfinite(r["loss"])]
        loss = [r["loss"] for r in rows if "loss" in r and math.isfinite(r["loss"])]
        k = max(1, len(loss) // 50)
        axes[0].plot(steps, smooth(loss, k), color=color, lw=1.2, label=run["name"])
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if val:
            axes[1].plot([s for s, _ in val], [v for _, v in val], "o-", color=color, ms=3, label=run["name"])
    axes[0].set(xlabel="step", ylabel="training loss (nats/token, smoothed)", title="training loss")
    axes[1].set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(os.path.basename(summary.get("sweep", "")), fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    if "plot" in summary:
        plot_sweep_xy(summary, os.path.dirname(os.path.abspath(dst)))


def as_number(v):
    try:
        return float(v)
    except ValueError:
        return None


def plot_sweep_xy(summary, out_dir):
    """The sweep's plot: y against the tag x, one line per value of the tag `lines`."""
    x, y, lines = summary["plot"]["x"], summary["plot"]["y"], summary["plot"]["lines"]
    series = {}
    for run in summary["runs"]:
        tags = run.get("tags", {})
        if x in tags and lines in tags and y in run:
            series.setdefault(tags[lines], []).append((tags[x], run[y]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted({p[0] for pts in series.values() for p in pts},
                key=lambda v: (as_number(v) is None, as_number(v) or 0, v))
    numeric = all(as_number(v) is not None for v in xs)
    for i, (name, pts) in enumerate(series.items()):
        pts.sort(key=lambda p: xs.index(p[0]))
        px = [as_number(p[0]) if numeric else xs.index(p[0]) for p in pts]
        ax.plot(px, [p[1] for p in pts], "o-", color=f"C{i % 10}", label=name)
    if numeric:
        ax.set_xticks([as_number(v) for v in xs])
    else:
        ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=x, ylabel=y.replace("_", " "), title=f"{y.replace('_', ' ')} vs {x}")
    if y == "recall_accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{y}_vs_{x}.png"), dpi=110)


def plot_position_loss(src, dst):
    r = json.load(open(src))
    mids = [(b["start"] + b["end"]) / 2 for b in r["blocks"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(mids, [b["loss"] for b in r["blocks"]], "o-")
    ax.axvline(r["train_seq_len"], color="gray", ls="--", label=f"training length {r['train_seq_len']}")
    ax.set(xlabel=f"position (blocks of {r['block']} tokens)", ylabel="next-token loss (nats)",
           title=f"loss by position, {r['documents']} documents of {r['seq_len']} tokens")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


def plot_passkey(src, dst):
    r = json.load(open(src))
    acc = r["accuracy"]  # [depth][length]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(r["lengths"]), 1.4 + 0.55 * len(r["depths"])))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(r["lengths"])), [str(x) for x in r["lengths"]])
    ax.set_yticks(range(len(r["depths"])), [f"{d:.2f}" for d in r["depths"]])
    for i, row in enumerate(acc):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="context length (tokens)", ylabel="needle depth",
           title=f"passkey accuracy ({r['trials']} trials per cell)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


def plot_kvm_bench(src, dst):
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
    sys.path.insert(0, here)
    import kvm_bench_plot  # noqa: E402  (bench/kvm_bench_plot.py reads sys.argv)
    sys.argv = ["kvm_bench_plot.py", src, dst]
    kvm_bench_plot.main()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    kind, src, dst = sys.argv[1:]
    {"sweep": plot_sweep, "position-loss": plot_position_loss, "passkey": plot_passkey,
     "kvm-bench": plot_kvm_bench}[kind](src, dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
