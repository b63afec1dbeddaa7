"""Where the attention kernels' instructions go, from their sm_90 SASS (no GPU needed).

Compiles the standalone prefill, decode and POD kernels for an H100 with Triton's bundled
ptxas (as ``compile_report.py`` does), disassembles them with the bundled ``cuobjdump`` and
reports, per kernel, the instruction mix and each key loop's body: how many instructions
one iteration issues, how many of them are tensor-core ops (``HGMMA``: Hopper warpgroup
MMA; ``HMMA``: the older warp-level MMA), and local-memory spills (``STL``/``LDL``).
``instructions_per_64x128_step`` normalises a prefill loop's iteration to 64 query rows x
128 keys per warp of a warpgroup, so prefill tile shapes compare (the decode loops, on
16-row GQA tiles, use the warp-level ``HMMA`` and are not normalised).

    PYTHONPATH=. python3 benchmarks/sass_report.py [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compile_report as cr  # noqa: E402

from podserve.kernels.decode import _decode_kernel, decode_config  # noqa: E402
from podserve.kernels.pod import _pod_kernel, pod_config  # noqa: E402
from podserve.kernels.prefill import _prefill_kernel, prefill_config  # noqa: E402

OPS = ("HGMMA", "HMMA", "LDGSTS", "LDSM", "LDS", "STS", "MUFU", "FFMA", "FMNMX", "SHFL", "STL", "LDL")


def sass_ops(kernel) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """(address, opcode) of every instruction of a compiled kernel, and the (target,
    address) span of every backward branch (a loop body)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    out, back = [], []
    for line in text.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,8})\*/\s+(.*?);", line)
        if m:
            addr, words = int(m.group(1), 16), m.group(2).split()
            op = words[1] if words[0].startswith("@") else words[0]
            out.append((addr, op))
            target = re.search(r"BRA\s+0x([0-9a-f]+)", m.group(2))
            if target and int(target.group(1), 16) < addr:
                back.append((int(target.group(1), 16), addr))
    return out, back


def analyse(kernel, rows: int | None, keys: int | None) -> dict:
    ops, back = sass_ops(kernel)
    count = collections.Counter(op.split(".")[0] for _, op in ops)
    regs, spill = cr.resources(kernel)
    res = {"instructions": len(ops), "registers": regs, "spill_or_stack_bytes": spill,
           "mix": {k: count[k] for k in OPS if count[k]}, "loops": []}
    for lo, hi in sorted(back):
        body = [op.split(".")[0] for a, op in ops if lo <= a <= hi]
        c = collections.Counter(body)
        if not (c["HGMMA"] or c["HMMA"]):
            continue  # not a key loop (combine, reductions)
        loop = {"span": f"0x{lo:x}-0x{hi:x}", "instructions": len(body), **{k: c[k] for k in OPS if c[k]}}
        if rows and keys and c["HGMMA"]:  # a prefill-role loop (decode tiles use HMMA)
            loop["instructions_per_64x128_step"] = round(len(body) * (64 / min(rows, 64)) * (128 / keys))
        res["loops"].append(loop)
    return res


def kernels(gqa: int = 4, block_size: int = 16) -> dict:
    """The kernels as the engine launches them for Llama-3-8B (32/8 heads, D=128, bf16)."""
    out = {}
    pc, dc, oc = prefill_config(128), decode_config(128), pod_config(128)
    k = cr.compile_one(_prefill_kernel, cr.prefill_constexprs(128, gqa, block_size),
                       pc["num_warps"], pc["num_stages"], "bf16", block_size)
    out["prefill (128x128, 8 warps)"] = (k, pc["BLOCK_M"] // (pc["num_warps"] // 4), pc["BLOCK_N"])
    k = cr.compile_one(_decode_kernel, cr.decode_constexprs(128, gqa, block_size),
                       dc["num_warps"], dc["num_stages"], "bf16", block_size)
    out["decode (16-row GQA tile x 64 keys, 4 warps)"] = (k, None, None)
    for cap in (oc.get("maxnreg"), None):
        k = cr.compile_one(_pod_kernel, cr.pod_constexprs(oc, 128, gqa, block_size),
                           oc["num_warps"], oc["num_stages"], "bf16", block_size, cap)
        name = f"POD (64x32 prefill, 4 warps, {'cap ' + str(cap) if cap else 'uncapped'})"
        out[name] = (k, oc["BLOCK_M"], oc["BLOCK_N_P"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    a = ap.parse_args()
    report = {}
    for name, (k, rows, keys) in kernels().items():
        report[name] = analyse(k, rows, keys)
        r = report[name]
        print(f"{name}: {r['instructions']} instructions, {r['registers']} registers, "
              f"{r['spill_or_stack_bytes']} B spill/stack; {r['mix']}")
        for loop in r["loops"]:
            print("   loop", json.dumps(loop))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
