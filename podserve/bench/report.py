"""Plain-text tables for benchmark results (printed to the terminal)."""
from __future__ import annotations

LATENCIES = (("scheduling delay", "scheduling_delay"), ("TTFT", "ttft"), ("TBT", "tbt"),
             ("E2E", "e2e"), ("normalised E2E (s/token)", "normalized_e2e"))


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def format_summary(summary: dict, title: str = "") -> str:
    """Latency percentiles (ms), throughput and iteration mix of one run."""
    lines = [title] if title else []
    lines.append(f"{'metric (ms)':<26}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}{'count':>8}")
    for label, key in LATENCIES:
        d = summary[key]
        lines.append(f"{label:<26}" + "".join(f"{_ms(d[k]):>10}" for k in ("mean", "p50", "p90", "p99", "max")) + f"{d['count']:>8}")
    lines.append(f"completed {summary['num_completed']}/{summary['num_requests']}, preemptions {summary['num_preemptions']}")
    if "throughput_requests_per_s" in summary:
        lines.append(f"throughput {summary['throughput_requests_per_s']:.3f} req/s, "
                     f"{summary['throughput_output_tokens_per_s']:.1f} output tok/s, "
                     f"{summary['throughput_total_tokens_per_s']:.1f} total tok/s")
    its = summary["iterations"]
    kinds = ", ".join(f"{k} {d['count']} (mean {_ms(d['mean'])} ms)" for k, d in its["duration_by_kind"].items())
    lines.append(f"iterations {its['count']}: {kinds}")
    pipe = summary.get("pipeline")
    if pipe and pipe.get("bubble_fraction") is not None:
        util = ", ".join(f"{u:.0%}" for u in pipe["stage_utilization"])
        lines.append(f"pipeline {pipe['num_stages']} stage(s), {pipe['num_micro_batches']} micro-batches: "
                     f"bubble fraction {pipe['bubble_fraction']:.1%} (stage utilization {util})")
    return "\n".join(lines)


def format_piggyback(rows: list[dict], max_rows: int = 8) -> str:
    """Decode-only vs hybrid iterations of equal decode count (Sarathi's piggybacking)."""
    if not rows:
        return "piggybacking: no decode count occurs in both decode-only and hybrid iterations"
    rows = sorted(rows, key=lambda r: -min(r["hybrid_count"], r["decode_only_count"]))[:max_rows]
    lines = ["piggybacking: iterations with the same number of decodes (ms)",
             f"{'decodes':>8}{'decode-only':>13}{'(n)':>6}{'hybrid':>10}{'(n)':>6}{'chunk tok':>11}{'chunk alone':>13}{'decodes add':>13}"]
    for r in sorted(rows, key=lambda r: r["num_decodes"]):
        lines.append(f"{r['num_decodes']:>8}{_ms(r['decode_only_mean_s']):>13}{r['decode_only_count']:>6}"
                     f"{_ms(r['hybrid_mean_s']):>10}{r['hybrid_count']:>6}{r['hybrid_mean_prefill_tokens']:>11.0f}"
                     f"{_ms(r.get('prefill_alone_estimate_s')):>13}{_ms(r.get('piggybacked_decodes_s')):>13}")
    return "\n".join(lines)


def format_capacity_table(capacities: dict[str, float], brackets: dict[str, tuple]) -> str:
    """Side-by-side capacities, each relative to the first scheduler."""
    names = list(capacities)
    ref = capacities[names[0]]
    lines = [f"{'scheduler':<20}{'capacity (QPS)':>16}{'bracket':>24}{'vs ' + names[0]:>14}"]
    for n in names:
        lo, hi = brackets[n]
        ratio = "-" if not ref else f"{capacities[n] / ref:.2f}x"
        bracket = f"[{'-' if lo is None else f'{lo:.3f}'}, {'-' if hi is None else f'{hi:.3f}'}]"
        lines.append(f"{n:<20}{capacities[n]:>16.3f}{bracket:>24}{ratio:>14}")
    return "\n".join(lines)


def format_host_device(iterations: dict) -> str:
    """Host vs device time per iteration (ms, medians), where the engine measured them."""
    if "cpu_time" not in iterations:
        return "host/device split: not measured"
    cpu, gpu = iterations["cpu_time"], iterations["gpu_time"]
    line = f"per iteration (median ms): host until enqueued {_ms(cpu['p50'])}, device {_ms(gpu['p50'])}"
    if "host_overhead" in iterations:
        idle = iterations["host_overhead"]["p50"]
        ratio = iterations["host_overhead_ratio"]["p50"]
        share = "-" if ratio is None else f"{100 * ratio:.0f}%"
        line += f", device idle per iteration {_ms(idle)} ({share} of device time)"
    return line
