"""Benchmark workloads: request lengths (trace or synthetic) and arrival times, all seeded.

Lengths come from a CSV trace (``num_prefill_tokens,num_decode_tokens`` and optionally
``arrived_at``, as in ``../shared/traces/``) or from a fixed, uniform or Zipf
distribution; arrivals are Poisson, gamma (any CV), static (all at t=0) or the trace's
own timestamps. A scale factor and min/max clips shrink paper-sized traces to CPU size.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LENGTHS = ("trace", "fixed", "uniform", "zipf")
ARRIVALS = ("poisson", "gamma", "static", "trace")
REPO_ROOT = Path(__file__).resolve().parents[2]
TRACE_DIR = REPO_ROOT.parent / "shared" / "traces"


@dataclass(frozen=True)
class WorkloadRequest:
    """One request of a workload: when it arrives and how long it is."""

    arrival_time: float
    """Seconds after the start of the run."""
    num_prompt_tokens: int
    num_output_tokens: int
    """Tokens to generate (run with ignore_eos so exactly this many come out)."""


@dataclass(frozen=True)
class WorkloadConfig:
    """How to draw a workload. Every random choice derives from ``seed``."""

    num_requests: int = 64
    lengths: str = "trace"
    """Where lengths come from: trace, fixed, uniform or zipf."""
    trace: str = "arxiv"
    """CSV path, or a file name (or its prefix) in ../shared/traces relative to the repo root."""
    prompt_tokens: int = 512
    """Prompt length of the ``fixed`` distribution."""
    output_tokens: int = 128
    """Output length of the ``fixed`` distribution."""
    length_scale: float = 1.0
    """Multiplies prompt and output lengths (before clipping): shrinks traces for CPU runs."""
    min_prompt_tokens: int = 1
    max_prompt_tokens: int = 4096
    """Clip on prompt lengths; also the range of the uniform and zipf distributions."""
    min_output_tokens: int = 1
    max_output_tokens: int = 1024
    """Clip on output lengths; also the range of the uniform and zipf distributions."""
    zipf_theta: float = 0.6
    """Zipf exponent: P(k-th shortest length) ~ 1 / k**theta."""
    arrival: str = "poisson"
    """Arrival process: poisson, gamma, static or trace."""
    qps: float = 1.0
    """Mean arrival rate (requests per second) of poisson and gamma arrivals."""
    cv: float = 1.0
    """Coefficient of variation of gamma inter-arrival times (1 = Poisson)."""
    seed: int = 0

    def __post_init__(self):
        if self.lengths not in LENGTHS:
            raise ValueError(f"lengths={self.lengths!r}: choose one of {', '.join(LENGTHS)}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival={self.arrival!r}: choose one of {', '.join(ARRIVALS)}")
        if self.num_requests < 1:
            raise ValueError(f"num_requests={self.num_requests}: need at least 1")
        if not 1 <= self.min_prompt_tokens <= self.max_prompt_tokens:
            raise ValueError(f"need 1 <= min_prompt_tokens <= max_prompt_tokens, got {self.min_prompt_tokens}, {self.max_prompt_tokens}")
        if not 1 <= self.min_output_tokens <= self.max_output_tokens:
            raise ValueError(f"need 1 <= min_output_tokens <= max_output_tokens, got {self.min_output_tokens}, {self.max_output_tokens}")
        if self.length_scale <= 0:
            raise ValueError(f"length_scale={self.length_scale}: must be > 0")
        if self.arrival in ("poisson", "gamma") and not self.qps > 0:
            raise ValueError(f"qps={self.qps}: must be > 0 for {self.arrival} arrivals")
        if self.arrival == "gamma" and not self.cv > 0:
            raise ValueError(f"cv={self.cv}: must be > 0")


def resolve_trace(trace: str) -> Path:
    """A path that exists, else the unique CSV in ../shared/traces named or prefixed by ``trace``."""
    path = Path(trace)
    if path.is_file():
        return path
    matches = sorted(TRACE_DIR.glob(f"{trace}*.csv")) if TRACE_DIR.is_dir() else []
    if len(matches) != 1:
        found = ", ".join(p.name for p in sorted(TRACE_DIR.glob("*.csv"))) or "none"
        raise FileNotFoundError(f"trace {trace!r} is neither a file nor a unique trace in {TRACE_DIR} (found: {found})")
    return matches[0]


def read_trace(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a trace CSV: num_prefill_tokens, num_decode_tokens and, if present, arrived_at."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"num_prefill_tokens", "num_decode_tokens"} <= set(rows[0]):
        raise ValueError(f"{path}: a trace needs columns num_prefill_tokens,num_decode_tokens")
    out = {k: np.array([int(float(r[k])) for r in rows]) for k in ("num_prefill_tokens", "num_decode_tokens")}
    if "arrived_at" in rows[0]:
        out["arrived_at"] = np.array([float(r["arrived_at"]) for r in rows])
    return out


def generate(config: WorkloadConfig) -> list[WorkloadRequest]:
    """Draw the workload described by ``config``, sorted by arrival time."""
    rng = np.random.default_rng(config.seed)
    n = config.num_requests
    trace = read_trace(resolve_trace(config.trace)) if "trace" in (config.lengths, config.arrival) else None
    # Trace rows: in order when the trace also gives the arrival times, else a seeded shuffle.
    rows = None
    if trace is not None:
        num_rows = len(trace["num_prefill_tokens"])
        rows = np.arange(n) % num_rows if config.arrival == "trace" else rng.permutation(max(n, num_rows))[:n] % num_rows

    if config.lengths == "trace":
        prompt, output = trace["num_prefill_tokens"][rows], trace["num_decode_tokens"][rows]
    elif config.lengths == "fixed":
        prompt, output = np.full(n, config.prompt_tokens), np.full(n, config.output_tokens)
    elif config.lengths == "uniform":
        prompt = rng.integers(config.min_prompt_tokens, config.max_prompt_tokens + 1, n)
        output = rng.integers(config.min_output_tokens, config.max_output_tokens + 1, n)
    else:
        prompt = _zipf(rng, config.min_prompt_tokens, config.max_prompt_tokens, config.zipf_theta, n)
        output = _zipf(rng, config.min_output_tokens, config.max_output_tokens, config.zipf_theta, n)
    prompt = np.clip(np.rint(prompt * config.length_scale), config.min_prompt_tokens, config.max_prompt_tokens)
    output = np.clip(np.rint(output * config.length_scale), config.min_output_tokens, config.max_output_tokens)

    arrivals = _arrivals(config, rng, trace, rows)
    order = np.argsort(arrivals, kind="stable")
    return [WorkloadRequest(float(arrivals[i]), int(prompt[i]), int(output[i])) for i in order]


def _zipf(rng: np.random.Generator, low: int, high: int, theta: float, n: int) -> np.ndarray:
    """Lengths in [low, high]; the k-th shortest has probability ~ 1 / k**theta."""
    ranks = np.arange(1, high - low + 2, dtype=float)
    p = ranks ** -theta
    return low + rng.choice(len(ranks), size=n, p=p / p.sum())


def _arrivals(config: WorkloadConfig, rng: np.random.Generator, trace, rows) -> np.ndarray:
    n = config.num_requests
    if config.arrival == "static":
        return np.zeros(n)
    if config.arrival == "trace":
        if "arrived_at" not in trace:
            raise ValueError(f"trace {config.trace!r} has no arrived_at column; pick another arrival process")
        if n > len(trace["arrived_at"]):
            raise ValueError(f"trace has {len(trace['arrived_at'])} timestamps, fewer than num_requests={n}")
        t = trace["arrived_at"][rows]
        return t - t.min()
    if config.arrival == "poisson":
        gaps = rng.exponential(1.0 / config.qps, n)  # unclipped: bursts and lulls as they come
    else:
        shape = 1.0 / config.cv ** 2
        gaps = rng.gamma(shape, 1.0 / (config.qps * shape), n)  # mean 1/qps, std cv/qps
    # The first request arrives at t=0, so a run never starts with an idle wait.
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def prompt_token_ids(workload: list[WorkloadRequest], vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Random prompt token ids in [0, vocab_size), one list per request, from a seeded RNG."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, r.num_prompt_tokens).tolist() for r in workload]
