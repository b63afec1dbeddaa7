#!/usr/bin/env bash
# Sarathi-Serve's headline on CPU: capacity of stall-free (sarathi) vs prefill-first (vllm)
# batching under the strict P99 TBT SLO (5x a decode-only iteration), default SmolLM2-135M.
# arxiv_summarization trace lengths scaled by 1/4 and clipped to 64-1024 prompt tokens,
# outputs clipped to 64 tokens so a run stays within ~20 minutes on 2 cores (13 min on an idle VM).
# CHUNK (default 64): Sarathi-Serve picks the largest chunk whose hybrid iteration fits the TBT SLO;
# on that VM a 128-token chunk costs ~0.4 s, too close to the ~0.5 s strict SLO (docs/benchmarks-policies.md).
# Usage: benchmarks/capacity_policies.sh [OUTPUT_DIR]   (THREADS=n to change torch threads)
set -euo pipefail
out=${1:-runs/capacity-policies}
export OMP_NUM_THREADS=${THREADS:-2}
python -m podserve.entrypoints.cli capacity \
  --scheduler sarathi,vllm \
  --max-model-len 2048 --chunk-size ${CHUNK:-64} \
  --trace arxiv --length-scale 0.25 --min-prompt-tokens 64 --max-prompt-tokens 1024 --max-output-tokens 64 \
  --num-requests 24 --workload-seed 0 \
  --tbt-slo 5x --calibration-batch 8 --delay-slo 2 \
  --qps 0.25 --tolerance 0.2 --max-probes 7 --min-qps 0.04 \
  --output-dir "$out"
