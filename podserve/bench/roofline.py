"""Roofline of an engine iteration: the ideal time of a batch on a measured device.

For a batch (a ``ScheduledBatch`` or the ``IterationRecord`` of one) and a model shape,
``iteration_cost`` counts the FLOPs and the bytes an ideal implementation moves: every
weight read once, the KV cache read once per sequence and written once per new token,
activations read and written once per operator. ``ideal_time`` is then
``max(FLOPs / matmul rate, bytes / copy bandwidth)`` with both rates *measured* on the
device (``measure_device_rates``: a large GEMM in the model's dtype and a device-to-device
copy), and an iteration's efficiency is ideal / measured time. Per-operator FLOPs and
bytes come from ``podserve.sim.roofline`` (the simulator's features), not a second copy.

Notes on the yardsticks: a copy moves each byte twice (read and write), and a kernel that
only reads (decode attention, weight streaming) can beat the copy rate, so efficiencies
somewhat above 1 are possible on memory-bound iterations; the GEMM rate is that of one
large square GEMM, which skinny GEMMs cannot reach.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from podserve.metrics.records import IterationRecord
from podserve.metrics.summary import distribution
from podserve.sim.roofline import LINEAR_OPS, LayerShapes, decode_attention_bytes, linear_bytes, linear_flops


@dataclass(frozen=True)
class DeviceRates:
    """Measured peaks of one device in one dtype."""

    matmul_flops: float
    """FLOP/s of a large square GEMM."""
    copy_bytes_per_s: float
    """Bytes moved (read + write) per second by a large device-to-device copy."""
    device: str
    dtype: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IterationCost:
    """What one iteration computes and moves, ideally."""

    flops: float
    weight_bytes: float
    kv_bytes: float
    activation_bytes: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    def ideal_time(self, rates: DeviceRates) -> float:
        """max(compute time, memory time) at the measured rates."""
        return max(self.flops / rates.matmul_flops, self.bytes / rates.copy_bytes_per_s)

    def bound(self, rates: DeviceRates) -> str:
        """"compute" or "memory": which roof the ideal time sits on."""
        return "compute" if self.flops / rates.matmul_flops >= self.bytes / rates.copy_bytes_per_s else "memory"


def _shape_of(batch) -> tuple[int, int, int, int, int, float]:
    """(num_tokens, num_sampled, decode_ctx, prefill_ctx, prefill_tokens, prefill_pairs)."""
    if isinstance(batch, IterationRecord):
        r = batch
    else:  # a ScheduledBatch: the record has the same facts
        r = IterationRecord.from_batch(batch, 0.0, 0.0)
    return (r.num_prefill_tokens + r.num_decode_tokens, r.num_sampled, r.decode_context_tokens,
            r.prefill_context_tokens, r.num_prefill_tokens, r.prefill_attention_pairs)


def iteration_cost(batch, model_config, dtype_bytes: int = 2, tp: int = 1) -> IterationCost:
    """FLOPs and bytes of one iteration (per tensor-parallel rank) of ``model_config``.

    Per layer: the four GEMMs (``sim.roofline.linear_*``), causal attention FLOPs of the
    prefill chunks and decode attention FLOPs (4 x heads x head_dim per query-key pair),
    KV read (decodes: their contexts; chunks: prefix plus chunk) and written (new tokens),
    query and output rows, two RMSNorms, the SwiGLU product and two residual adds. Once:
    embedding rows, the final norm, the LM head over the sampled rows.
    """
    t, sampled, decode_ctx, prefill_ctx, _, pairs = _shape_of(batch)
    shapes = LayerShapes.of(model_config, tp)
    h, hd = shapes.hidden_size, shapes.head_dim
    heads, kv_heads = shapes.num_heads, shapes.num_kv_heads
    inter = shapes.linear["down"][0]
    b = dtype_bytes
    flops = weights = acts = 0.0
    for op in LINEAR_OPS:
        in_f, out_f = shapes.linear[op]
        flops += linear_flops(t, in_f, out_f)
        w, a = linear_bytes(t, in_f, out_f, b)
        weights += w
        acts += a
    flops += 4.0 * heads * hd * (pairs + decode_ctx)
    kv = decode_attention_bytes(decode_ctx + prefill_ctx, kv_heads, hd, b)  # read
    kv += decode_attention_bytes(t, kv_heads, hd, b)  # written
    acts += b * t * heads * hd * 2  # attention reads q, writes o
    acts += b * t * h * 2 * 2  # two RMSNorms: read and write [t, h]
    acts += b * t * inter * 3  # silu(gate) * up: read 2, write 1
    acts += b * t * h * 3 * 2  # two residual adds: read 2, write 1
    weights += b * 2 * h  # norm weights
    layers = model_config.num_hidden_layers
    flops, weights, kv, acts = flops * layers, weights * layers, kv * layers, acts * layers
    vocab = shapes.lm_head[1]
    flops += linear_flops(sampled, h, vocab)
    weights += b * h * vocab + b * h  # LM head, final norm
    acts += b * t * h  # embedding rows
    acts += b * t * h * 2  # final norm
    acts += b * sampled * h + 4 * sampled * vocab  # LM head input, float32 logits
    return IterationCost(flops, weights, kv, acts)


def ideal_time(batch, model_config, rates: DeviceRates, dtype_bytes: int = 2, tp: int = 1) -> float:
    """Roofline time of ``batch`` (ScheduledBatch or IterationRecord) on the measured device."""
    return iteration_cost(batch, model_config, dtype_bytes, tp).ideal_time(rates)


# --- measuring the device ------------------------------------------------------------------
def measure_device_rates(device="cpu", dtype=None, matmul_size: int | None = None,
                         copy_bytes: int | None = None, repeats: int = 5) -> DeviceRates:
    """Best-of-``repeats`` GEMM FLOP rate and copy bandwidth of ``device`` in ``dtype``.

    Defaults: a 8192^3 GEMM and a 1 GiB copy on CUDA (bf16), 512^3 and 64 MiB on CPU
    (float32), small enough for tests.
    """
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = matmul_size or (8192 if cuda else 512)
    nbytes = copy_bytes or ((1 << 30) if cuda else (64 << 20))
    a = torch.randn(n, n, device=device).to(dtype)
    b_ = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)

    def best(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return min(times)

    t_mm = best(lambda: torch.matmul(a, b_, out=out))
    t_cp = best(lambda: dst.copy_(src))
    return DeviceRates(matmul_flops=2.0 * n ** 3 / t_mm, copy_bytes_per_s=2.0 * nbytes / t_cp,
                       device=str(device), dtype=str(dtype).removeprefix("torch."))


# --- reporting ------------------------------------------------------------------------------
def roofline_report(records: list[IterationRecord], model_config, rates: DeviceRates, dtype_bytes: int = 2,
                    tp: int = 1, decode_heavy: int = 64) -> dict:
    """Efficiency (ideal / measured) of every iteration and the run's utilisation.

    Measured time is the device time where the engine recorded one (``gpu``) and the
    iteration's duration (``wall``: step start to sampled tokens on the host). MFU and
    MBU: total FLOPs (bytes) over total measured time times the matmul rate (copy rate).
    """
    rows = []
    tot = {"flops": 0.0, "bytes": 0.0, "wall": 0.0, "gpu": 0.0}
    for r in records:
        cost = iteration_cost(r, model_config, dtype_bytes, tp)
        ideal = cost.ideal_time(rates)
        row = {"iteration": r.iteration, "kind": r.kind, "num_decodes": r.num_decodes, "num_tokens": r.num_tokens,
               "bound": cost.bound(rates), "ideal_s": ideal, "wall_s": r.duration, "gpu_s": r.gpu_time,
               "efficiency_wall": ideal / r.duration if r.duration > 0 else None,
               "efficiency_gpu": ideal / r.gpu_time if r.gpu_time else None}
        rows.append(row)
        tot["flops"] += cost.flops
        tot["bytes"] += cost.bytes
        tot["wall"] += r.duration
        tot["gpu"] += r.gpu_time or 0.0

    def effs(select) -> dict:
        chosen = [row for row in rows if select(row)]
        return {"wall": distribution(x["efficiency_wall"] for x in chosen),
                "gpu": distribution(x["efficiency_gpu"] for x in chosen)}

    out = {
        "rates": rates.to_json(),
        "by_kind": {k: effs(lambda x, k=k: x["kind"] == k) for k in ("decode", "prefill", "hybrid")},
        f"decode_heavy_{decode_heavy}plus": effs(lambda x: x["kind"] == "decode" and x["num_decodes"] >= decode_heavy),
        "total_flops": tot["flops"], "total_bytes": tot["bytes"],
        "mfu_wall": tot["flops"] / (tot["wall"] * rates.matmul_flops) if tot["wall"] else None,
        "mbu_wall": tot["bytes"] / (tot["wall"] * rates.copy_bytes_per_s) if tot["wall"] else None,
        "mfu_gpu": tot["flops"] / (tot["gpu"] * rates.matmul_flops) if tot["gpu"] else None,
        "mbu_gpu": tot["bytes"] / (tot["gpu"] * rates.copy_bytes_per_s) if tot["gpu"] else None,
    }
    return {"summary": out, "iterations": rows}


def format_roofline(summary: dict) -> str:
    """Two lines: measured rates, then median efficiency per kind and the run's MFU/MBU."""
    r = summary["rates"]

    def pct(x) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    kinds = ", ".join(f"{k} {pct(d['wall']['p50'])}" for k, d in summary["by_kind"].items() if d["wall"]["count"])
    return (f"roofline: {r['device']} {r['dtype']} GEMM {r['matmul_flops'] / 1e12:.1f} TFLOP/s, copy "
            f"{r['copy_bytes_per_s'] / 1e9:.0f} GB/s\n"
            f"median efficiency (ideal/wall) {kinds or '-'}; MFU {pct(summary['mfu_wall'])}, "
            f"MBU {pct(summary['mbu_wall'])} (wall)"
            + (f", MFU {pct(summary['mfu_gpu'])}, MBU {pct(summary['mbu_gpu'])} (device time)"
               if summary["mfu_gpu"] is not None else ""))
