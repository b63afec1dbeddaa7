"""End-to-end engine throughput on one GPU (offline: every request at t=0).

Runs the same arxiv-trace requests (clipped to the context) through podserve for each
--schedulers x --attentions pair on a random-weight preset (Llama-3-8B shapes by default),
and through transformers ``generate`` at --hf-batch-size as the familiar baseline. Writes
JSON under --out and prints a compact table last. Online latency at fixed Poisson rates
is a later addition (issue 6).

    python benchmarks/gpu_e2e.py --trace PATH --out $OUT/e2e.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def run_engine(args, scheduler: str, attention: str, workload) -> dict:
    from podserve.bench.runner import run_workload
    from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
    from podserve.engine.engine import Engine

    config = EngineConfig(
        model=args.model, device=args.device, dtype="auto", attention=attention, max_model_len=args.max_model_len,
        scheduler=SchedulerConfig(policy=scheduler, chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs),
        cache=CacheConfig(block_size=16, gpu_memory_utilization=0.9),
    )
    engine = Engine(config)
    warm = [w.__class__(0.0, 64, 4) for w in workload[:4]]
    run_workload(engine, warm)
    run = run_workload(engine, workload)
    summary = run.collector.summary()
    its = run.collector.iterations
    out_tokens = sum(w.num_output_tokens for w in workload)
    result = {
        "scheduler": scheduler, "attention": attention, "wall_s": run.wall_s,
        "output_tok_s": out_tokens / run.wall_s,
        "total_tok_s": sum(w.num_prompt_tokens + w.num_output_tokens for w in workload) / run.wall_s,
        "num_iterations": len(its), "kv_blocks": engine.kv.num_blocks,
        "preemptions": engine.scheduler.num_preemptions, "summary": summary,
    }
    del engine
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def run_hf(args, workload) -> dict:
    import transformers

    from podserve.bench.workloads import prompt_token_ids
    from podserve.model.presets import preset_config

    cfg = preset_config(args.model)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=args.max_model_len,
        rope_theta=cfg.rope_theta, torch_dtype="bfloat16")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.device(args.device):
        model = transformers.LlamaForCausalLM(hf_cfg).to(dtype).eval()
    reqs = workload[: args.hf_requests]
    prompts = prompt_token_ids(reqs, cfg.vocab_size, 0)
    produced, start = 0, time.perf_counter()
    bs = args.hf_batch_size
    for i in range(0, len(reqs), bs):
        chunk, ps = reqs[i:i + bs], prompts[i:i + bs]
        width = max(len(p) for p in ps)
        ids = torch.zeros(len(ps), width, dtype=torch.long, device=args.device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(ps):
            ids[r, width - len(p):] = torch.tensor(p, device=args.device)
            mask[r, width - len(p):] = 1
        new = max(w.num_output_tokens for w in chunk)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
        produced += sum(w.num_output_tokens for w in chunk)
    if args.device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"system": f"transformers bs={bs}", "requests": len(reqs), "wall_s": wall, "output_tok_s": produced / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to smoke-test the script with a tiny preset")
    ap.add_argument("--trace", default="arxiv")
    ap.add_argument("--num-requests", type=int, default=256)
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--max-prompt-tokens", type=int, default=7168)
    ap.add_argument("--max-output-tokens", type=int, default=1024)
    ap.add_argument("--schedulers", default="sarathi,vllm,orca")
    ap.add_argument("--attentions", default="triton,pod")
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--hf-requests", type=int, default=64, help="requests for the transformers baseline (0 skips it)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from podserve.bench.workloads import WorkloadConfig, generate

    workload = generate(WorkloadConfig(
        num_requests=args.num_requests, lengths="trace", trace=args.trace, arrival="static",
        max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens, seed=0))
    results = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "args": vars(args), "runs": []}
    for scheduler in args.schedulers.split(","):
        for attention in args.attentions.split(","):
            try:
                r = run_engine(args, scheduler, attention, workload)
            except Exception as e:  # one failing pair must not hide the others' numbers
                r = {"scheduler": scheduler, "attention": attention, "error": f"{type(e).__name__}: {e}"}
            results["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "summary"}), flush=True)
    if args.hf_requests:
        results["transformers"] = run_hf(args, workload)
        print(json.dumps(results["transformers"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{'scheduler':<12}{'attention':<10}{'out tok/s':>12}{'wall s':>9}{'iters':>7}{'preempt':>8}")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['scheduler']:<12}{r['attention']:<10}  ERROR {r['error'][:80]}")
        else:
            print(f"{r['scheduler']:<12}{r['attention']:<10}{r['output_tok_s']:>12.0f}{r['wall_s']:>9.1f}{r['num_iterations']:>7}{r['preemptions']:>8}")
    if "transformers" in results:
        t = results["transformers"]
        print(f"{t['system']:<22}{t['output_tok_s']:>12.0f}{t['wall_s']:>9.1f}  ({t['requests']} requests)")


if __name__ == "__main__":
    main()
