"""Compile the attention kernels for sm_90 without a GPU and print their resource usage.

Runs anywhere Triton's bundled ptxas is present (no CUDA device needed):
``python benchmarks/compile_report.py [--head-dim 128] [--gqa 4]``. Reports
registers per thread, shared memory per program and the programs per SM those
allow on an H100 (65536 registers, 228 KiB shared memory, 2048 threads, 32
programs per SM).
"""
import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from podserve.kernels.decode import _decode_kernel, decode_config
from podserve.kernels.pod import _pod_kernel, pod_config
from podserve.kernels.prefill import _prefill_kernel, prefill_config
from podserve.kernels.utils import page_mode

H100 = dict(regs=65536, smem=228 * 1024, threads=2048, programs=32)


def _signature(fn, dtype: str, ints: set[str], floats: set[str], constexprs: dict) -> dict:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in floats:
            sig[name] = "fp32"
        elif name in ints:
            sig[name] = "i32"
        elif name in ("block_tables", "seq_lens", "cu_seqlens_q", "counters", "split_counters"):
            sig[name] = "*i32"
        elif name in ("part_o", "part_lse", "part_o_p", "part_lse_p"):
            sig[name] = "*fp32"
        else:
            sig[name] = f"*{dtype}"
    return sig


def compile_one(fn, constexprs: dict, num_warps: int, num_stages: int, dtype: str = "bf16",
                block_size: int = 16, maxnreg: int | None = None):
    """Compile ``fn`` for sm_90; returns the CompiledKernel (n_regs, metadata.shared)."""
    params = inspect.signature(fn.fn).parameters
    ints = {n for n in params if n.startswith(("stride", "num_", "first_", "split_len",
                                               "ratio", "bt_stride", "block_size",
                                               "max_splits", "p_split"))}
    sig = _signature(fn, dtype, ints, {"qk_scale"}, constexprs)
    # What a real launch specialises: pointers 16-byte aligned, strides divisible by 16
    # (without it no vectorised loads and no cp.async pipelining).
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(sig)
             if sig[n].startswith("*") or n.startswith("stride") or n == "bt_stride"
             or (n == "block_size" and block_size % 16 == 0)}
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    opts = dict(num_warps=num_warps, num_stages=num_stages)
    if maxnreg:
        opts["maxnreg"] = maxnreg
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def resources(k) -> tuple[int, int]:
    """(registers per thread, spill bytes): from the loaded kernel on a GPU, else cuobjdump."""
    try:
        k._init_handles()
        return k.n_regs, k.n_spills
    except Exception:
        pass
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        txt = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", txt).group(1))
    stack = int(re.search(r"STACK:(\d+)", txt).group(1))
    return regs, stack


def occupancy(regs: int, smem: int, warps: int) -> int:
    """Programs per SM allowed by registers, shared memory and threads (H100)."""
    threads = 32 * warps
    by_regs = H100["regs"] // max(1, regs * threads)
    by_smem = H100["smem"] // max(1, smem + 1024)  # 1 KiB reserved per block
    return min(by_regs, by_smem, H100["threads"] // threads, H100["programs"])


def prefill_constexprs(head_dim: int, gqa: int, block_size: int, split: bool = False) -> dict:
    """The standalone prefill kernel's constexprs as a launch for Llama-3-8B-like heads sets them."""
    pc = prefill_config(head_dim)
    return dict(NUM_Q_HEADS=8 * gqa, GQA=gqa, HEAD_DIM=head_dim, BLOCK_M=pc["BLOCK_M"],
                BLOCK_N=pc["BLOCK_N"], PAGE=page_mode(block_size, pc["BLOCK_N"]), SPLIT=split)


def decode_constexprs(head_dim: int, gqa: int, block_size: int) -> dict:
    dc = decode_config(head_dim)
    return dict(NUM_Q_HEADS=8 * gqa, GQA=gqa, G_PAD=max(16, triton.next_power_of_2(gqa)),
                HEAD_DIM=head_dim, BLOCK_N=dc["BLOCK_N"], PAGE=page_mode(block_size, dc["BLOCK_N"]),
                DIRECT=False)


def pod_constexprs(cfg: dict, head_dim: int, gqa: int, block_size: int, split_p: bool = False,
                   occupancy_policy: bool = False) -> dict:
    """The POD kernel's constexprs for tile config ``cfg`` (``pod_config`` or a tuned one)."""
    return dict(NUM_Q_HEADS=8 * gqa, NUM_KV_HEADS=8, SPLIT=True, SPLITS_BLOCK=16, GQA=gqa,
                G_PAD=max(16, triton.next_power_of_2(gqa)), HEAD_DIM=head_dim,
                BLOCK_M=cfg["BLOCK_M"], BLOCK_N_P=cfg["BLOCK_N_P"], BLOCK_N_D=cfg["BLOCK_N_D"],
                PAGE_P=page_mode(block_size, cfg["BLOCK_N_P"]),
                PAGE_D=page_mode(block_size, cfg["BLOCK_N_D"]), NUM_SMS=132, CTR_PAD=256,
                INTERPRET=False, OCCUPANCY=occupancy_policy, SPLIT_P=split_p)


def report(head_dim: int, gqa: int, block_size: int, dtype: str) -> list[dict]:
    """Each kernel as the engine launches it; prefill and POD also with split-KV prefill."""
    rows = []
    pc = prefill_config(head_dim)
    for split in (False, True):
        k = compile_one(_prefill_kernel, prefill_constexprs(head_dim, gqa, block_size, split),
                        pc["num_warps"], pc["num_stages"], dtype, block_size)
        rows.append(("prefill" + (" split-KV" if split else ""), pc["num_warps"], k))
    dc = decode_config(head_dim)
    k = compile_one(_decode_kernel, decode_constexprs(head_dim, gqa, block_size),
                    dc["num_warps"], dc["num_stages"], dtype, block_size)
    rows.append(("decode", dc["num_warps"], k))
    oc = pod_config(head_dim)
    for split_p in (False, True):
        k = compile_one(_pod_kernel, pod_constexprs(oc, head_dim, gqa, block_size, split_p, True),
                        oc["num_warps"], oc["num_stages"], dtype, block_size, oc.get("maxnreg"))
        rows.append(("pod" + (" split-KV prefill" if split_p else ""), oc["num_warps"], k))
    out = []
    for name, warps, k in rows:
        regs, spills = resources(k)
        out.append(dict(kernel=name, warps=warps, regs=regs, spill_or_stack=spills,
                        shared=k.metadata.shared,
                        programs_per_sm=occupancy(regs, k.metadata.shared, warps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--gqa", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dtype", default="bf16")
    a = ap.parse_args()
    for r in report(a.head_dim, a.gqa, a.block_size, a.dtype):
        print(r)


if __name__ == "__main__":
    main()
