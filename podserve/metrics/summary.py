"""Percentile summaries of request and iteration metrics (numpy only)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from podserve.metrics.records import IterationRecord

PERCENTILES = (50, 90, 99)


def distribution(values: Iterable[float | None]) -> dict:
    """count, mean, min, max and P50/P90/P99 of the non-None values (None entries if empty)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    keys = ["mean", "min", "max"] + [f"p{p}" for p in PERCENTILES]
    if x.size == 0:
        return {"count": 0, **{k: None for k in keys}}
    out = {"count": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "max": float(x.max())}
    for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES)):
        out[f"p{p}"] = float(v)
    return out


def piggyback_table(iterations: Iterable[IterationRecord]) -> list[dict]:
    """Mean duration of decode-only vs hybrid iterations with the same number of decodes.

    Sarathi's piggybacking claim: decodes that ride along a prefill chunk cost far less
    than a decode-only iteration of the same size, so ``hybrid - decode_only`` (the extra
    time the chunk adds) is much less than a prefill-only iteration of that chunk would
    take on its own. Rows only for decode counts that occur in both kinds. With
    prefill-only iterations of at least two sizes, each row also estimates the chunk's
    cost alone (a linear fit) and hence what the piggybacked decodes added.
    """
    iterations = list(iterations)
    decode_only: dict[int, list[float]] = defaultdict(list)
    hybrid: dict[int, list[IterationRecord]] = defaultdict(list)
    for it in iterations:
        if it.kind == "decode":
            decode_only[it.num_decodes].append(it.duration)
        elif it.kind == "hybrid":
            hybrid[it.num_decodes].append(it)
    # Prefill-only iterations, fitted linearly in their token count, estimate what a
    # hybrid iteration's chunk would cost alone; the rest is what its decodes cost.
    prefill = [(it.num_prefill_tokens, it.duration) for it in iterations if it.kind == "prefill"]
    fit = np.polyfit(*zip(*prefill), 1) if len({n for n, _ in prefill}) >= 2 else None
    rows = []
    for n in sorted(set(decode_only) & set(hybrid)):
        h = hybrid[n]
        rows.append({
            "num_decodes": n,
            "decode_only_count": len(decode_only[n]),
            "decode_only_mean_s": float(np.mean(decode_only[n])),
            "hybrid_count": len(h),
            "hybrid_mean_s": float(np.mean([it.duration for it in h])),
            "hybrid_mean_prefill_tokens": float(np.mean([it.num_prefill_tokens for it in h])),
        })
        if fit is not None:
            alone = float(np.mean([np.polyval(fit, it.num_prefill_tokens) for it in h]))
            rows[-1]["prefill_alone_estimate_s"] = alone
            rows[-1]["piggybacked_decodes_s"] = rows[-1]["hybrid_mean_s"] - alone
    return rows


def host_device_split(iterations: list[IterationRecord]) -> dict:
    """Host vs device time per iteration, where the engine measured them.

    ``cpu_time``: step start to device work enqueued. ``gpu_time``: device time.
    ``period``: start of one iteration to the start of the next (everything the host does
    per iteration, token bookkeeping and detokenization included); ``host_overhead`` =
    period - gpu_time, the time the device waits for the host, and its ratio to gpu_time.
    Periods that span an idle wait for arrivals (longer than twice the duration plus
    10 ms) are left out. Empty dict when nothing was measured.
    """
    its = [it for it in iterations if it.cpu_time is not None]
    if not its:
        return {}
    out = {"cpu_time": distribution(it.cpu_time for it in its),
           "gpu_time": distribution(it.gpu_time for it in its)}
    overhead, ratio = [], []
    for a, b in zip(iterations, iterations[1:]):
        period = b.start - a.start
        if a.gpu_time is None or period > 2 * a.duration + 0.01:
            continue
        overhead.append(period - a.gpu_time)
        ratio.append((period - a.gpu_time) / max(a.gpu_time, 1e-9))
    if overhead:
        out["host_overhead"] = distribution(overhead)
        out["host_overhead_ratio"] = distribution(ratio)
    return out
