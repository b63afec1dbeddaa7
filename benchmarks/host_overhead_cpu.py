"""Host time of an engine step outside the model forward, on CPU: scheduling, input staging,
sampling, scheduler update, detokenization and output building for 128 running decodes.

The forward pass is timed separately and subtracted, so what is left is the per-step Python
work a GPU engine also pays (the tiny-llama preset keeps the forward short); with
``--stub-forward`` it is replaced by zero logits, which also removes the torch threads'
interference. ``--gc`` picks how Python's cyclic garbage collector runs: ``on`` (default
thresholds), ``freeze`` (the start-up heap frozen, as ``Engine.freeze_heap`` does for
servers) or ``off``. ``PYTHONPATH`` may point at another checkout to measure a baseline.

    PYTHONPATH=. python3 benchmarks/host_overhead_cpu.py --gc on --gc freeze --repeat 2
    PYTHONPATH=. python3 benchmarks/host_overhead_cpu.py --gc freeze --stub-forward
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time


def measure(mode: str, steps: int, batch: int, stub: bool) -> dict:
    from podserve.engine.llm import LLM
    from podserve.request import SamplingParams

    llm = LLM(model="tiny-llama", device="cpu", max_num_seqs=batch, scheduler="vllm")
    eng = llm.engine
    params = SamplingParams(max_tokens=steps + 100, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        eng.add_request([1 + (i % 50)] * 64, params)
    for _ in range(3):  # prefill, then decodes only
        eng.step()
    if mode == "freeze":
        gc.collect()  # what Engine.freeze_heap does (spelled out: older checkouts lack it)
        gc.freeze()
    elif mode == "off":
        gc.disable()
    runner = eng.runner
    forward_s = [0.0]
    inner = runner._forward_logits

    def timed(inputs, all_rows=False):
        t = time.perf_counter()
        if stub:
            import torch

            out = torch.zeros(len(inputs.sample_rows), eng.model_config.vocab_size)
        else:
            out = inner(inputs, all_rows)
        forward_s[0] += time.perf_counter() - t
        return out
    runner._forward_logits = timed
    host = []
    for _ in range(steps):
        forward_s[0] = 0.0
        t = time.perf_counter()
        eng.step()
        host.append(time.perf_counter() - t - forward_s[0])
    host.sort()
    ms = [h * 1e3 for h in host]
    return dict(gc=mode, stub_forward=stub, batch=batch, steps=steps, median_ms=statistics.median(ms),
                mean_ms=statistics.mean(ms), p99_ms=ms[int(0.99 * len(ms))], max_ms=ms[-1],
                steps_over_20ms=sum(m > 20 for m in ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gc", action="append", choices=["on", "freeze", "off"], help="repeatable; default on, freeze")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode, alternating, each in a fresh process")
    ap.add_argument("--stub-forward", action="store_true", help="zero logits instead of the model")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.steps, a.batch, a.stub_forward)))
        return
    for _ in range(a.repeat):
        for mode in a.gc or ["on", "freeze"]:
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(a.steps), "--batch", str(a.batch)]
            out = subprocess.run(cmd + (["--stub-forward"] if a.stub_forward else []),
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
