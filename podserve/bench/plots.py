"""Benchmark plots (matplotlib, Agg backend: files only, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from podserve.metrics import MetricsCollector


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdfs(collectors: dict[str, MetricsCollector], path: str | Path, tbt_slo: float | None = None) -> Path:
    """CDFs of TTFT and TBT, one line per run (e.g. per scheduler)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, c in collectors.items():
        done = c.completed()
        for ax, values in ((axes[0], [r.ttft for r in done if r.ttft is not None]),
                           (axes[1], [x for r in done for x in r.tbt])):
            if values:
                x = np.sort(values)
                ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label)
    axes[0].set_xlabel("TTFT (s)")
    axes[1].set_xlabel("time between tokens (s)")
    if tbt_slo is not None:
        axes[1].axvline(tbt_slo, color="red", linestyle="--", label=f"SLO {tbt_slo:.3f}s")
    for ax in axes:
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_batch_composition(collector: MetricsCollector, path: str | Path) -> Path:
    """Prefill and decode tokens of every iteration over time, and iteration duration."""
    plt = _plt()
    its = collector.iterations
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    if its:
        t0 = its[0].start
        t = np.array([it.start - t0 for it in its])
        width = np.array([it.duration for it in its])
        decode = np.array([it.num_decode_tokens for it in its])
        prefill = np.array([it.num_prefill_tokens for it in its])
        top.bar(t, decode, width=width, align="edge", label="decode tokens", color="tab:blue")
        top.bar(t, prefill, width=width, bottom=decode, align="edge", label="prefill tokens", color="tab:orange")
        bottom.scatter(t, width * 1e3, s=4, c=["tab:green" if p and d else "tab:orange" if p else "tab:blue"
                                               for p, d in zip(prefill, decode)])
    top.set_ylabel("tokens in iteration")
    top.legend()
    bottom.set_ylabel("iteration (ms)\nblue decode, orange prefill, green hybrid")
    bottom.set_yscale("log")
    bottom.set_xlabel("time since first iteration (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_capacity(capacities: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Bar chart of capacity (QPS) per scheduler."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 * len(capacities) + 2, 4))
    names = list(capacities)
    bars = ax.bar(names, [capacities[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.3g")
    ax.set_ylabel("capacity (QPS within SLO)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
