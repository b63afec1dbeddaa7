"""Import Vidur's profile CSV layout (github.com/microsoft/vidur, ``data/profiling``).

Supported: ``compute/<device>/<model>/mlp.csv`` (GEMMs and per-token ops, every tensor
parallel degree in the file) and ``network/<node>/all_reduce.csv`` / ``send_recv.csv``.
Vidur times are milliseconds; podserve's are seconds. Vidur's collective ``size`` is in
bytes. Vidur's attention.csv is not imported (no sample of it is on hand to check the
layout against), so an imported compute profile needs attention tables from elsewhere
(``podserve.sim.derive``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

MS = 1e-3
_MISC = ("input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add", "add")
"""Vidur's per-token ops of one layer; ``add`` is profiled once but a layer has two residual adds."""


def _median(row: dict, name: str) -> float:
    return float(row[f"time_stats.{name}.median"]) * MS


def import_mlp(path: str | Path) -> tuple[dict, list[dict], list[dict]]:
    """Vidur mlp.csv -> (shape dict, linear rows, elementwise rows) at every TP degree in it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "num_tokens" not in rows[0]:
        raise ValueError(f"{path}: not a Vidur mlp.csv (no num_tokens column)")
    linear, elementwise = [], []
    r0 = rows[0]
    n_head, n_kv, h, inter = (int(r0[k]) for k in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd"))
    hd = h // n_head
    gated = r0.get("use_gated_mlp", "True") == "True"
    for r in rows:
        n, tp = int(r["num_tokens"]), int(r["num_tensor_parallel_workers"])
        q_heads, kv_heads, i_tp = n_head // tp, max(1, n_kv // tp), inter // tp
        shapes = {
            "qkv": ("attn_pre_proj", h, (q_heads + 2 * kv_heads) * hd),
            "o": ("attn_post_proj", q_heads * hd, h),
            "gate_up": ("mlp_up_proj", h, (2 if gated else 1) * i_tp),
            "down": ("mlp_down_proj", i_tp, h),
        }
        for op, (vname, in_f, out_f) in shapes.items():
            linear.append({"op": op, "num_tokens": n, "in_features": in_f, "out_features": out_f,
                           "time_s": _median(r, vname), "tp": tp})
        if tp == 1:  # per-token ops shrink with TP only through hidden/tp; keep the unsharded rows
            elementwise.append({"op": "layer_misc", "num_tokens": n, "time_s": sum(_median(r, m) for m in _MISC)})
            elementwise.append({"op": "embed", "num_tokens": n, "time_s": _median(r, "emb")})
    shape = {"num_attention_heads": n_head, "num_key_value_heads": n_kv, "hidden_size": h,
             "intermediate_size": inter, "vocab_size": int(r0["vocab_size"])}
    return shape, linear, elementwise


def import_network(directory: str | Path) -> tuple[list[dict], list[dict]]:
    """Vidur network/<node>/ -> (all_reduce rows, send_recv rows), medians in seconds."""
    directory = Path(directory)
    all_reduce, send_recv = [], []
    ar, sr = directory / "all_reduce.csv", directory / "send_recv.csv"
    if ar.is_file():
        with open(ar, newline="") as f:
            for r in csv.DictReader(f):
                all_reduce.append({"num_workers": int(r["num_workers"]), "size_bytes": int(r["size"]),
                                   "time_s": _median(r, "all_reduce")})
    if sr.is_file():
        with open(sr, newline="") as f:
            for r in csv.DictReader(f):
                # Vidur profiles send_recv within a node (devices_per_node=2) and across nodes
                # (1); pipeline stages of one replica sit on one node, so keep the former.
                if int(r.get("devices_per_node", 2)) >= 2:
                    send_recv.append({"size_bytes": int(r["size"]), "time_s": _median(r, "send_recv")})
    if not all_reduce and not send_recv:
        raise ValueError(f"{directory}: no Vidur all_reduce.csv or send_recv.csv")
    return all_reduce, send_recv


def import_allreduce_benchmark(path: str | Path, one_shot_max_bytes: int | None = None) -> list[dict]:
    """``benchmarks/allreduce.py``'s JSON -> all_reduce rows (seconds, per size), timed the way
    the engine runs them (replayed from CUDA graphs) and through the path the engine's
    ``TPAllReduce`` takes at each size: one-shot over symmetric memory up to
    ``one_shot_max_bytes`` (default: the engine's cap) where it was available, NCCL above."""
    if one_shot_max_bytes is None:
        from podserve.config import ONE_SHOT_MAX_BYTES

        one_shot_max_bytes = ONE_SHOT_MAX_BYTES
    data = json.loads(Path(path).read_text())
    rows = []
    for r in data["us_per_call"]:
        size = int(r["kb"]) << 10
        one_shot = r.get("one_shot_graph_us") if size <= one_shot_max_bytes else None
        us = one_shot if one_shot is not None else r.get("nccl_graph_us", r.get("nccl_eager_us"))
        if us is not None:
            rows.append({"num_workers": int(data["world"]), "size_bytes": size, "time_s": us * 1e-6})
    if not rows:
        raise ValueError(f"{path}: no all-reduce timings (expected benchmarks/allreduce.py output)")
    return rows
