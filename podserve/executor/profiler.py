"""Kernel-level profile of engine steps: where a rank's device time goes.

``StepProfiler`` wraps ``torch.profiler`` around the steps a ``ModelRunner`` executes between
``start()`` and ``stop()`` and summarises the kernels per step, grouped into families (GEMM,
attention, elementwise, all-reduce, sampling, copies). The engine exposes it as
``Engine.start_profile()`` / ``Engine.stop_profile()`` (like vLLM's ``LLM.start_profile``);
tensor/pipeline-parallel workers run one each and return their summaries, so a rank's step
can be inspected where the driver cannot see it.
"""
from __future__ import annotations

import atexit
import weakref
from collections import defaultdict

import torch

FAMILIES = [  # first match wins; names of cuBLAS/cutlass/Triton/NCCL/torch kernels
    # The fused TP reduction's barrier counts here; its kernel (_add_rms_norm: reading the
    # peers' partials, residual add, norm) counts as elementwise, like the add + norm it replaces.
    ("allreduce", ("nccl", "allreduce", "all_reduce", "one_shot", "two_shot", "barrier")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "cublas", "nvjet", "matmul", "::mm", "addmm", "::bmm", "::linear")),
    ("attention", ("_decode", "_prefill", "_pod", "combine", "attn", "flash")),
    ("kv_write", ("write_kv", "_kv_write")),
    ("elementwise", ("_add_rms_norm", "_rms_norm", "_rope", "_silu", "elementwise", "vectorized", "unrolled", "reduce_kernel")),
    ("sampling", ("argmax", "softmax", "sort", "exponential", "index")),
    ("copy", ("memcpy", "copy", "memset")),
]


def kernel_family(name: str) -> str:
    """The family of a kernel (or, on CPU, an operator) by its name."""
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


class StepProfiler:
    """Profiles the steps executed between ``start()`` and ``stop()`` (not re-entrant)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._prof = None
        self.steps = 0
        self._exit_hook = False

    @property
    def active(self) -> bool:
        return self._prof is not None

    def start(self) -> None:
        if self._prof is not None:
            raise RuntimeError("the profiler is already running (stop_profile() first)")
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # earlier steps' kernels stay out of the window
            activities.append(ProfilerActivity.CUDA)
        self.steps = 0
        self._prof = profile(activities=activities)
        self._prof.__enter__()
        if not self._exit_hook:  # a profiler still running at exit crashes torch's teardown (segfault)
            atexit.register(_discard_at_exit, weakref.ref(self))
            self._exit_hook = True

    def discard(self) -> None:
        """End the window, if any, without a summary."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)

    def on_step(self) -> None:
        """Count one executed step (the summary is per step)."""
        if self._prof is not None:
            self.steps += 1

    def stop(self, top: int = 40) -> dict:
        """End the window; a summary: device (CUDA) or operator (CPU) microseconds per step,
        by family and for the ``top`` kernels, with launches per step."""
        if self._prof is None:
            raise RuntimeError("the profiler is not running (start_profile() first)")
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        steps = max(self.steps, 1)
        per_kernel: dict[str, float] = defaultdict(float)
        launches: dict[str, int] = defaultdict(int)
        for ev in prof.key_averages():
            if cuda:
                if "CUDA" not in str(getattr(ev, "device_type", "")):
                    continue  # host operators: their kernels are device events of their own
                t = getattr(ev, "self_device_time_total", None)
                if t is None:
                    t = ev.self_cuda_time_total
            else:
                t = ev.self_cpu_time_total
            per_kernel[ev.key] += t / steps
            launches[ev.key] += ev.count
        families: dict[str, float] = defaultdict(float)
        for name, us in per_kernel.items():
            families[kernel_family(name)] += us
        ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
        return {
            "steps": self.steps, "device": str(self.device), "timer": "device" if cuda else "cpu-operator",
            "total_us_per_step": sum(per_kernel.values()),
            "families_us_per_step": dict(sorted(families.items(), key=lambda kv: -kv[1])),
            "kernels": [{"name": k, "family": kernel_family(k), "us_per_step": v,
                         "launches_per_step": launches[k] / steps} for k, v in ranked],
        }


def _discard_at_exit(ref) -> None:
    profiler = ref()
    if profiler is not None:
        profiler.discard()


def format_summary(summary: dict, title: str = "") -> str:
    """A few lines for a terminal: families, then the top kernels."""
    total = summary["total_us_per_step"]
    lines = [f"{title}{summary['steps']} steps, {summary['timer']} time {total / 1e3:.2f} ms/step"]
    for fam, us in summary["families_us_per_step"].items():
        lines.append(f"  {fam:<12}{us / 1e3:8.3f} ms  {us / max(total, 1e-9):6.1%}")
    for k in summary["kernels"][:15]:
        lines.append(f"  {k['us_per_step']:9.1f} us {k['launches_per_step']:6.1f}x  {k['family']:<11} {k['name'][:100]}")
    return "\n".join(lines)
