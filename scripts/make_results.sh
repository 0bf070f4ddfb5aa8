#!/usr/bin/env bash
# Regenerate every published number from the shipped checkpoints (8.5 min on the 2-core machine, otherwise idle).
#   bash scripts/make_results.sh [KODAK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
KODAK=${1:-../shared/data/kodak}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
mkdir -p docs/results
for q in 1 2 3; do
  $BIN/ilc-export onnx --ckpt reference/ilc_reference/checkpoints/ilc-q$q.safetensors --out engines/ilc-q$q/onnx --fp16 --force
done
for q in 1 2 3; do
  $BIN/ilc-export verify engines/ilc-q$q/onnx --image "$KODAK/kodim01.png" --image "$KODAK/kodim23.png" \
      --threads 2 --json docs/results/parity_q$q.json --force || true   # a failure is reported in the table
done
$BIN/ilc-run report "$KODAK" --out docs/results --backends torch,onnxruntime \
    --parity docs/results/parity_q1.json --parity docs/results/parity_q2.json --parity docs/results/parity_q3.json
$PY scripts/runtime_checks.py --images "$KODAK" --out docs/results/runtime_checks.json
$PY scripts/cross_backend.py --ckpt reference/ilc_reference/checkpoints/ilc-q2.safetensors --onnx engines/ilc-q2/onnx \
    --images "$KODAK" --threads 2 --json docs/results/cross_backend_q2.json
$PY scripts/reference_card.py --images "$KODAK" --out docs/results/reference_estimated.json
$BIN/ilc-export trt --onnx engines/ilc-q2/onnx --out engines/ilc-q2/trt --force 2>&1 | tee docs/results/trt_build_q2_fp32.txt
$BIN/ilc-export trt --onnx engines/ilc-q2/onnx --out engines/ilc-q2/trt-fp16 --fp16 --force 2>&1 | tee docs/results/trt_build_q2_fp16.txt
$PY scripts/update_docs.py
