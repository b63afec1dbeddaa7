"""``podserve profile``: time the real model's operators on this device (needs torch).

Operators are taken from a live Engine (same modules, same attention backend, same
input preparation) and timed in isolation over a grid; the per-iteration CPU overhead is
measured by running the engine itself and subtracting the model's forward and LM head.
"""
from __future__ import annotations

import platform
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from podserve.config import CacheConfig, EngineConfig
from podserve.core.batch import ScheduledBatch, ScheduledSeq
from podserve.request import SamplingParams
from podserve.sim.profile_io import Profile, base_meta
from podserve.sim.roofline import LINEAR_OPS


@dataclass(frozen=True)
class ProfileGrid:
    """Where to measure. ``quick`` keeps a CPU run of SmolLM2 well under a minute."""

    tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    lm_head_tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    prefill_q: tuple[int, ...] = (16, 64, 128, 256, 512, 1024, 2048)
    prefill_prefix: tuple[int, ...] = (0, 256, 1024, 2048)
    decode_batch: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    decode_ctx: tuple[int, ...] = (32, 128, 512, 1024, 2048, 4096)
    max_decode_kv: int = 32768
    overhead_batches: tuple[int, ...] = (1, 4, 16, 48)
    """Engine phase: a batch of this many requests at a time, run to completion."""
    engine_prompt_tokens: tuple[int, int] = (16, 256)
    """Engine phase: prompt lengths spread over this range."""
    engine_output_tokens: int = 12
    """Engine phase: tokens generated per request (decode iterations per batch)."""
    time_budget_s: float = 0.03
    """Per point and pass: repeat until this much time was spent."""
    passes: int = 3
    """Sweeps over the whole grid; each point keeps the median over sweeps. On a shared
    machine, other processes' bursts last seconds: separate sweeps see different bursts.
    On CPU the engine phase runs this many times too, each step keeping its median; on
    CUDA it runs once (device time does not share the host's noise)."""

    decode_batches: tuple[int, ...] = ()
    """Engine phase, decode-heavy part (CUDA): this many requests at a time with prompts over
    ``decode_prompt_tokens`` and ``decode_output_tokens`` outputs, so decode-only steps (CUDA
    graphs) of serving-sized batches and contexts are in the calibration."""
    decode_prompt_tokens: tuple[int, int] = (64, 1024)
    decode_output_tokens: int = 160

    @classmethod
    def gpu(cls) -> "ProfileGrid":
        """The default grid with an engine phase that reaches serving-sized steps: prompts up
        to 4096 tokens, so 512-token chunks at long contexts are in the whole-forward
        calibration rather than extrapolated to, and decode-only batches of 16 to 128."""
        return cls(engine_prompt_tokens=(16, 4096), engine_output_tokens=16, decode_batches=(16, 64, 128))

    @classmethod
    def quick(cls) -> "ProfileGrid":
        return cls(tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), lm_head_tokens=(1, 4, 16, 64),
                   prefill_q=(16, 64, 256, 512, 1024), prefill_prefix=(0, 512, 1536),
                   decode_batch=(1, 4, 16, 32, 64), decode_ctx=(64, 256, 1024, 2048), max_decode_kv=24576,
                   overhead_batches=(1, 4, 16), engine_prompt_tokens=(16, 128), time_budget_s=0.01)


def _timer(device: torch.device):
    if device.type == "cuda":
        def sync():
            torch.cuda.synchronize(device)
    else:
        def sync():
            pass
    return sync


def measure_layers(call, num_layers: int, sync, budget_s: float, clock=time.perf_counter) -> float:
    """Median seconds of ``call(i)`` where ``i`` rotates over layers.

    Each layer owns its weights and KV cache, so a real forward streams them from memory;
    repeating one layer's call would keep them cache-resident and time an unrealistically
    warm operator. Cheap calls (where that matters) rotate over up to every layer; calls
    long enough for their data to be streamed anyway rotate over two.
    """
    t0 = clock()
    call(0)
    sync()
    first = clock() - t0
    k = max(2, min(num_layers, int(0.01 / max(first, 1e-7))))
    per_call = []
    spent = 0.0
    while len(per_call) < (1 if first > budget_s else 2) or (spent < budget_s and len(per_call) < 15):
        t0 = clock()
        for i in range(k):
            call(i % num_layers)
        sync()
        dt = clock() - t0
        per_call.append(dt / k)
        spent += dt
    return statistics.median(per_call)


