#!/usr/bin/env python3
"""Plot kvm_bench's JSON: prefill seconds and decoder state memory vs T, log-log, with the fitted
exponents in the legend. Needs python3-matplotlib (Debian package).
usage: kvm_bench_plot.py bench/results/kvm_bench.json [out.png]"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display on the build machines
import matplotlib.pyplot as plt


def main():
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".png"
    result = json.load(open(src))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for layer, fit in result["fits"].items():
        rows = [r for r in result["rows"] if r["layer"] == layer]
        T = [r["T"] for r in rows]
        axes[0].loglog(T, [r["seconds"] for r in rows], "o-", base=2,
                       label=f"{layer}: slope {fit['time_exponent']:.2f} (theory {fit['time_theory']:g})")
        axes[1].loglog(T, [r["state_bytes"] / 2**20 for r in rows], "o-", base=2,
                       label=f"{layer}: slope {fit['memory_exponent']:.2f} (theory {fit['memory_theory']:g})")
    axes[0].set(xlabel="T (tokens)", ylabel="prefill seconds, one layer",
                title=f"forward, H={result['H']} D={result['D']} C={result['C']}, {result['threads']} thread(s)")
    axes[1].set(xlabel="T (tokens)", ylabel="decoder state, MiB (fp32)", title="state held per layer")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
