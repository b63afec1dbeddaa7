"""Virtual KV (vAttention) on CUDA: driver latencies, growth steps, hiding, and equality.

Sections (all by default; pick with --sections):
  micro     cuMemMap+cuMemSetAccess / cuMemUnmap latency per 2 MiB page, one page per call
            and runs of pages per call; cuMemCreate cost of the start-up pool.
  growth    one request growth step with Llama-3-8B KV shapes (32 layers x K,V: one page
            of the accounting = 64 driver mappings of 2 MiB = 1024 tokens), map and unmap.
  hiding    a GPU "iteration" (bf16 matmuls) alone, after a synchronous growth step, and
            while the growth step runs on the background mapping thread.
  equality  greedy tokens of a random-weight Llama on the device with --kv virtual
            (synchronous and background mapping) versus --kv paged, under a page budget
            that forces preemption, slot reuse and reclamation; plus step times.

Run: ``python benchmarks/vmm.py --device cuda --out vmm.json``. The equality section also
runs on CPU (``--device cpu --sections equality``). Only the engine's mechanism parts are
imported (no tokenizer, no model files).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import torch

from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from podserve.core.batch import ExecutorOutput
from podserve.core.kv.paged import BlockManager
from podserve.core.scheduler import make_scheduler
from podserve.executor.model_runner import ModelRunner
from podserve.memory.virtual_pool import VirtualKVPool
from podserve.model.config import LlamaConfig
from podserve.request import Request, SamplingParams

MiB = 1 << 20
LLAMA3_8B_KV = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
# Small enough to run in seconds, KV shaped like Llama-3-8B per layer (8 x 128 heads):
# 2 KiB per token and layer in bf16/fp16, 4 KiB in fp32.
EQ_MODEL = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096, eos_token_id=2)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summarize(xs: list[float]) -> dict:
    """Microseconds: median, p90, mean."""
    return {"median_us": statistics.median(xs) * 1e6, "p90_us": pct(xs, 0.9) * 1e6, "mean_us": statistics.mean(xs) * 1e6, "n": len(xs)}


def micro(device: torch.device) -> dict:
    from podserve.memory.vmm_cuda import CudaVirtualMemory

    gran = CudaVirtualMemory.granularity(device)
    n = 256
    t0 = time.perf_counter()
    vm = CudaVirtualMemory(size=n * gran, page_bytes=gran, num_physical_pages=n, device=device)
    create_s = time.perf_counter() - t0
    out = {"granularity_bytes": gran, "pool_create_s_for_256_pages": create_s}
    try:
        # Zero-copy view works over unmapped memory; then check a mapped page round-trips.
        t = vm.tensor(0, (n, gran // 2), torch.float16)  # [pages, halves per page]
        vm.map(0, 1)
        t[0].fill_(3.0)
        torch.cuda.synchronize()
        assert float(t[0, -1]) == 3.0
        vm.unmap(0, 1)
        maps, unmaps = [], []
        for rnd in range(3):
            for p in range(n):
                s = time.perf_counter()
                vm.map(p * gran, 1)
                maps.append(time.perf_counter() - s)
            for p in range(n):
                s = time.perf_counter()
                vm.unmap(p * gran, 1)
                unmaps.append(time.perf_counter() - s)
        out["map_1_page"] = summarize(maps)
        out["unmap_1_page"] = summarize(unmaps)
        for run in (8, 64):
            m, u = [], []
            for rnd in range(5):
                for first in range(0, n, run):
                    s = time.perf_counter()
                    vm.map(first * gran, run)
                    m.append((time.perf_counter() - s) / run)
                for first in range(0, n, run):
                    s = time.perf_counter()
                    vm.unmap(first * gran, run)
                    u.append((time.perf_counter() - s) / run)
            out[f"map_per_page_in_runs_of_{run}"] = summarize(m)
            out[f"unmap_per_page_in_runs_of_{run}"] = summarize(u)
    finally:
        del t
        vm.close()
    return out


def growth(device: torch.device) -> dict:
    cache = CacheConfig(kv_layout="virtual", num_blocks=16, kv_background_map=False)
    t0 = time.perf_counter()
    pool = VirtualKVPool.create(LLAMA3_8B_KV, cache, torch.bfloat16, device, max_batch=8, max_model_len=8192)
    create_s = time.perf_counter() - t0
    out = {"tokens_per_page": pool.tokens_per_page, "page_bytes": pool.page_bytes, "driver_mappings_per_page": 2 * pool.num_layers,
           "pool_create_s": create_s, "physical_bytes": pool.num_pages * 2 * pool.num_layers * pool.page_bytes,
           "reserved_bytes": pool.memory.size}
    maps, unmaps = [], []
    try:
        for rnd in range(2):
            for slot in range(2):
                for n in range(1, 9):  # a request growing 1024 tokens at a time to 8192
                    s = time.perf_counter()
                    pool._resize(slot, n)
                    maps.append(time.perf_counter() - s)
            for slot in range(2):
                s = time.perf_counter()
                pool._resize(slot, 0)
                unmaps.append((time.perf_counter() - s) / 8)
        out["growth_step_map"] = summarize(maps)
        out["growth_step_unmap_per_page"] = summarize(unmaps)
    finally:
        pool.close()
    return out


def hiding(device: torch.device) -> dict:
    """Step time of a GPU iteration alone, with a synchronous growth step before it, and
    with the growth step on the background thread while it computes."""
    cache = CacheConfig(kv_layout="virtual", num_blocks=16, kv_background_map=True)
    pool = VirtualKVPool.create(LLAMA3_8B_KV, cache, torch.bfloat16, device, max_batch=8, max_model_len=8192)
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)

    def iteration():
        x = a
        for _ in range(12):  # ~ a few ms of matmul: one decode step's order of magnitude
            x = x @ w
        torch.cuda.synchronize()

    from podserve.core.kv.virtual import MemoryPlan

    res: dict[str, list[float]] = {"compute_only": [], "sync_map_then_compute": [], "background_map_during_compute": []}
    try:
        for _ in range(3):
            iteration()
        for rnd in range(12):
            slot = rnd % 8
            s = time.perf_counter()
            iteration()
            res["compute_only"].append(time.perf_counter() - s)
            s = time.perf_counter()
            pool.apply(MemoryPlan(required={slot: 1}, ahead={slot: 1}))
            iteration()
            res["sync_map_then_compute"].append(time.perf_counter() - s)
            s = time.perf_counter()
            pool.apply(MemoryPlan(required={slot: 1}, ahead={slot: 2}))  # page 2 in the background
            iteration()
            pool.mapped_pages(slot)  # join: the mapping must have finished within the step
            res["background_map_during_compute"].append(time.perf_counter() - s)
            pool.apply(MemoryPlan(required={slot: 0}, ahead={slot: 0}))
        return {k: summarize(v) for k, v in res.items()}
    finally:
        pool.close()


def run_engine(device: torch.device, dtype: str, cache: CacheConfig, lengths, max_tokens: int, repeat: int = 1):
    """Drive scheduler + runner as Engine.step does; returns (tokens per pass, stats)."""
    sched_cfg = SchedulerConfig(max_num_seqs=4, chunk_size=512, max_model_len=4096)
    config = EngineConfig(device=str(device), dtype=dtype, seed=0, scheduler=sched_cfg, cache=cache)
    runner = ModelRunner(config, EQ_MODEL, None, 4096)
    if cache.kv_layout == "virtual":
        kv = runner.kv_pool.make_manager(cache.watermark, cache.kv_lookahead if cache.kv_background_map else 0)
    else:
        kv = BlockManager(runner.num_blocks, cache.block_size, cache.watermark)
    sched = make_scheduler(sched_cfg, kv)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, EQ_MODEL.vocab_size) for _ in range(n)] for n in lengths]
    passes, step_times = [], []
    for p in range(repeat):
        reqs = [Request(f"{p}-{i}", ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), 0.0) for i, ids in enumerate(prompts)]
        for r in reqs:
            sched.add_request(r)
        times = []
        while sched.has_unfinished():
            batch = sched.schedule(0.0)
            s = time.perf_counter()
            out = runner.execute(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - s)
            sched.update(batch, out, 0.0)
        passes.append([list(r.output_token_ids) for r in reqs])
        step_times.append(times)
    stats = {"preemptions": sched.num_preemptions, "median_step_ms_per_pass": [statistics.median(t) * 1e3 for t in step_times],
             "steps_per_pass": [len(t) for t in step_times]}
    if cache.kv_layout == "virtual":
        stats.update(slot_reuses=kv.num_slot_reuses, pages_reclaimed=kv.num_pages_unmapped_total, pool=dict(runner.kv_pool.stats),
                     tokens_per_page=runner.kv_pool.tokens_per_page)
        runner.kv_pool.close()
    return passes, stats


def equality(device: torch.device) -> dict:
    dtype = "float32"
    esize = 4
    gran = 4096
    if device.type == "cuda":
        from podserve.memory.vmm_cuda import CudaVirtualMemory

        gran = CudaVirtualMemory.granularity(device)
    bytes_per_token = EQ_MODEL.num_key_value_heads * EQ_MODEL.head_dim * esize
    tokens_per_page = max(gran // bytes_per_token, 64)  # 2 MiB pages on CUDA: 1024 tokens; 64 on CPU
    # 6 requests crossing page boundaries; 4 slots; 6 pages hold fewer than 4 running requests' KV.
    unit = tokens_per_page
    lengths = [unit + unit // 2, unit // 4, 2 * unit - 10, unit // 2, unit + 7, unit // 3]
    max_tokens = 40
    budget = 6
    results = {"tokens_per_page": tokens_per_page, "prompt_lengths": lengths, "max_tokens": max_tokens, "page_budget": budget, "runs": {}}
    ref, st = run_engine(device, dtype, CacheConfig(kv_layout="paged", block_size=tokens_per_page, num_blocks=budget), lengths, max_tokens)
    results["runs"]["paged_same_budget"] = st
    ample, st = run_engine(device, dtype, CacheConfig(kv_layout="paged", block_size=16, num_blocks=4096), lengths, max_tokens)
    results["runs"]["paged_block16_ample"] = st
    results["paged_block16_ample_equal"] = ample[0] == ref[0]
    for name, bg in (("virtual_sync", False), ("virtual_background", True)):
        toks, st = run_engine(device, dtype, CacheConfig(kv_layout="virtual", num_blocks=budget, page_size=tokens_per_page * bytes_per_token, kv_background_map=bg, kv_lookahead=16), lengths, max_tokens)
        results["runs"][name] = st
        results[f"{name}_equal"] = toks[0] == ref[0]
    # Step times with an ample budget: paged vs virtual (sync, background), and a second
    # pass of the same workload whose requests reuse the first pass's mapped pages.
    for name, cache in (
        ("timing_paged", CacheConfig(kv_layout="paged", block_size=16, num_blocks=4096)),
        ("timing_virtual_sync", CacheConfig(kv_layout="virtual", num_blocks=64, page_size=tokens_per_page * bytes_per_token, kv_background_map=False)),
        ("timing_virtual_background", CacheConfig(kv_layout="virtual", num_blocks=64, page_size=tokens_per_page * bytes_per_token, kv_background_map=True, kv_lookahead=16)),
    ):
        toks, st = run_engine(device, dtype, cache, lengths, 64, repeat=2)
        results["runs"][name] = st
        results[f"{name}_pass2_equal_pass1"] = toks[0] == toks[1]
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sections", default="micro,growth,hiding,equality")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
        device = torch.device("cuda", torch.cuda.current_device())
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            results[name] = {"micro": micro, "growth": growth, "hiding": hiding, "equality": equality}[name](device)
        except Exception:  # one broken section must not cost the others (device time is scarce)
            import traceback

            results[name] = {"error": traceback.format_exc()}
        results[name]["section_s"] = time.perf_counter() - t0
        print(name, json.dumps(results[name], indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    eq = results.get("equality", {})
    ok = "error" not in eq and all(v for k, v in eq.items() if k.startswith("virtual") and k.endswith("_equal"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
