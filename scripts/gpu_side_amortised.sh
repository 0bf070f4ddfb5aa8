#!/usr/bin/env bash
# Side job of scripts/gpu_window.sh (SIDE_CMD="bash scripts/gpu_side_amortised.sh"): train the
# amortised refinement h of q1-q3 (scripts/amortised_refine.py) beside the main training, on the
# same GPU, until DEADLINE_AT, starting from the shipped encoder add-on where there is one; leave
# in SIDE each h as an encoder add-on of the shipped model (ilc-q<N>.encoder.safetensors, ~1.1 MB)
# and its log. Env: SIDE, DATA, DEADLINE_AT (from gpu_window.sh), AM_BATCH (8), AM_QUALITIES
# ("1 2 3"), AM_DEVICE (cuda).
set -uo pipefail
PY=${PYTHON:-python3}
MIN=$(awk -v d="$DEADLINE_AT" -v n="$(date +%s)" 'BEGIN { printf "%.2f", (d - n - 20) / 60 }')
for q in ${AM_QUALITIES:-1 2 3}; do
  if [ "$q" = 1 ]; then extra=(--rate noise --lr 1e-4); else extra=(--lr 2e-4); fi
  addon="reference/ilc_reference/checkpoints/ilc-q$q.encoder.safetensors"
  if [ -f "$addon" ]; then extra+=(--init-addon "$addon"); fi
  $PY scripts/amortised_refine.py train --ckpt "reference/ilc_reference/checkpoints/ilc-q$q.safetensors" \
      --data "$DATA" --out "$SIDE/work_q$q" --minutes "$MIN" --batch "${AM_BATCH:-8}" --device "${AM_DEVICE:-cuda}" \
      --threads 2 "${extra[@]}" >"$SIDE/q$q.stdout" 2>&1 &
done
wait
for q in ${AM_QUALITIES:-1 2 3}; do
  $PY scripts/amortised_refine.py ship --ckpt "reference/ilc_reference/checkpoints/ilc-q$q.safetensors" \
      --out "$SIDE/work_q$q" --addon "$SIDE/ilc-q$q.encoder.safetensors" --note "GPU side job, batch ${AM_BATCH:-8}"
  gzip -c "$SIDE/work_q$q/log.jsonl" >"$SIDE/log_q$q.jsonl.gz"
  rm -rf "$SIDE/work_q$q"
done
