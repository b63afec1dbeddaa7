#!/usr/bin/env bash
# GPU measurements written on CPU and still waiting for a GPU, in priority order, for one
# device-tool call each (each part fits the 600 s per-call limit on an H100):
#
#   part 1  correctness: GPU kernel tests (split-KV prefill, recompiles), engine CUDA tests
#           (bf16 logits over ten prompts); then the prefill and decode sections with the
#           paged block size compiled in (default) and as a runtime value (PODSERVE_CONST_PAGE=0)
#   part 2  the split-KV sweep
#   part 3  the hybrid sweep with split-KV prefill (pod/serial vs pod_nosplit/serial_nosplit)
#   part 4  host time per decode step: schedule + enqueue, and a cProfile (issue 6's 10% target)
#   part 5  POD tile/policy re-tune with the constant page size (the SASS of the 8-warp
#           128x32 and 128x64 pairings changed most; docs/benchmarks-attention.md)
#
# Usage (device tool, from the repository root, .gpu/ carried for the gguf wheel):
#   PART=1 bash benchmarks/gpu_pending.sh        # results under $OUT
set -uo pipefail
export PYTHONPATH=$PWD:$PWD/.gpu/gguf-0.19.0-py3-none-any.whl
out=${OUT:-runs/gpu-pending}
mkdir -p "$out"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
case "${PART:-1}" in
1)
  timeout 150 python3 -m pytest -q -x tests/kernels/test_attention_kernels.py -k gpu 2>&1 | tail -5
  timeout 120 python3 -m pytest -q -x tests/gpu/test_engine_cuda.py 2>&1 | tail -5
  for cp in 1 0; do
    PODSERVE_CONST_PAGE=$cp timeout 140 python3 benchmarks/attention.py --sections prefill,decode \
      --out "$out/const_page$cp" 2>&1 | tail -16
  done
  ;;
2)
  timeout 580 python3 benchmarks/attention.py --sections split --policies even --out "$out/split" 2>&1 \
    | grep -E '^split|Error' | cut -c1-400
  ;;
3)
  timeout 580 python3 benchmarks/attention.py --sections correct,hybrid --policies even --out "$out/hybrid" 2>&1 | tail -25
  ;;
4)
  timeout 300 python3 benchmarks/profile_step.py --batch 128 --prompt-tokens 1024 --steps 10 --host-steps 50 \
    --out "$out/host" 2>&1 | tail -60
  ;;
5)
  timeout 580 python3 benchmarks/attention.py --sections tune_pod --out "$out/tune_pod" 2>&1 | grep -E "^tune|picked" | cut -c1-300
  ;;
esac
