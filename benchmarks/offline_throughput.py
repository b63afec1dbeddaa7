"""Offline throughput on CPU: podserve (continuous hybrid batching) vs transformers generate.

Same requests through both in one run: prompt lengths from a trace in ../shared/traces,
scaled proportionally into [--min-prompt, --max-prompt] tokens (the trace's shape kept),
output lengths uniform in [--min-output, --max-output], greedy, EOS ignored. transformers
runs at each batch size of --hf-batch-sizes with left padding; its best is the baseline.
Single-request decode speed is measured for both on one prompt. Each dtype of --dtypes is
a separate round with both systems in that dtype; the JSON also holds the "padding bound":
the tokens transformers' best batch pushes through its linear layers over podserve's, the
most continuous batching can gain where both are compute-bound (a CPU).

    python benchmarks/offline_throughput.py --threads 1 --dtypes float32,bfloat16 --out runs/offline.json
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"


def make_requests(args) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request; prompt lengths keep the trace's shape."""
    rng = random.Random(args.seed)
    with open(args.trace) as f:
        lengths = [int(row["num_prefill_tokens"]) for row in csv.DictReader(f)]
    picked = rng.sample(lengths, args.num_requests)
    lo, hi = min(lengths), max(lengths)
    if args.length_scale == "log":
        # Squeezes arxiv (median 2730 of max 4054 tokens) into the top of the range.
        def frac(n):
            return (math.log(n) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        def frac(n):
            return (n - lo) / (hi - lo)

    def scale(n):
        return int(round(args.min_prompt + frac(n) * (args.max_prompt - args.min_prompt)))

    vocab_hi = 49000
    return [
        ([rng.randrange(100, vocab_hi) for _ in range(scale(n))], rng.randint(args.min_output, args.max_output))
        for n in picked
    ]


def run_podserve(llm, requests) -> dict:
    from podserve import SamplingParams

    params = [SamplingParams(max_tokens=o, temperature=0, ignore_eos=True) for _, o in requests]
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in requests], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    assert produced == sum(o for _, o in requests)
    return {"elapsed_s": elapsed, "output_tokens": produced, "output_tok_s": produced / elapsed}


def run_hf(model, requests, batch_size: int) -> dict:
    produced, start = 0, time.perf_counter()
    for i in range(0, len(requests), batch_size):
        chunk = requests[i : i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (p, _) in enumerate(chunk):  # left padding, as generate expects for decoder-only models
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        new = max(o for _, o in chunk)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0, eos_token_id=None)
        produced += sum(o for _, o in chunk)  # only the tokens each request asked for count
    elapsed = time.perf_counter() - start
    return {"batch_size": batch_size, "elapsed_s": elapsed, "output_tokens": produced, "output_tok_s": produced / elapsed}


def padded_tokens(requests, batch_size: int) -> int:
    """Tokens transformers' linear layers process at ``batch_size`` with left padding."""
    total = 0
    for i in range(0, len(requests), batch_size):
        chunk = requests[i : i + batch_size]
        total += len(chunk) * (max(len(p) for p, _ in chunk) + max(o for _, o in chunk))
    return total


def make_llm(args, dtype_name: str):
    from podserve import LLM

    return LLM(chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs, dtype=dtype_name, kv_layout=args.kv)


def single_decode(llm, prompt: list[int], tokens: int) -> float:
    """Output tokens/s of one request generating ``tokens`` tokens alone."""
    from podserve import SamplingParams

    t = time.perf_counter()
    llm.generate([prompt], SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True), use_tqdm=False)
    return tokens / (time.perf_counter() - t)