def measure(fn, sync, budget_s: float, min_reps: int = 3, max_reps: int = 25, clock=time.perf_counter) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    sync()
    times = []
    spent = 0.0
    while len(times) < min_reps or (spent < budget_s and len(times) < max_reps):
        t0 = clock()
        fn()
        sync()
        dt = clock() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times)


class Profiler:
    """Measures one model on one device; ``run()`` returns a Profile."""

    def __init__(self, model: str | None = None, device: str = "cpu", dtype: str = "auto", attention: str = "torch",
                 grid: ProfileGrid | None = None, max_model_len: int = 8192, progress=print, threads: int | None = None,
                 clock: str = "wall"):
        from podserve.engine.engine import Engine

        if threads is not None:
            # On a shared CPU, multi-threaded GEMMs stall whenever a sibling thread is
            # descheduled (40 ms medians for a 2-token matmul under load): profile and
            # serve with the same, preferably single, thread count.
            torch.set_num_threads(threads)

        self.grid = grid or (ProfileGrid.gpu() if str(device).startswith("cuda") else ProfileGrid())
        self.engine = Engine(EngineConfig(model=model, device=device, dtype=dtype, attention=attention,
                                          max_model_len=max_model_len, cache=CacheConfig()))
        self.runner = self.engine.runner
        self.model = self.runner.model
        self.device = self.runner.device
        self.dtype = self.runner.dtype
        self.sync = _timer(self.device)
        self.progress = progress or (lambda *a: None)
        self.config = self.engine.model_config
        self.attention = attention
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock {clock!r}: choose wall or cpu")
        if clock == "cpu" and (self.device.type != "cpu" or torch.get_num_threads() != 1):
            raise ValueError("--clock cpu times the profiling thread's CPU time: it needs --device cpu and --threads 1")
        self.clock_name = clock
        self.clock = time.thread_time if clock == "cpu" else time.perf_counter
        """What times are measured in: wall seconds, or the profiling thread's CPU seconds
        (on a shared machine: what a dedicated core would take; see bench.clock)."""

    def _randn(self, *shape):
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    # --- operators ---------------------------------------------------------------------------
    @torch.inference_mode()
    def linear(self) -> list[dict]:
        # Each GEMM runs once per layer per iteration with that layer's weights: time it over
        # every layer in turn (then divide) so the weights stream from memory as in a real
        # forward, instead of staying cache-resident as a single repeated call would let them.
        layers = self.model.layers
        mods = {"qkv": [l.self_attn.qkv_proj for l in layers], "o": [l.self_attn.o_proj for l in layers],
                "gate_up": [l.mlp.gate_up_proj for l in layers], "down": [l.mlp.down_proj for l in layers]}
        rows = []
        for op in LINEAR_OPS:
            ms = mods[op]
            m = ms[0]
            for n in self.grid.tokens:
                x = self._randn(n, m.in_features)
                t = measure_layers(lambda i: ms[i](x), len(ms), self.sync, self.grid.time_budget_s, clock=self.clock)
                rows.append({"op": op, "num_tokens": n, "in_features": m.in_features, "out_features": m.out_features,
                             "time_s": t})
        head = self.model.lm_head
        for n in self.grid.lm_head_tokens:
            x = self._randn(n, head.in_features)
            rows.append({"op": "lm_head", "num_tokens": n, "in_features": head.in_features, "out_features": head.out_features,
                         "time_s": measure(lambda: self.model.compute_logits(x), self.sync, self.grid.time_budget_s, clock=self.clock)})
        return rows

    @torch.inference_mode()
    def elementwise(self) -> list[dict]:
        layer = self.model.layers[0]
        attn = layer.self_attn
        cfg = self.config
        rows = []
        for n in self.grid.tokens:
            x = self._randn(n, cfg.hidden_size)
            q = self._randn(n, attn.num_heads, attn.head_dim)
            k = self._randn(n, attn.num_kv_heads, attn.head_dim)
            gate_up = self._randn(n, 2 * cfg.intermediate_size)
            pos = torch.arange(n, device=self.device)
            ids = torch.randint(0, cfg.vocab_size, (n,), device=self.device)

            def misc():
                # Everything of a decoder layer besides GEMMs and attention, as LlamaDecoderLayer runs it.
                h = layer.input_layernorm(x)
                attn.rope(pos, q, k)
                y = x + h
                h2 = layer.post_attention_layernorm(y)
                g, u = gate_up.chunk(2, dim=-1)
                F.silu(g) * u
                return y + h2

            rows.append({"op": "layer_misc", "num_tokens": n, "time_s": measure(misc, self.sync, self.grid.time_budget_s, clock=self.clock)})
            rows.append({"op": "embed", "num_tokens": n,
                         "time_s": measure(lambda: self.model.embed_tokens(ids), self.sync, self.grid.time_budget_s, clock=self.clock)})
        return rows

    def _attention_time(self, seqs: list[ScheduledSeq], num_decodes: int) -> float:
        batch = ScheduledBatch(iteration=0, seqs=seqs, num_decodes=num_decodes)
        _, _, meta, _ = self.runner.prepare(batch)
        backend = self.runner.backend
        backend.prepare(meta)
        attn = self.model.layers[0].self_attn
        n = batch.num_tokens
        q = self._randn(n, attn.num_heads, attn.head_dim)
        k = self._randn(n, attn.num_kv_heads, attn.head_dim)
        v = self._randn(n, attn.num_kv_heads, attn.head_dim)
        caches = self.runner.kv_pool.caches
        return measure_layers(lambda i: backend.forward(q, k, v, *caches[i], meta, attn.scale), len(caches),
                              self.sync, self.grid.time_budget_s, clock=self.clock)

    def _seq(self, i: int, start: int, num_tokens: int, is_prefill: bool) -> ScheduledSeq:
        bs = self.runner.kv_pool.block_size
        nb = self.runner.kv_pool.num_blocks
        total = start + num_tokens
        # Timing only: sequences may share physical blocks, so huge grids fit a small pool.
        table = [(i * 7919 + j) % nb for j in range(-(-total // bs))]
        return ScheduledSeq(f"p{i}", [0] * num_tokens, start, is_prefill, True, table, SamplingParams(), 0)

    @torch.inference_mode()
    def attention_prefill(self) -> list[dict]:
        rows = []
        for q in self.grid.prefill_q:
            for prefix in self.grid.prefill_prefix:
                rows.append({"q_len": q, "kv_len": prefix + q, "time_s": self._attention_time([self._seq(0, prefix, q, True)], 0)})
        return rows

    @torch.inference_mode()
    def attention_decode(self) -> list[dict]:
        rows = []
        rng = np.random.default_rng(0)
        for b in self.grid.decode_batch:
            for ctx in self.grid.decode_ctx:
                if b * ctx > self.grid.max_decode_kv:
                    continue
                for ragged in (False, True):
                    if ragged and b == 1:
                        continue
                    # Ragged batches (contexts spread over [ctx/4, ctx]) separate the cost of
                    # the tokens read from the cost of padding to the longest context.
                    lens = rng.integers(max(1, ctx // 4), ctx + 1, b) if ragged else np.full(b, ctx)
                    seqs = [self._seq(i, int(c) - 1, 1, False) for i, c in enumerate(lens)]
                    rows.append({"batch_size": b, "sum_kv": int(lens.sum()), "max_kv": int(lens.max()),
                                 "time_s": self._attention_time(seqs, b)})
        return rows

    def cpu_overhead(self) -> list[dict]:
        """Run the engine; per step, (step wall time) - (forward + LM head time)."""
        return self.engine_iterations()[0]

    def engine_iterations(self) -> tuple[list[dict], list[dict]]:
        """Run the engine on a small mixed workload (prefill chunks, hybrid and decode-only
        batches). Per step: the CPU overhead, (step wall time) - (forward + LM head), and the
        whole forward with the batch that ran (``engine_forward`` rows)."""
        if self.device.type == "cuda":
            # The step's own device time is its forward: replayed CUDA graphs never call
            # model.forward, and a sync after each module call would stop the host from
            # running ahead of the device as it does in serving.
            return self._engine_iterations_served()
        engine = self.engine
        model = self.model
        clock = self.clock
        spent = [0.0]
        orig_forward, orig_logits = model.forward, model.compute_logits

        def timed(fn):
            def wrapper(*a, **kw):
                t0 = clock()
                out = fn(*a, **kw)
                self.sync()
                spent[0] += clock() - t0
                return out
            return wrapper

        batches: list[ScheduledBatch] = []
        listener = lambda batch, start, end: batches.append(batch)  # noqa: E731
        model.forward, model.compute_logits = timed(orig_forward), timed(orig_logits)
        passes: list[tuple[list[dict], list[dict]]] = []
        engine.iteration_listeners.append(listener)
        lo, hi = self.grid.engine_prompt_tokens
        # Served engines run with the start-up heap frozen (Engine.freeze_heap): a full
        # collection over it would add a ~100 ms outlier to one step's overhead here.
        engine.freeze_heap()
        try:
            for p in range(self.grid.passes):
                # Fresh token ids per pass (no prefix-cache hits); the same lengths, so every
                # pass schedules the same batches.
                rng = np.random.default_rng(p)
                rows, forwards = [], []
                for b in self.grid.overhead_batches:
                    # Prompt lengths spread over [lo, hi]: chunks of several sizes, then decodes
                    # over a range of contexts as the batch drains.
                    for i, n in enumerate(_spread(lo, hi, b)):
                        ids = rng.integers(0, self.config.vocab_size, n).tolist()
                        engine.add_request(ids, SamplingParams(max_tokens=self.grid.engine_output_tokens,
                                                               temperature=0.0, ignore_eos=True),
                                           request_id=f"overhead-{p}-{b}-{i}")
                    while engine.has_unfinished_requests():
                        spent[0] = 0.0
                        before = len(batches)
                        t0 = clock()
                        engine.step()
                        dt = clock() - t0
                        if len(batches) == before:
                            continue
                        batch = batches[-1]
                        rows.append({"num_seqs": batch.num_seqs, "num_tokens": batch.num_tokens,
                                     "num_prefills": batch.num_prefills, "time_s": max(dt - spent[0], 1e-7)})
                        forwards.append({**batch_shape(batch), "time_s": spent[0]})
                passes.append((rows, forwards))
        finally:
            engine.unfreeze_heap()
            model.forward, model.compute_logits = orig_forward, orig_logits
            engine.iteration_listeners.remove(listener)
        return _median_over_passes([r for r, _ in passes]), _median_over_passes([f for _, f in passes])

    def _engine_iterations_served(self) -> tuple[list[dict], list[dict]]:
        """CUDA: the engine phase driven by ``podserve bench``'s own loop (``run_workload``),
        so each step's period -- from its start to the next step's start -- holds what serving
        spends between steps too (arrivals, outputs, metrics). Per step the forward is its
        device time (events around forward and sampling) and the CPU overhead the rest of
        the period."""
        from podserve.bench.runner import run_workload
        from podserve.bench.workloads import WorkloadRequest

        engine, runner = self.engine, self.runner
        graphs = getattr(runner, "graphs", None)
        seen: list[tuple] = []

        def listener(batch, start, end):
            seen.append((batch, start, end, getattr(engine.last_output, "timing", None)))

        engine.iteration_listeners.append(listener)
        rows, forwards = [], []
        g = self.grid
        phases = [(b, g.engine_prompt_tokens, g.engine_output_tokens) for b in g.overhead_batches]
        phases += [(b, g.decode_prompt_tokens, g.decode_output_tokens) for b in g.decode_batches]
        engine.freeze_heap()  # as served (see engine_iterations)
        try:
            for b, (lo, hi), outputs in phases:
                seen.clear()
                workload = [WorkloadRequest(0.0, n, outputs) for n in _spread(lo, hi, b)]
                run_workload(engine, workload, seed=b, detokenize=False)
                runner.flush_timings()
                for k, (batch, start, end, timing) in enumerate(seen):
                    period = (seen[k + 1][1] - start) if k + 1 < len(seen) else (end - start)
                    device = timing.gpu_s if timing is not None and timing.gpu_s is not None else 0.0
                    rows.append({"num_seqs": batch.num_seqs, "num_tokens": batch.num_tokens,
                                 "num_prefills": batch.num_prefills, "time_s": max(period - device, 1e-7)})
                    forwards.append({**batch_shape(batch), "graphed": int(graphs is not None and graphs.can_run(batch)),
                                     "time_s": device})
        finally:
            engine.unfreeze_heap()
            engine.iteration_listeners.remove(listener)
        return rows, forwards

    def run(self) -> Profile:
        ops = (("linear", self.linear), ("elementwise", self.elementwise),
               ("attention_prefill", self.attention_prefill), ("attention_decode", self.attention_decode))
        sweeps: dict[str, list[list[dict]]] = {name: [] for name, _ in ops}
        for i in range(self.grid.passes):
            t0 = time.perf_counter()
            for name, fn in ops:
                sweeps[name].append(fn())
            self.progress(f"operator sweep {i + 1}/{self.grid.passes}: {time.perf_counter() - t0:.1f}s")
        tables = {name: _median_over_sweeps(rows) for name, rows in sweeps.items()}
        t0 = time.perf_counter()
        tables["cpu_overhead"], tables["engine_forward"] = self.engine_iterations()
        self.progress(f"engine: {len(tables['cpu_overhead'])} iterations (CPU overhead, whole forwards) in {time.perf_counter() - t0:.1f}s")
        return Profile(self._meta(), tables)

    def _meta(self) -> dict:
        dev = self.device
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
            memory = torch.cuda.get_device_properties(dev).total_memory
        else:
            name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
            memory = None
        extra = {"device_memory_bytes": memory, "gpu_memory_utilization": self.engine.config.cache.gpu_memory_utilization} if memory else {}
        graphs = getattr(self.runner, "graphs", None)
        if graphs is not None:
            extra["cuda_graph_max_batch"] = max(graphs.buckets)  # decode-only steps up to this size replay graphs
        return base_meta(device=dev.type, device_name=name, model_name=self.engine.model_name, model_config=self.config,
                         dtype=str(self.dtype).removeprefix("torch."), dtype_bytes=torch.tensor([], dtype=self.dtype).element_size(),
                         attention=self.attention, source="podserve-profiler", torch_version=torch.__version__,
                         clock=self.clock_name,
                         grid=self.grid.__dict__, **extra)


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """``n`` prompt lengths evenly over ``[lo, hi]``."""
    return [lo + (hi - lo) * i // max(n - 1, 1) for i in range(n)]


def batch_shape(batch: ScheduledBatch) -> dict:
    """What the cost model needs of a batch (an ``engine_forward`` row without its time)."""
    nd = batch.num_decodes
    starts = [s.start_pos for s in batch.seqs[:nd]]
    prefills = batch.seqs[nd:]
    return {"num_decodes": nd, "decode_sum_kv": sum(starts) + nd, "decode_max_kv": max(starts) + 1 if nd else 0,
            "prefill_chunks": ";".join(f"{s.num_tokens}:{s.start_pos}" for s in prefills),
            "num_sampled": nd + sum(s.do_sample for s in prefills)}


def _median_over_passes(passes: list[list[dict]]) -> list[dict]:
    """Engine-phase steps: when every pass ran the same batches, each step's time is its
    median over passes (a burst from another process then skews one pass, not the fit);
    otherwise (a preemption in one pass, say) all passes' steps, as measured."""
    shapes = [[{k: v for k, v in row.items() if k != "time_s"} for row in rows] for rows in passes]
    if all(s == shapes[0] for s in shapes):
        return _median_over_sweeps(passes)
    return [row for rows in passes for row in rows]


def _median_over_sweeps(sweeps: list[list[dict]]) -> list[dict]:
    """Rows of the first sweep with each time replaced by its median over all sweeps."""
    return [{**rows[0], "time_s": statistics.median(r["time_s"] for r in rows)} for rows in zip(*sweeps)]
