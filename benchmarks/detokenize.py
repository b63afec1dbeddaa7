"""Incremental detokenization cost per token: tokenizers' DecodeStream (the engine's path)
against the two-window-decode fallback, on the default model's tokenizer (SmolLM2).

Streams 128 requests' worth of tokens, one token per request per step as a decode step
does, with the ids drawn from the vocabulary (``--ids random``) or from encoded English
text (``--ids text``).

    PYTHONPATH=. python3 benchmarks/detokenize.py --ids text --ids random
"""
from __future__ import annotations

import argparse
import json
import random
import time

TEXT = ("The quick brown fox jumps over the lazy dog while the engine streams tokens to its "
        "clients, one delta at a time, café naïve 日本語 🙂. ") * 40


def run(tok, streams: list[list[int]], prompt: list[int], native: bool) -> float:
    from podserve.engine.detokenizer import IncrementalDetokenizer

    dets = [IncrementalDetokenizer(tok, prompt, []) for _ in streams]
    if not native:
        for d in dets:
            d._step = None
    steps = len(streams[0])
    t = time.perf_counter()
    for i in range(steps):
        for d, ids in zip(dets, streams):
            d.add([ids[i]])
    return (time.perf_counter() - t) / (steps * len(streams))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", action="append", choices=["text", "random"])
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    from podserve.model.loader import resolve_model

    tok = resolve_model(None).tokenizer
    prompt = tok.encode("Summarise this:")
    rng = random.Random(0)
    text_ids = tok.encode(TEXT, add_special_tokens=False)
    for kind in a.ids or ["text", "random"]:
        if kind == "text":
            streams = [[text_ids[(j * 7 + i) % len(text_ids)] for i in range(a.tokens)] for j in range(a.requests)]
        else:
            streams = [[rng.randrange(tok.vocab_size) for _ in range(a.tokens)] for _ in range(a.requests)]
        res = {"ids": kind, "requests": a.requests, "tokens": a.tokens}
        for name, native in (("decode_stream_us", True), ("window_decode_us", False)):
            res[name] = min(run(tok, streams, prompt, native) for _ in range(a.repeat)) * 1e6
        res["speedup"] = res["window_decode_us"] / res["decode_stream_us"]
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