def run_round(args, requests, dtype_name: str) -> dict:
    """podserve and transformers, both in ``dtype_name``: single decode, then batched."""
    import transformers

    from podserve.model.default_model import default_gguf_path

    dtype = getattr(torch, dtype_name)
    llm = make_llm(args, dtype_name)
    path = default_gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            os.fspath(path.parent), gguf_file=path.name, dtype=dtype).eval()

    # Warm both up once so first-call allocations don't count.
    run_podserve(llm, requests[:2])
    run_hf(hf, requests[:2], 2)

    single_prompt = requests[0][0][:128]
    pod_single = single_decode(llm, single_prompt, args.single_tokens)
    hf_single = run_hf(hf, [(single_prompt, args.single_tokens)], 1)["output_tok_s"]

    pod = run_podserve(llm, requests)
    pod_torch_attn = None
    if args.compare_torch_attention:  # the same engine with its decodes on the torch path
        from podserve.kernels import cpu_decode

        pod["cpu_attention_kernel"] = cpu_decode.available()
        cpu_decode.ENABLED = False
        try:
            pod_torch_attn = run_podserve(llm, requests)
        finally:
            cpu_decode.ENABLED = True
    unpacked = None
    if args.compare_unpacked:  # the same engine with the stock (unpacked) CPU linear layers
        from podserve.kernels import cpu_linear

        pod["packed_linears"] = llm.engine.runner.packed_linears
        del llm
        cpu_linear.ENABLED = False
        try:
            llm = make_llm(args, dtype_name)
            run_podserve(llm, requests[:2])
            single = single_decode(llm, single_prompt, args.single_tokens)
            unpacked = {**run_podserve(llm, requests), "single_decode_tok_s": single}
        finally:
            cpu_linear.ENABLED = True
    hf_runs = [run_hf(hf, requests, int(b)) for b in args.hf_batch_sizes.split(",")]
    best = max(hf_runs, key=lambda r: r["output_tok_s"])
    own = sum(len(p) + o for p, o in requests)
    del llm, hf
    return {
        "dtype": dtype_name,
        "podserve": pod,
        "podserve_torch_attention": pod_torch_attn,
        "podserve_unpacked_linear": unpacked,
        "transformers": hf_runs,
        "transformers_best": best,
        "batched_ratio": pod["output_tok_s"] / best["output_tok_s"],
        "padding_bound": padded_tokens(requests, best["batch_size"]) / own,
        "single_decode_tok_s": {"podserve": pod_single, "transformers": hf_single, "ratio": pod_single / hf_single},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=32)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--length-scale", choices=["linear", "log"], default="linear",
                    help="map trace prompt lengths into the range proportionally (default) or by log")
    ap.add_argument("--min-output", type=int, default=64)
    ap.add_argument("--max-output", type=int, default=128)
    ap.add_argument("--hf-batch-sizes", default="4,16,64")
    ap.add_argument("--single-tokens", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--kv", choices=["paged", "virtual"], default="paged", help="podserve's KV layout")
    ap.add_argument("--dtypes", default="float32", help="comma-separated; one round per dtype, both systems in it")
    ap.add_argument("--compare-torch-attention", action="store_true",
                    help="also run podserve with CPU decodes on the torch path instead of the compiled kernel")
    ap.add_argument("--compare-unpacked", action="store_true",
                    help="also run podserve with the stock CPU linear layers instead of oneDNN-packed weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both systems (default: torch's)")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    requests = make_requests(args)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        "args": vars(args),
        "workload": {"prompt_tokens": sum(len(p) for p, _ in requests), "output_tokens": sum(o for _, o in requests)},
        "rounds": [],
    }
    for name in args.dtypes.split(","):
        result["rounds"].append(run_round(args, requests, name))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"workload: {len(requests)} requests, {result['workload']['prompt_tokens']} prompt and "
          f"{result['workload']['output_tokens']} output tokens")
    print(f"{'dtype':<10}{'system':<28}{'output tok/s':>14}{'elapsed s':>12}")
    for r in result["rounds"]:
        pod = r["podserve"]
        print(f"{r['dtype']:<10}{'podserve (sarathi)':<28}{pod['output_tok_s']:>14.1f}{pod['elapsed_s']:>12.1f}")
        if r.get("podserve_torch_attention"):
            t = r["podserve_torch_attention"]
            print(f"{r['dtype']:<10}{'podserve, torch attention':<28}{t['output_tok_s']:>14.1f}{t['elapsed_s']:>12.1f}")
        if r.get("podserve_unpacked_linear"):
            u = r["podserve_unpacked_linear"]
            print(f"{r['dtype']:<10}{'podserve, unpacked linear':<28}{u['output_tok_s']:>14.1f}{u['elapsed_s']:>12.1f}"
                  f"  (single decode {u['single_decode_tok_s']:.1f} tok/s)")
        for h in r["transformers"]:
            print(f"{r['dtype']:<10}{'transformers bs=' + str(h['batch_size']):<28}{h['output_tok_s']:>14.1f}{h['elapsed_s']:>12.1f}")
        s = r["single_decode_tok_s"]
        print(f"{r['dtype']:<10}batched ratio {r['batched_ratio']:.2f}x (padding bound {r['padding_bound']:.2f}x); "
              f"single decode podserve {s['podserve']:.1f} vs transformers {s['transformers']:.1f} tok/s ({s['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
