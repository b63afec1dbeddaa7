"""Render the JSON written by benchmarks/attention.py as markdown tables.

    python benchmarks/attention_report.py docs/data/attention-h100-final.json
"""
import json
import math
import sys


def f(v, spec=".3f"):
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def hybrid(rows) -> str:
    out = ["| model (q/kv heads) | chunk @ prefix | decodes x ctx | **pod** | serial | streams "
           "| folded | sdpa | prefill alone | decode alone | pod vs serial | pod vs best alt "
           "| pod / max(p, d) |", "|" + "---|" * 13]
    heads = {"L3-8B-TP1": "32/8", "L3-8B-TP2": "16/4", "Yi-6B": "32/4"}
    for r in rows:
        out.append(
            f"| {r['model']} ({heads[r['model']]}) | {r['chunk']} @ {r['prefix']} "
            f"| {r['decodes']} x {r['ctx']} | **{f(r['pod'])}** | {f(r['serial'])} "
            f"| {f(r['streams'])} | {f(r['folded'])} | {f(r['sdpa'])} | {f(r['prefill'])} "
            f"| {f(r['decode'])} | {r['speedup_vs_serial']:.2f}x "
            f"| {r['speedup_vs_best_alt']:.2f}x ({r['best_alt']}) "
            f"| {r['pod_over_max_side']:.2f}{' (balanced)' if r['balanced'] else ''} |")
    return "\n".join(out)


def policies(rows) -> str:
    out = ["| config | even | proportional | occupancy |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} {r['chunk']}@{r['prefix']} + {r['decodes']}x{r['ctx']} "
                   f"| {f(r['pod_even'])} | {f(r['pod_prop'])} | {f(r['pod_occ'])} |")
    gm = {k: math.exp(sum(math.log(r['serial'] / r[k]) for r in rows) / len(rows))
          for k in ("pod_even", "pod_prop", "pod_occ")}
    out.append(f"| geomean speedup vs serial | {gm['pod_even']:.3f}x | {gm['pod_prop']:.3f}x "
               f"| {gm['pod_occ']:.3f}x |")
    return "\n".join(out)


def prefill(rows) -> str:
    out = ["| chunk @ prefix | own ms | own TFLOP/s | FA2 (flash) TFLOP/s | cuDNN TFLOP/s "
           "| efficient TFLOP/s | own / FA2 | own / cuDNN |", "|" + "---|" * 8]
    for r in rows:
        out.append(f"| {r['chunk']} @ {r['prefix']} | {f(r['own_ms'])} | {r['own_tflops']:.0f} "
                   f"| {r['flash_tflops']:.0f} | {r['cudnn_tflops']:.0f} "
                   f"| {r['efficient_tflops']:.0f} | {r['own_tflops'] / r['flash_tflops']:.2f} "
                   f"| {r['own_tflops'] / r['cudnn_tflops']:.2f} |")
    return "\n".join(out)


def decode(rows, copy_tbs) -> str:
    out = [f"| decodes x ctx | paged-16 TB/s | contiguous TB/s | SDPA best (dense) TB/s "
           f"| paged / copy ({copy_tbs:.2f} TB/s) | contiguous / SDPA | paged / SDPA |",
           "|" + "---|" * 7]
    for r in rows:
        out.append(f"| {r['decodes']} x {r['ctx']} | {r['paged16_tbs']:.2f} "
                   f"| {r['contig_tbs']:.2f} | {r['sdpa_tbs']:.2f} ({r['sdpa_backend']}) "
                   f"| {r['paged16_frac_copy']:.2f} | {r['contig_tbs'] / r['sdpa_tbs']:.2f} "
                   f"| {r['paged16_tbs'] / r['sdpa_tbs']:.2f} |")
    return "\n".join(out)


def main() -> None:
    d = json.load(open(sys.argv[1]))
    print("## Hybrid batches (ms)\n\n" + hybrid(d["hybrid"]) + "\n")
    print("## POD role policies (ms)\n\n" + policies(d["hybrid"]) + "\n")
    print("## Prefill\n\n" + prefill(d["prefill"]) + "\n")
    print("## Decode\n\n" + decode(d["decode"], d["copy_bandwidth_tbs"]) + "\n")
    print("summary:", json.dumps(d["summary"]))


if __name__ == "__main__":
    main()
