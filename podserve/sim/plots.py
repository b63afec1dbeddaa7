"""Search plot: capacity per GPU (or per dollar) against P99 TBT, Pareto front marked."""
from __future__ import annotations

from pathlib import Path

from podserve.sim.search import pareto_front


def plot_pareto(results: list[dict], path: str | Path, key_y: str = "capacity_per_gpu", ylabel: str = "capacity per GPU (QPS)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("feasible") and r.get("capacity_qps") and r.get("p99_tbt_s") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    by_sched: dict[str, list] = {}
    for r in ok:
        p = r["point"]
        by_sched.setdefault(p["scheduler"] + ("+slo" if p.get("tbt_budget") else ""), []).append(r)
    for name, rs in sorted(by_sched.items()):
        ax.scatter([r["p99_tbt_s"] * 1e3 for r in rs], [r[key_y] for r in rs], s=14, alpha=0.6, label=name)
    front = pareto_front(ok, key_y=key_y)
    if front:
        ax.plot([r["p99_tbt_s"] * 1e3 for r in front], [r[key_y] for r in front], "k--", lw=1, label="Pareto front")
        best = max(front, key=lambda r: r[key_y])
        ax.annotate(best["label"], (best["p99_tbt_s"] * 1e3, best[key_y]), fontsize=7, xytext=(5, -12), textcoords="offset points")
    ax.set_xlabel("P99 TBT at capacity (ms)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
