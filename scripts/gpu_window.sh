#!/usr/bin/env bash
# One GPU window in one call: check and unpack a training bundle, train every model of its plan
# until the deadline (checkpointing as it goes), and pack the run folders into $OUT for the trip
# back (at most 8 files of at most 16 MiB). See docs/training.md.
#
#   bash scripts/gpu_window.sh [BUNDLE] [SECONDS] [ilc-train-multi args ...]
#
# BUNDLE   bundle folder made by `python -m ilc_reference.bundle pack` (default gpu_window/bundle)
# SECONDS  wall-clock budget of the whole script, packing included (default 540); keep it well
#          under the run's timeout_s (600 at most)
# extra args go to ilc_reference.multitrain, e.g. --set device=cuda amp=bf16 --mode procs
# Env: OUT (results folder; default /tmp/ilc_window_out), WORK (scratch; default /tmp/ilc_window),
#      RESERVE_S (seconds kept for packing; default 30), PYTHON (default python3),
#      BENCH_S (if set: first spend about this long on scripts/train_bench.py, which measures
#      pixels/s per model per speed-up flag set into runs/bench.jsonl; training gets the rest),
#      SIDE_CMD (if set: a command run beside the training, with SIDE (a folder to write its
#      results to), DATA (the bundle's images) and DEADLINE_AT (epoch s by which it must have
#      saved) exported; it must stop by itself by then. SIDE goes back as side.tar, and the
#      training results get what the transfer limits leave),
#      POST_CMD (if set: the training stops POST_S seconds early (default 120), then this command
#      runs until DEADLINE_AT with SIDE, DATA, DEADLINE_AT and RUNS (the run folders, each with
#      its final model.safetensors) exported, e.g. to fit something to the finished weights;
#      its log and SIDE go back in side.tar).
set -uo pipefail
T0=$(date +%s)
BUNDLE=${1:-gpu_window/bundle}
SECONDS_BUDGET=${2:-540}
shift $(( $# < 2 ? $# : 2 ))
OUTDIR=${OUT:-/tmp/ilc_window_out}
WORK=${WORK:-/tmp/ilc_window}
RESERVE=${RESERVE_S:-30}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/reference:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR" "$WORK/runs"
LOG="$WORK/runs/window.log"
{
  echo "window start $(date -u +%FT%TZ) budget ${SECONDS_BUDGET}s reserve ${RESERVE}s"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee -a "$LOG"
$PY -m ilc_reference.bundle unpack "$BUNDLE" --work "$WORK" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "unpack failed" | tee -a "$LOG"; cp "$LOG" "$OUTDIR/"; exit 1; }
if [ -n "${BENCH_S:-}" ]; then
  $PY scripts/train_bench.py --time-limit-s "$BENCH_S" --warmup 3 --steps 10 \
      --json "$WORK/runs/bench.jsonl" ${BENCH_ARGS:-} 2>&1 | tee -a "$LOG"
fi
DEADLINE_AT=$(( T0 + SECONDS_BUDGET - RESERVE ))
TRAIN_DEADLINE=$DEADLINE_AT
[ -n "${POST_CMD:-}" ] && TRAIN_DEADLINE=$(( DEADLINE_AT - ${POST_S:-120} ))
SIDE_PID=
if [ -n "${SIDE_CMD:-}${POST_CMD:-}" ]; then
  export SIDE="$WORK/side" DATA="$(cd "$BUNDLE" && pwd)/data" DEADLINE_AT
  mkdir -p "$SIDE"
fi
if [ -n "${SIDE_CMD:-}" ]; then
  ( bash -c "$SIDE_CMD" ) >"$WORK/runs/side.log" 2>&1 &
  SIDE_PID=$!
fi
$PY -m ilc_reference.multitrain --plan "$WORK/plan.json" --out-root "$WORK/runs" \
    --deadline-at "$TRAIN_DEADLINE" "$@" 2>&1 | tee -a "$LOG"
TRAIN_RC=${PIPESTATUS[0]}
echo "training exit $TRAIN_RC after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
if [ -n "${POST_CMD:-}" ]; then
  export RUNS="$WORK/runs"
  ( bash -c "$POST_CMD" ) >"$SIDE/post.log" 2>&1
  echo "post command exit $? after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
fi
PACK_ARGS=()
if [ -n "$SIDE_PID" ]; then
  wait "$SIDE_PID"; echo "side command exit $? after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
fi
if [ -n "${SIDE_CMD:-}${POST_CMD:-}" ]; then
  tar -C "$WORK" -cf "$OUTDIR/side.tar" side
  SIDE_MIB=$(( ($(stat -c %s "$OUTDIR/side.tar") >> 20) + 1 ))
  PACK_ARGS=(--max-files 7 --total-mib $(( 64 - SIDE_MIB )))
fi
$PY -m ilc_reference.bundle pack-results "$WORK/runs" --out "$OUTDIR" "${PACK_ARGS[@]}" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
echo "window done after $(( $(date +%s) - T0 ))s" | tee -a "$LOG"
[ "$RC" -eq 0 ] || cp "$LOG" "$OUTDIR/"
exit $(( RC ? RC : TRAIN_RC ))
