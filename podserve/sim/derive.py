"""Derive a device profile for any model shape without running it: measured GEMMs from an
imported (Vidur) profile plus roofline-synthesised attention and assumed CPU overhead.

This is how podserve gets "H100 profiles" without an H100: Vidur's sample measures
Llama-2-7B's GEMMs on an H100 at TP 1/2/4/8 and H100 DGX collectives; the fitted
roofline-feature predictors carry those measurements to other shapes (e.g. Llama-3-70B).
The sample has no attention timings, so attention rows are *synthesised* from the
roofline with the efficiency factors below, and the per-iteration CPU overhead is an
assumption. ``meta.json`` records all of this under ``derivation``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from podserve.sim.profile_io import Profile, base_meta
from podserve.sim.roofline import decode_attention_bytes, prefill_attention_quantities
from podserve.sim.vidur_import import import_mlp, import_network

VIDUR_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vidur-profiles"


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet peaks and the fraction of them attention kernels reach (assumptions)."""

    name: str
    peak_flops: float
    """Dense bf16 tensor-core FLOP/s."""
    peak_bw: float
    """HBM bytes/s."""
    memory_bytes: int
    prefill_efficiency: float = 0.5
    """FlashAttention-2 forward reaches ~50% of peak on H100 at long sequences."""
    decode_efficiency: float = 0.7
    """Paged decode kernels stream KV at ~70% of HBM bandwidth."""
    kernel_latency_s: float = 8e-6
    """Launch + tail latency per attention kernel."""
    overhead_s: float = 1.5e-3
    """Assumed host time per iteration (scheduler + input preparation)."""
    overhead_per_seq_s: float = 8e-6


H100 = DeviceSpec("NVIDIA H100 80GB HBM3 (SXM)", 989e12, 3.35e12, 80 * 10**9)
DEVICES = {"h100": H100}


def synth_attention(config, spec: DeviceSpec, dtype_bytes: int = 2) -> tuple[list[dict], list[dict]]:
    """Roofline attention rows (one layer, tp=1) over a prefill and a decode grid."""
    H, Hkv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    prefill = []
    for q in (16, 64, 128, 256, 512, 1024, 2048, 4096):
        for kv in (q, q + 256, q + 1024, q + 4096, 8192):
            if kv < q:
                continue
            flops, _, nbytes = prefill_attention_quantities(q, kv, H, Hkv, hd, dtype_bytes)
            t = max(flops / (spec.prefill_efficiency * spec.peak_flops), nbytes / spec.peak_bw) + spec.kernel_latency_s
            prefill.append({"q_len": q, "kv_len": kv, "time_s": t})
    decode = []
    rng = np.random.default_rng(0)
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        for ctx in (128, 512, 1024, 2048, 4096, 8192):
            lens = rng.integers(max(1, ctx // 2), ctx + 1, b)  # ragged, so sum and max differ
            nbytes = decode_attention_bytes(int(lens.sum()), Hkv, hd, dtype_bytes)
            t = nbytes / (spec.decode_efficiency * spec.peak_bw) + spec.kernel_latency_s + 0.1e-6 * b
            decode.append({"batch_size": b, "sum_kv": int(lens.sum()), "max_kv": int(lens.max()), "time_s": t})
    return prefill, decode


def derive_profile(model_name: str, config, device: str = "h100", vidur_dir: Path = VIDUR_DIR,
                   compute_model: str = "meta-llama/Llama-2-7b-hf", node: str = "h100_dgx") -> Profile:
    """A Profile of ``config`` on ``device`` derived from Vidur's sample plus the roofline."""
    spec = DEVICES[device]
    _, linear, elementwise = import_mlp(vidur_dir / "compute" / device / compute_model / "mlp.csv")
    all_reduce, send_recv = import_network(vidur_dir / "network" / node)
    prefill, decode = synth_attention(config, spec)
    overhead = [{"num_seqs": b, "num_tokens": t, "num_prefills": p,
                 "time_s": spec.overhead_s + spec.overhead_per_seq_s * b}
                for b in (1, 8, 32, 128, 256) for t, p in ((b, 0), (b + 512, 1), (b + 2048, 2))]
    meta = base_meta(
        device=device, device_name=spec.name, model_name=model_name, model_config=config, dtype="bfloat16",
        dtype_bytes=2, attention="flash (roofline-synthesised)", source="derived",
        device_memory_bytes=spec.memory_bytes, gpu_memory_utilization=0.9,
        derivation={
            "linear, elementwise": f"measured: Vidur {compute_model} mlp.csv on {device} (TP 1/2/4/8), extrapolated by roofline features",
            "all_reduce, send_recv": f"measured: Vidur network/{node}",
            "attention": (f"synthesised: max(FLOPs / ({spec.prefill_efficiency} x {spec.peak_flops:.3g}), bytes / {spec.peak_bw:.3g}) + "
                          f"{spec.kernel_latency_s * 1e6:.0f} us (prefill); bytes / ({spec.decode_efficiency} x BW) + {spec.kernel_latency_s * 1e6:.0f} us (decode)"),
            "cpu_overhead": f"assumed: {spec.overhead_s * 1e3:.1f} ms + {spec.overhead_per_seq_s * 1e6:.0f} us per sequence",
            "lm_head": "not in Vidur's sample: predicted with the gate_up GEMM model at the LM head's shape",
        },
    )
    tables = {"linear": [{k: v for k, v in r.items() if k != "tp"} for r in linear], "elementwise": elementwise,
              "attention_prefill": prefill, "attention_decode": decode, "cpu_overhead": overhead,
              "all_reduce": all_reduce, "send_recv": send_recv}
    return Profile(meta, tables)
