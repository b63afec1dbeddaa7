"""podserve end to end on one GPU (issue 6): correctness, roofline, throughput, latency.

Sections, in order of importance, each within what is left of ``--budget-s`` (a section
that cannot fit is skipped and says so; runs stop at the deadline), with the JSON
(``$OUT/gpu_e2e.json``) rewritten after every run so that a timeout still leaves data:

1. correctness: a small random Llama (written as a HF checkpoint) — greedy tokens of the
   CUDA engine (float32; triton and pod backends; CUDA graphs on, and once eager) equal
   the CPU engine's for the first 16 tokens of every prompt, across chunk sizes and
   batch caps; bf16 logits within 3e-2 (relative max) of float32; host-device syncs
   per decode step (``torch.cuda.set_sync_debug_mode``).
2. roofline: the device's bf16 GEMM rate and copy bandwidth; 2048-token prefill
   iterations and decode-only iterations of 128 requests (Llama-3-8B shapes, random
   weights), efficiency = roofline time / measured time; host time per iteration at
   128 decodes with CUDA graphs and without (``--enforce-eager``).
3. offline: output tokens/s on the arxiv trace (all requests at t=0) for each
   ``--schedulers`` x ``--attentions`` pair (sarathi and vllm first, then orca).
4. hf: transformers ``generate`` at ``--hf-batch-size`` on the same requests.
5. online: Poisson arrivals at fractions of each policy's offline request rate: P50/P99
   TTFT, P99 TBT, scheduling delay.

A compact table is printed last. Offline and roofline runs return token ids only
(``detokenize=False``, as transformers' ``generate`` does); online runs detokenize.

Recommended command on one H100 (~6 minutes; the lead's run):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && \\
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && \\
    python3 benchmarks/gpu_e2e.py --device cuda --trace .gpu/arxiv.csv --budget-s 330 --out $OUT

CPU smoke test of the whole script (tiny model, Triton interpreter, a few minutes):

    PYTHONPATH=$PWD python3 benchmarks/gpu_e2e.py --device cpu --budget-s 400 --out /tmp/e2e
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- sizes ------------------------------------------------------------------------------------
@dataclass
class Sizes:
    """Workload sizes: real ones on CUDA, tiny ones for the CPU smoke test."""

    num_requests: int
    max_prompt_tokens: int
    max_output_tokens: int
    prefill_tokens: int  # the roofline section's prefill-only iterations
    num_prefills: int
    decode_batch: int  # the roofline section's decode-heavy batch
    decode_prompt: int
    decode_output: int
    decode_heavy: int  # "decode-heavy" = at least this many decodes
    correctness_prompts: tuple
    correctness_configs: tuple  # (attention, chunk_size, max_num_seqs, scheduler, enforce_eager)
    hf_requests: int
    online_requests: int


CUDA_SIZES = Sizes(
    num_requests=64, max_prompt_tokens=4096, max_output_tokens=512,
    prefill_tokens=2048, num_prefills=6, decode_batch=128, decode_prompt=1024, decode_output=48, decode_heavy=64,
    correctness_prompts=(3, 17, 64, 150, 5, 300, 40, 90),
    correctness_configs=(("triton", 16, 2, "sarathi", False), ("triton", 64, 8, "sarathi", False),
                         ("triton", 4096, 128, "sarathi", False), ("pod", 16, 2, "sarathi", False),
                         ("pod", 64, 8, "sarathi", False), ("pod", 4096, 128, "vllm", False),
                         ("triton", 64, 8, "sarathi", True)),
    hf_requests=64, online_requests=48)

CPU_SIZES = Sizes(
    num_requests=6, max_prompt_tokens=80, max_output_tokens=6,
    prefill_tokens=64, num_prefills=2, decode_batch=8, decode_prompt=24, decode_output=4, decode_heavy=4,
    correctness_prompts=(3, 40, 9),
    correctness_configs=(("triton", 16, 2, "sarathi", False), ("pod", 32, 8, "vllm", False)),
    hf_requests=4, online_requests=5)

TINY_MODEL = dict(num_hidden_layers=2, head_dim=64, num_attention_heads=4, num_key_value_heads=2, hidden_size=128,
                  intermediate_size=256)
"""The correctness model (and the CPU smoke test's model): head_dim 64 as the kernels need."""


# --- bookkeeping ------------------------------------------------------------------------------
class Bench:
    """Arguments, the deadline, the results so far and where they go."""

    def __init__(self, args):
        self.args = args
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget_s
        self.out = Path(args.out) if args.out else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"args": vars(args), "sections": {}}
        self.cuda = args.device.startswith("cuda")
        self.sizes = CUDA_SIZES if self.cuda else CPU_SIZES
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_e2e_"))
        self.tiny_path = None
        self.rates = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def section(self, name: str) -> dict:
        return self.results["sections"].setdefault(name, {})

    def save(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.t0
        if self.out:
            path = self.out / "gpu_e2e.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=1, default=str))
            tmp.replace(path)

    def stop_rule(self):
        """For run_workload: abort the run once the budget is spent."""
        deadline = self.deadline
        return lambda now, requests: "budget spent" if now > deadline else None

    def tiny_model(self) -> str:
        if self.tiny_path is None:
            from tests.engine.tiny_model import write_tiny_llama

            path = self.tmp / "tiny-llama"
            write_tiny_llama(path, seed=11, **TINY_MODEL)
            self.tiny_path = str(path)
        return self.tiny_path

    def model(self) -> str:
        return self.args.model if self.cuda else self.tiny_model()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_memory(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def compiled() -> dict:
    from podserve.kernels.utils import compiled_variants

    return compiled_variants()


def delta(before: dict, after: dict) -> dict:
    return {k: (after[k] - before[k]) for k in after if after.get(k) is not None and before.get(k) is not None}


def make_engine(b: Bench, *, scheduler: str, attention: str, model: str | None = None, dtype: str = "auto",
                chunk_size: int | None = None, max_num_seqs: int = 128, enforce_eager: bool = False,
                max_model_len: int | None = None, max_num_batched_tokens: int | None = None, kv: str = "paged"):
    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine

    config = EngineConfig(
        model=model or b.model(), device=b.args.device, dtype=dtype, attention=attention,
        max_model_len=max_model_len or (b.args.max_model_len if b.cuda else 1024), enforce_eager=enforce_eager,
        cuda_graph_max_tokens=b.args.cuda_graph_max_tokens,
        scheduler=SchedulerConfig(policy=scheduler, chunk_size=chunk_size or b.args.chunk_size,
                                  max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        cache=CacheConfig(block_size=16, gpu_memory_utilization=b.args.gpu_memory_utilization, kv_layout=kv),
    )
    t0 = time.perf_counter()
    engine = Engine(config)
    runner = engine.runner
    info = {"startup_s": time.perf_counter() - t0, "kv_blocks": engine.kv.num_blocks,
            "activation_bytes": runner.activation_bytes, "cuda_graphs": runner.graphs is not None,
            "graph_capture_s": runner.graphs.capture_s if runner.graphs is not None else None,
            "piecewise_graphs": runner.hybrid_graphs.num_graphs if runner.hybrid_graphs is not None else 0,
            "piecewise_capture_s": runner.hybrid_graphs.capture_s if runner.hybrid_graphs is not None else None,
            "startup_errors": runner.startup_errors}
    return engine, info


def run(b: Bench, engine, workload, *, detokenize: bool = False) -> dict:
    """One workload through the engine: throughput, latencies, roofline, recompiles."""
    from podserve.bench.roofline import roofline_report
    from podserve.bench.runner import run_workload

    before = compiled()
    r = run_workload(engine, workload, detokenize=detokenize, stop_rule=b.stop_rule())
    after = compiled()
    s = r.collector.summary()
    done = r.collector.completed()
    out_tokens = sum(x.num_output_tokens for x in done)
    in_tokens = sum(x.num_prompt_tokens for x in done)
    its = r.collector.iterations
    res = {
        "wall_s": r.wall_s, "requests": len(workload), "completed": len(done), "stopped_early": r.stopped_early,
        "output_tok_s": out_tokens / r.wall_s, "total_tok_s": (in_tokens + out_tokens) / r.wall_s,
        "requests_per_s": len(done) / r.wall_s, "iterations": len(its),
        "preemptions": s["num_preemptions"], "recompiles": delta(before, after),
        "ttft": s["ttft"], "tbt": s["tbt"], "scheduling_delay": s["scheduling_delay"],
        "iteration_stats": {k: v for k, v in s["iterations"].items() if k != "piggyback"},
    }
    if b.rates is not None and its:
        dtype_bytes = engine.runner.model.embed_tokens.weight.element_size()
        rep = roofline_report(its, engine.model_config, b.rates, dtype_bytes, decode_heavy=b.sizes.decode_heavy)
        res["roofline"] = rep["summary"]
        res["_rows"] = rep["iterations"]
    res["_records"] = its
    return res


def strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


# --- 1. correctness ------------------------------------------------------------------------
def section_correctness(b: Bench) -> None:
    import random
    import warnings

    import torch

    from podserve import LLM, SamplingParams

    sec = b.section("correctness")
    path = b.tiny_model()
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in b.sizes.correctness_prompts]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    def tokens(llm):
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    ref = tokens(LLM(path, device="cpu", dtype="float32", attention="torch", chunk_size=4096, max_num_seqs=128,
                     num_kv_blocks=KV_BLOCKS))
    sec["reference"] = "CPU engine, torch backend, float32"
    sec["greedy"] = []
    all_match = True
    stop_at = time.perf_counter() + 0.4 * b.left()  # the greedy sweep's share of the budget
    for attention, chunk, seqs, scheduler, eager in b.sizes.correctness_configs:
        if time.perf_counter() > stop_at or b.left() < 5:
            sec["greedy"].append({"attention": attention, "chunk_size": chunk, "skipped": "budget"})
            continue
        t0 = time.perf_counter()
        llm = LLM(path, device=b.args.device, dtype="float32", attention=attention, chunk_size=chunk,
                  max_num_seqs=seqs, scheduler=scheduler, enforce_eager=eager, num_kv_blocks=KV_BLOCKS)
        runner = llm.engine.runner
        replays, pieces = [], []
        if runner.graphs is not None:
            real = runner.graphs.replay
            runner.graphs.replay = lambda bucket, n, real=real: replays.append(bucket) or real(bucket, n)
        if runner.hybrid_graphs is not None and runner.hybrid_graphs.captured:
            real_run = runner.hybrid_graphs.run
            runner.hybrid_graphs.run = lambda inputs, real_run=real_run: pieces.append(1) or real_run(inputs)
        got = tokens(llm)
        first_mismatch = [next((i for i, (x, y) in enumerate(zip(g, r)) if x != y), None) for g, r in zip(got, ref)]
        matching = sum(m is None and len(g) == len(r) for m, g, r in zip(first_mismatch, got, ref))
        all_match &= matching == len(prompts)
        sec["greedy"].append({"attention": attention, "chunk_size": chunk, "max_num_seqs": seqs, "scheduler": scheduler,
                              "enforce_eager": eager, "prompts_matching": matching, "prompts": len(prompts),
                              "first_mismatch": first_mismatch, "graph_replays": len(replays),
                              "piecewise_steps": len(pieces),
                              "startup_errors": runner.startup_errors, "seconds": time.perf_counter() - t0})
        log(f"correctness {attention} chunk={chunk} seqs={seqs} {scheduler}{' eager' if eager else ''}: "
            f"{matching}/{len(prompts)} prompts match, {len(replays)} graph replays, {len(pieces)} piecewise steps")
        del llm, runner
        free_memory(b.cuda)
        b.save()
    sec["greedy_all_match"] = all_match

    # bf16 logits against float32, same weights: one prefill of 40 tokens plus two decodes.
    # bf16 keeps 8 significant bits, and this random model's logits move by a few percent
    # under it whatever the kernels; the torch backend's own bf16 error is the yardstick.
    ids = [rng.randrange(2, 258) for _ in range(40)]
    errors = {}
    for attention in (("triton", "torch") if b.cuda else ("torch",)):
        logits = [bf16_logits(b, path, attention, dtype, ids) for dtype in ("float32", "bfloat16")]
        errors[attention] = ((logits[0] - logits[1]).abs().max() / logits[0].abs().max()).item()
    err = errors["triton" if b.cuda else "torch"]
    sec["bf16_logits_rel_max_err"] = errors
    sec["bf16_ok"] = err < BF16_TOL and err <= 2 * errors["torch"] + 1e-3
    log(f"correctness bf16 vs float32 logits, relative max error: {json.dumps(errors)} (tolerance {BF16_TOL})")

    if b.cuda:  # host-device syncs per decode step, graphs on and off
        syncs = {}
        for eager in (False, True):
            llm = LLM(path, device=b.args.device, attention="triton", max_num_seqs=8, enforce_eager=eager,
                      num_kv_blocks=KV_BLOCKS)
            engine = llm.engine
            for n in (5, 9, 30):
                engine.add_request(list(range(2, 2 + n)), SamplingParams(max_tokens=14, temperature=0, ignore_eos=True))
            for _ in range(3):
                engine.step()
            torch.cuda.synchronize()
            steps = 6
            torch.cuda.set_sync_debug_mode(1)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    for _ in range(steps):
                        engine.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
            msgs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
            syncs["eager" if eager else "graphs"] = {"per_step": len(msgs) / steps, "messages": sorted(set(msgs))[:5]}
            del llm, engine
            free_memory(True)
        sec["syncs_per_decode_step"] = syncs
        log(f"correctness syncs per decode step: {json.dumps({k: v['per_step'] for k, v in syncs.items()})}")
    sec["passed"] = all_match and sec["bf16_ok"]
    sec["compiled_variants"] = compiled()


KV_BLOCKS = 4096
"""KV blocks of the tiny correctness engines (not the whole GPU: seven engines come and go)."""
BF16_TOL = 5e-2
"""Relative max error of bf16 logits vs float32 accepted by the correctness section."""


def bf16_logits(b: Bench, path: str, attention: str, dtype: str, ids: list[int]):
    """Logits (CPU, float32) of a hybrid batch: two decodes with cached context plus a prefill."""
    import torch

    from podserve import LLM, SamplingParams
    from podserve.core.batch import ScheduledBatch, ScheduledSeq

    llm = LLM(path, device=b.args.device, dtype=dtype, attention=attention, block_size=16, enforce_eager=True,
              num_kv_blocks=KV_BLOCKS)
    runner = llm.engine.runner
    p = SamplingParams()
    with torch.inference_mode():
        for batch in (ScheduledBatch(0, [ScheduledSeq("d1", ids[:20], 0, True, False, [0, 1], p, 0),
                                         ScheduledSeq("d2", ids[:3], 0, True, False, [2], p, 0)], num_decodes=0),
                      ScheduledBatch(1, [ScheduledSeq("d1", [5], 20, False, True, [0, 1], p, 1),
                                         ScheduledSeq("d2", [7], 3, False, True, [2], p, 1),
                                         ScheduledSeq("r", ids, 0, True, True, [3, 4, 5], p, 0)], num_decodes=2)):
            tok, pos, meta, sample_idx = runner.prepare(batch)
            runner.backend.prepare(meta)
            hidden = runner.model(tok, pos, runner.kv_pool.caches, meta, runner.backend)
        out = runner.model.compute_logits(hidden[sample_idx]).float().cpu()
    del llm, runner
    free_memory(b.cuda)
    return out


# --- 2. roofline and host overhead ------------------------------------------------------------
def section_roofline(b: Bench) -> None:
    from podserve.bench.workloads import WorkloadRequest

    sec = b.section("roofline")
    z = b.sizes
    sec["rates"] = b.rates.to_json()
    rows_out = []
    for eager in (False, True):
        if eager and b.left() < 60 and b.cuda:
            sec["eager"] = {"skipped": "budget"}
            break
        if not b.cuda and eager:
            continue  # no CUDA graphs on CPU: nothing to compare
        key = "eager" if eager else "graphs"
        res = sec.setdefault(key, {})
        engine, info = make_engine(b, scheduler="vllm", attention="triton", enforce_eager=eager,
                                   max_num_seqs=z.decode_batch)
        res["engine"] = info
        log(f"roofline[{key}]: engine up in {info['startup_s']:.1f}s, {info['kv_blocks']} KV blocks")
        if not eager:  # prefill-only iterations of prefill_tokens, one request at a time
            spacing = 0.4 if b.cuda else 1.0
            wl = [WorkloadRequest(i * spacing, z.prefill_tokens, 1) for i in range(z.num_prefills)]
            r = run(b, engine, wl)
            pre = [x for x in r.get("_rows", []) if x["kind"] == "prefill" and x["num_tokens"] == z.prefill_tokens]
            res["prefill"] = {"tokens": z.prefill_tokens, "iterations": len(pre),
                              "efficiency_wall_median": median(x["efficiency_wall"] for x in pre),
                              "efficiency_gpu_median": median(x["efficiency_gpu"] for x in pre),
                              "wall_s_median": median(x["wall_s"] for x in pre),
                              "ideal_s": pre[0]["ideal_s"] if pre else None,
                              "bound": pre[0]["bound"] if pre else None, "recompiles": r["recompiles"]}
            rows_out += [{"run": f"{key}-prefill", **x} for x in pre]
            log(f"roofline prefill {z.prefill_tokens}: efficiency {res['prefill']['efficiency_wall_median']} (wall), "
                f"{res['prefill']['efficiency_gpu_median']} (device)")
            b.save()
        # decode-heavy: vllm prefills everyone first, then decode_batch decodes run together
        wl = [WorkloadRequest(0.0, z.decode_prompt, z.decode_output) for _ in range(z.decode_batch)]
        r = run(b, engine, wl)
        rows = r.get("_rows", [])
        heavy = [x for x in rows if x["kind"] == "decode" and x["num_decodes"] >= z.decode_heavy]
        full = [x for x in rows if x["kind"] == "decode" and x["num_decodes"] == z.decode_batch]
        res["decode"] = {
            "batch": z.decode_batch, "context": z.decode_prompt, "decode_heavy_iterations": len(heavy),
            "efficiency_wall_median": median(x["efficiency_wall"] for x in heavy),
            "efficiency_gpu_median": median(x["efficiency_gpu"] for x in heavy),
            "ideal_s_median": median(x["ideal_s"] for x in heavy),
            "wall_s_median": median(x["wall_s"] for x in heavy),
            "gpu_s_median": median(x["gpu_s"] for x in heavy),
            "bound": heavy[0]["bound"] if heavy else None,
            "iterations_at_full_batch": len(full), "recompiles": r["recompiles"],
            "output_tok_s": r["output_tok_s"],
        }
        res["host"] = host_overhead(r["_records"], z.decode_batch)
        rows_out += [{"run": f"{key}-decode", **x} for x in heavy]
        log(f"roofline[{key}] decode x{z.decode_batch}: efficiency {res['decode']['efficiency_wall_median']} (wall), "
            f"{res['decode']['efficiency_gpu_median']} (device); host {json.dumps(res['host'])}")
        del engine
        free_memory(b.cuda)
        b.save()
    if b.out and rows_out:
        import csv

        with open(b.out / "roofline_iterations.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
            w.writeheader()
            w.writerows(rows_out)


def host_overhead(records, batch: int) -> dict:
    """Host vs device time of the decode-only iterations of exactly ``batch`` sequences (medians).

    ``cpu_ms``: step start (scheduling included) to device work enqueued; ``gpu_ms``: device
    time (CUDA events); ``period_ms``: this iteration's start to the next one's (everything
    the host does per step, token bookkeeping included); ``idle_ratio``: (period - device
    time) / device time, the share of time the device waits for the host.
    """
    pairs = [(a, nxt) for a, nxt in zip(records, records[1:])
             if a.kind == "decode" and a.num_decodes == batch and nxt.start - a.start < 2 * a.duration + 0.01]
    if not pairs:
        return {"iterations": 0}
    gpu = [a.gpu_time for a, _ in pairs]
    out = {"iterations": len(pairs),
           "cpu_ms": median(a.cpu_time for a, _ in pairs) * 1e3,
           "period_ms": median(nxt.start - a.start for a, nxt in pairs) * 1e3,
           "wall_ms": median(a.duration for a, _ in pairs) * 1e3}
    if all(g is not None for g in gpu):
        out["gpu_ms"] = median(gpu) * 1e3
        out["idle_ms"] = median(nxt.start - a.start - a.gpu_time for a, nxt in pairs) * 1e3
        out["idle_ratio"] = median((nxt.start - a.start - a.gpu_time) / a.gpu_time for a, nxt in pairs)
        out["cpu_ratio"] = median(a.cpu_time / a.gpu_time for a, _ in pairs)
    return out


# --- 3. offline throughput ----------------------------------------------------------------------
def section_offline(b: Bench, workload) -> None:
    from podserve.bench.workloads import WorkloadRequest

    sec = b.section("offline")
    runs = sec.setdefault("runs", [])
    pairs = [(s, a, "paged") for s in b.args.schedulers.split(",") for a in b.args.attentions.split(",")]
    # vAttention (issue 7): the same policy and kernel over virtual KV, right after its paged twin
    pairs += [(*p.split(":"), "virtual") for p in b.args.virtual_pairs.split(",") if p]
    pairs.sort(key=lambda p: p[0] == "orca")  # sarathi and vllm first
    last = 0.0
    for scheduler, attention, kv in pairs:
        need = 15 + 1.2 * last if b.cuda else 5
        if b.left() < need:
            runs.append({"scheduler": scheduler, "attention": attention, "kv": kv, "skipped": f"budget ({b.left():.0f}s left)"})
            b.save()
            continue
        entry = {"scheduler": scheduler, "attention": attention, "kv": kv}
        try:
            t0 = time.perf_counter()
            engine, info = make_engine(b, scheduler=scheduler, attention=attention, kv=kv)
            entry["engine"] = info
            run(b, engine, [WorkloadRequest(0.0, 64, 4) for _ in range(4)])  # warm-up
            r = run(b, engine, workload)
            entry.update(strip(r))
            last = time.perf_counter() - t0
            log(f"offline {scheduler}+{attention}+{kv}: {r['output_tok_s']:.0f} out tok/s, wall {r['wall_s']:.1f}s, "
                f"{r['iterations']} iterations, recompiles {r['recompiles']}")
            del engine
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-2000:]
            log(f"offline {scheduler}+{attention}+{kv}: ERROR {entry['error']}")
        runs.append(entry)
        free_memory(b.cuda)
        b.save()


# --- 4. transformers baseline ---------------------------------------------------------------------
def section_hf(b: Bench, workload) -> None:
    import torch
    import transformers

    from podserve.bench.runner import fit_to_context
    from podserve.bench.workloads import prompt_token_ids
    from podserve.model.loader import resolve_model

    sec = b.section("hf")
    cfg = resolve_model(b.model()).config
    max_len = b.args.max_model_len if b.cuda else 1024
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, max_position_embeddings=max_len,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False)
    dtype = torch.bfloat16 if b.cuda else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy of 8B weights
    try:
        with torch.device(b.args.device):
            model = transformers.LlamaForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    reqs, _ = fit_to_context(workload[: b.sizes.hf_requests], max_len)
    prompts = prompt_token_ids(reqs, cfg.vocab_size, 0)
    bs = b.args.hf_batch_size if b.cuda else 2
    produced, done, start = 0, 0, time.perf_counter()
    for i in range(0, len(reqs), bs):
        if b.left() < 20 and done:
            break
        chunk, ps = reqs[i:i + bs], prompts[i:i + bs]
        width = max(len(p) for p in ps)
        ids = torch.zeros(len(ps), width, dtype=torch.long, device=b.args.device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(ps):
            ids[r, width - len(p):] = torch.tensor(p, device=b.args.device)
            mask[r, width - len(p):] = 1
        new = max(w.num_output_tokens for w in chunk)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
        produced += sum(w.num_output_tokens for w in chunk)
        done += len(chunk)
    if b.cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    sec.update({"system": f"transformers {transformers.__version__} generate bs={bs}", "batch_size": bs,
                "requests": done, "wall_s": wall, "output_tok_s": produced / wall})
    log(f"hf generate bs={bs}: {sec['output_tok_s']:.0f} out tok/s over {done} requests ({wall:.1f}s)")
    del model
    free_memory(b.cuda)


# --- 5. online latency ------------------------------------------------------------------------------
def section_online(b: Bench) -> None:
    from podserve.bench.workloads import WorkloadConfig, generate

    sec = b.section("online")
    offline = {(r["scheduler"], r["attention"]): r for r in b.section("offline").get("runs", []) if "requests_per_s" in r and r.get("kv", "paged") == "paged"}
    runs = sec.setdefault("runs", [])
    fractions = [float(x) for x in b.args.online_fractions.split(",")]
    fixed = [float(x) for x in b.args.online_rates.split(",")] if b.args.online_rates else None
    for policy in b.args.online_schedulers.split(","):
        choices = [(r["output_tok_s"], a) for (s, a), r in offline.items() if s == policy]
        attention = max(choices)[1] if choices else b.args.attentions.split(",")[0]
        base = offline.get((policy, attention))
        if fixed is not None:
            base = {"requests_per_s": 1.0}  # absolute rates: "fractions" of 1 req/s
        elif base is None:
            runs.append({"scheduler": policy, "skipped": "no offline run to size the rates"})
            continue
        if b.left() < (30 if b.cuda else 10):
            runs.append({"scheduler": policy, "skipped": f"budget ({b.left():.0f}s left)"})
            continue
        engine, info = make_engine(b, scheduler=policy, attention=attention)
        for frac in fixed or fractions:
            qps = frac * base["requests_per_s"]
            per_run = b.left() / max(1, len(fractions)) - 5
            n = int(min(b.sizes.online_requests, max(4, qps * per_run * 0.6)))
            if b.left() < 10 or n < 4:
                runs.append({"scheduler": policy, "attention": attention, "fraction": frac, "skipped": "budget"})
                continue
            wl = generate(WorkloadConfig(num_requests=n, lengths="trace", trace=b.args.trace, arrival="poisson", qps=qps,
                                         max_prompt_tokens=b.sizes.max_prompt_tokens,
                                         max_output_tokens=b.sizes.max_output_tokens, seed=1))
            r = run(b, engine, wl, detokenize=True)
            entry = {"scheduler": policy, "attention": attention, "fraction_of_offline_rate": None if fixed else frac, "qps": qps,
                     "requests": n, "completed": r["completed"], "stopped_early": r["stopped_early"],
                     "ttft_p50": r["ttft"]["p50"], "ttft_p99": r["ttft"]["p99"], "tbt_p50": r["tbt"]["p50"],
                     "tbt_p99": r["tbt"]["p99"], "scheduling_delay_p50": r["scheduling_delay"]["p50"],
                     "scheduling_delay_p99": r["scheduling_delay"]["p99"], "output_tok_s": r["output_tok_s"],
                     "recompiles": r["recompiles"], "engine": info}
            runs.append(entry)
            log(f"online {policy}+{attention} @ {qps:.2f} req/s ({n} req): TTFT p50 {entry['ttft_p50']} p99 "
                f"{entry['ttft_p99']}, TBT p99 {entry['tbt_p99']}")
            b.save()
        del engine
        free_memory(b.cuda)


# --- the table ---------------------------------------------------------------------------------------
def fmt(x, scale=1.0, digits=1) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def print_table(b: Bench) -> None:
    s = b.results["sections"]
    lines = ["", f"podserve gpu_e2e on {b.results.get('device')} ({b.results.get('elapsed_s', 0):.0f}s)"]
    c = s.get("correctness", {})
    if c:
        g = [x for x in c.get("greedy", []) if "prompts" in x]
        lines.append(f"correctness: greedy {sum(x['prompts_matching'] for x in g)}/{sum(x['prompts'] for x in g)} prompts "
                     f"match CPU over {len(g)} configs; bf16 logits rel err {json.dumps(c.get('bf16_logits_rel_max_err'))}; "
                     f"syncs/decode step {json.dumps({k: v['per_step'] for k, v in c.get('syncs_per_decode_step', {}).items()})}; "
                     f"passed={c.get('passed')}")
    r = s.get("roofline", {})
    for key in ("graphs", "eager"):
        x = r.get(key, {})
        if "decode" in x:
            d, h = x["decode"], x.get("host", {})
            lines.append(f"roofline[{key}]: decode x{d['batch']} @ {d['context']} ctx efficiency {fmt(d['efficiency_wall_median'], 100, 0)}% wall / "
                         f"{fmt(d['efficiency_gpu_median'], 100, 0)}% device ({d['bound']}-bound, ideal {fmt(d['ideal_s_median'], 1e3)} ms, "
                         f"wall {fmt(d['wall_s_median'], 1e3)} ms); host {fmt(h.get('cpu_ms'), 1, 2)} ms enqueue, "
                         f"device idle {fmt(h.get('idle_ratio'), 100, 0)}% of device time")
        if "prefill" in x:
            p = x["prefill"]
            lines.append(f"roofline[{key}]: prefill {p['tokens']} tokens efficiency {fmt(p['efficiency_wall_median'], 100, 0)}% wall / "
                         f"{fmt(p['efficiency_gpu_median'], 100, 0)}% device ({p['bound']}-bound)")
    runs = s.get("offline", {}).get("runs", [])
    if runs:
        lines.append(f"{'scheduler':<10}{'attention':<10}{'out tok/s':>10}{'wall s':>8}{'iters':>7}{'TTFT p50':>9}{'TBT p99':>9}"
                     f"{'MFU':>6}{'MBU':>6}{'recomp':>7}")
        for x in runs:
            if "output_tok_s" not in x:
                lines.append(f"{x['scheduler']:<10}{x['attention'] + ('/virt' if x.get('kv') == 'virtual' else ''):<10}  {x.get('skipped') or x.get('error', '')[:70]}")
                continue
            rf = x.get("roofline", {})
            lines.append(f"{x['scheduler']:<10}{x['attention'] + ('/virt' if x.get('kv') == 'virtual' else ''):<10}{x['output_tok_s']:>10.0f}{x['wall_s']:>8.1f}{x['iterations']:>7}"
                         f"{fmt(x['ttft']['p50']):>9}{fmt(x['tbt']['p99'], 1, 3):>9}{fmt(rf.get('mfu_wall'), 100, 0):>6}"
                         f"{fmt(rf.get('mbu_wall'), 100, 0):>6}{sum(x['recompiles'].values()):>7}")
    h = s.get("hf", {})
    if "output_tok_s" in h:
        lines.append(f"{h['system']}: {h['output_tok_s']:.0f} out tok/s ({h['requests']} requests, {h['wall_s']:.1f}s)")
    on = s.get("online", {}).get("runs", [])
    if on:
        lines.append(f"{'online':<18}{'req/s':>7}{'n':>4}{'TTFT p50':>9}{'TTFT p99':>9}{'TBT p99':>9}{'delay p50':>10}")
        for x in on:
            if "qps" not in x:
                lines.append(f"{x['scheduler']:<18}  skipped: {x.get('skipped')}")
                continue
            lines.append(f"{x['scheduler'] + '+' + x['attention']:<18}{x['qps']:>7.2f}{x['requests']:>4}{fmt(x['ttft_p50'], 1, 3):>9}"
                         f"{fmt(x['ttft_p99'], 1, 3):>9}{fmt(x['tbt_p99'], 1, 3):>9}{fmt(x['scheduling_delay_p50'], 1, 3):>10}")
    t = b.results.get("targets")
    if t:
        lines.append("targets: " + "; ".join(f"{k} {v}" for k, v in t.items()))
    print("\n".join(lines), flush=True)


def targets(b: Bench) -> dict:
    """The issue's targets, met or missed, from what was measured (None = not measured)."""
    s = b.results["sections"]
    out = {}
    d = s.get("roofline", {}).get("graphs", {})
    eff = d.get("decode", {}).get("efficiency_wall_median")
    out["decode-heavy >= 75% bandwidth roofline"] = None if eff is None else f"{eff:.0%} {'met' if eff >= 0.75 else 'missed'}"
    eff = d.get("prefill", {}).get("efficiency_wall_median")
    out["2048 prefill >= 60% compute roofline"] = None if eff is None else f"{eff:.0%} {'met' if eff >= 0.6 else 'missed'}"
    runs = {(r["scheduler"], r["attention"]): r for r in s.get("offline", {}).get("runs", []) if "output_tok_s" in r and r.get("kv", "paged") == "paged"}
    st, sp = runs.get(("sarathi", "triton")), runs.get(("sarathi", "pod"))
    if st and sp:
        g = sp["output_tok_s"] / st["output_tok_s"] - 1
        out["POD >= +15% vs sarathi+triton"] = f"{g:+.0%} {'met' if g >= 0.15 else 'missed'}"
    virt = [r for r in s.get("offline", {}).get("runs", []) if "output_tok_s" in r and r.get("kv") == "virtual"]
    for v in virt:
        paged = runs.get((v["scheduler"], v["attention"]))
        if paged:
            out[f"virtual / paged KV, {v['scheduler']}+{v['attention']}"] = f"{v['output_tok_s'] / paged['output_tok_s']:.2f}x"
    hf = s.get("hf", {}).get("output_tok_s")
    if hf and runs:
        best = max(r["output_tok_s"] for r in runs.values())
        out[">= 10x HF generate"] = f"{best / hf:.1f}x {'met' if best >= 10 * hf else 'missed'}"
    ratio = d.get("host", {}).get("idle_ratio")
    out["host overhead at 128 decodes < 10% of device time"] = (
        None if ratio is None else f"{ratio:.0%} {'met' if ratio < 0.1 else 'missed'}")
    return out


# --- main --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test with a tiny model")
    ap.add_argument("--model", default="llama-3-8b", help="preset for the performance sections (CUDA)")
    ap.add_argument("--trace", default=None, help="trace CSV (default: .gpu/arxiv.csv if present, else 'arxiv')")
    ap.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget for all sections (default 330)")
    ap.add_argument("--sections", default="correctness,roofline,offline,hf,online")
    ap.add_argument("--num-requests", type=int, default=None, help="offline requests (default 64 on CUDA)")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--max-prompt-tokens", type=int, default=None)
    ap.add_argument("--max-output-tokens", type=int, default=None)
    ap.add_argument("--schedulers", default="sarathi,vllm,orca")
    ap.add_argument("--attentions", default="triton,pod")
    ap.add_argument("--virtual-pairs", default="sarathi:triton",
                    help="scheduler:attention pairs also run offline over virtual KV (vAttention); '' for none")
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--cuda-graph-max-tokens", type=int, default=1024,
                    help="engines' piecewise CUDA graphs for steps with prefill tokens up to this size (0 = eager)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--online-schedulers", default="sarathi,vllm")
    ap.add_argument("--online-rates", default="",
                    help="absolute Poisson rates (req/s) for every online policy, instead of fractions of its offline rate")
    ap.add_argument("--online-fractions", default="0.5,0.8,0.3", help="Poisson rates as fractions of the offline request rate")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="directory for gpu_e2e.json (default $OUT)")
    args = ap.parse_args()
    if args.trace is None:
        args.trace = str(ROOT / ".gpu" / "arxiv.csv") if (ROOT / ".gpu" / "arxiv.csv").is_file() else "arxiv"
    if not args.device.startswith("cuda"):
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton backends on CPU: the interpreter
    # float32 dots in Triton default to TF32 on NVIDIA; the float32 correctness check wants IEEE.
    # bf16 dots (every performance section) do not depend on this.
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

    import torch

    b = Bench(args)
    z = b.sizes
    for name in ("num_requests", "max_prompt_tokens", "max_output_tokens"):
        if getattr(args, name) is not None:
            setattr(z, name, getattr(args, name))
    res = b.results
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["device"] = torch.cuda.get_device_name() if b.cuda else "cpu"
    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for mod in ("triton", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            versions[mod] = f"unavailable: {e}"
    res["versions"] = versions
    res["env"] = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "TRITON_F32_DEFAULT")}
    log(f"gpu_e2e on {res['device']}, budget {args.budget_s:.0f}s, versions {versions}")

    from podserve.bench.roofline import measure_device_rates
    from podserve.bench.workloads import WorkloadConfig, generate

    try:
        b.rates = measure_device_rates(args.device, torch.bfloat16 if b.cuda else torch.float32)
        res["rates"] = b.rates.to_json()
        log(f"device rates: GEMM {b.rates.matmul_flops / 1e12:.1f} TFLOP/s, copy {b.rates.copy_bytes_per_s / 1e9:.0f} GB/s")
    except Exception as e:  # noqa: BLE001
        res["rates_error"] = f"{type(e).__name__}: {e}"
    free_memory(b.cuda)
    workload = generate(WorkloadConfig(num_requests=z.num_requests, lengths="trace", trace=args.trace, arrival="static",
                                       max_prompt_tokens=z.max_prompt_tokens, max_output_tokens=z.max_output_tokens, seed=0))
    res["workload"] = {"trace": args.trace, "requests": len(workload),
                       "prompt_tokens": sum(w.num_prompt_tokens for w in workload),
                       "output_tokens": sum(w.num_output_tokens for w in workload)}
    b.save()

    minimum = {"correctness": 0, "roofline": 40, "offline": 20, "hf": 45, "online": 25} if b.cuda else {}
    wanted = args.sections.split(",")
    for name in ("correctness", "roofline", "offline", "hf", "online"):
        if name not in wanted:
            continue
        if b.left() < minimum.get(name, 0) or b.left() <= 0:
            b.section(name)["skipped"] = f"budget ({b.left():.0f}s left)"
            log(f"{name}: skipped, {b.left():.0f}s left")
            b.save()
            continue
        if name == "roofline" and b.rates is None:
            b.section(name)["skipped"] = "device rates not measured"
            continue
        t0 = time.perf_counter()
        log(f"{name}: start ({b.left():.0f}s left)")
        try:
            if name == "correctness":
                section_correctness(b)
            elif name == "roofline":
                section_roofline(b)
            elif name == "offline":
                section_offline(b, workload)
            elif name == "hf":
                section_hf(b, workload)
            else:
                section_online(b)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            sec = b.section(name)
            sec["error"] = f"{type(e).__name__}: {e}"
            sec["traceback"] = traceback.format_exc()[-3000:]
            log(f"{name}: ERROR {sec['error']}")
            free_memory(b.cuda)
        b.section(name)["seconds"] = time.perf_counter() - t0
        b.save()
    res["targets"] = targets(b)
    b.save()
    print_table(b)


if __name__ == "__main__":
    main()
