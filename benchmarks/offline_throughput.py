"""Offline throughput on CPU: podserve (continuous hybrid batching) vs transformers generate.

Same requests through both in one run: prompt lengths from a trace in ../shared/traces,
rescaled into [--min-prompt, --max-prompt] tokens, output lengths uniform in
[--min-output, --max-output], greedy, EOS ignored. transformers runs at each batch size of
--hf-batch-sizes with left padding; its best is the baseline. Single-request decode speed
is measured for both on one prompt.

    python benchmarks/offline_throughput.py --out runs/offline.json
"""
from __future__ import annotations

import argparse
import csv
import json
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
    # Log-scale rescale: keeps the trace's long tail without most prompts pinned at a clip.
    import math

    def scale(n):
        frac = (math.log(n) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return int(round(args.min_prompt + frac * (args.max_prompt - args.min_prompt)))

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=32)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--min-output", type=int, default=64)
    ap.add_argument("--max-output", type=int, default=128)
    ap.add_argument("--hf-batch-sizes", default="4,16,64")
    ap.add_argument("--single-tokens", type=int, default=128)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both systems (default: torch's)")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()

    import transformers

    from podserve import LLM, SamplingParams
    from podserve.model.default_model import default_gguf_path

    if args.threads:
        torch.set_num_threads(args.threads)
    requests = make_requests(args)
    llm = LLM(chunk_size=args.chunk_size, max_num_seqs=args.max_num_seqs)
    path = default_gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            os.fspath(path.parent), gguf_file=path.name, dtype=torch.float32).eval()

    # Warm both up once so first-call allocations don't count.
    run_podserve(llm, requests[:2])
    run_hf(hf, requests[:2], 2)

    single_prompt = requests[0][0][:128]
    t = time.perf_counter()
    llm.generate([single_prompt], SamplingParams(max_tokens=args.single_tokens, temperature=0, ignore_eos=True), use_tqdm=False)
    pod_single = args.single_tokens / (time.perf_counter() - t)
    hf_single = run_hf(hf, [(single_prompt, args.single_tokens)], 1)["output_tok_s"]

    pod = run_podserve(llm, requests)
    hf_runs = [run_hf(hf, requests, int(b)) for b in args.hf_batch_sizes.split(",")]
    best = max(hf_runs, key=lambda r: r["output_tok_s"])
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
        "args": vars(args),
        "podserve": pod,
        "transformers": hf_runs,
        "transformers_best": best,
        "batched_ratio": pod["output_tok_s"] / best["output_tok_s"],
        "single_decode_tok_s": {"podserve": pod_single, "transformers": hf_single, "ratio": pod_single / hf_single},
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'system':<28}{'output tok/s':>14}{'elapsed s':>12}")
    print(f"{'podserve (sarathi)':<28}{pod['output_tok_s']:>14.1f}{pod['elapsed_s']:>12.1f}")
    for r in hf_runs:
        print(f"{'transformers bs=' + str(r['batch_size']):<28}{r['output_tok_s']:>14.1f}{r['elapsed_s']:>12.1f}")
    print(f"batched ratio podserve / best transformers: {result['batched_ratio']:.2f}x")
    s = result["single_decode_tok_s"]
    print(f"single-request decode tok/s: podserve {s['podserve']:.1f}, transformers {s['transformers']:.1f} ({s['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
