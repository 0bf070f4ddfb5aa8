#!/usr/bin/env bash
# Side job of scripts/gpu_window.sh (SIDE_CMD="bash scripts/gpu_side_amortised.sh"): train the
# amortised refinement h of q1-q3 (scripts/amortised_refine.py) beside the main training, on the
# same GPU, until DEADLINE_AT; leave in SIDE each h without Adam's moments (h.pt, ~4.6 MB: the
# transfer back is 16 MiB per file) and its log. Env: SIDE, DATA, DEADLINE_AT (from gpu_window.sh),
# AM_BATCH (8), AM_QUALITIES ("1 2 3"), AM_DEVICE (cuda).
set -uo pipefail
PY=${PYTHON:-python3}
MIN=$(awk -v d="$DEADLINE_AT" -v n="$(date +%s)" 'BEGIN { printf "%.2f", (d - n - 20) / 60 }')
for q in ${AM_QUALITIES:-1 2 3}; do
  if [ "$q" = 1 ]; then extra=(--rate noise --lr 1e-4); else extra=(--lr 2e-4); fi
  $PY scripts/amortised_refine.py train --ckpt "reference/ilc_reference/checkpoints/ilc-q$q.safetensors" \
      --data "$DATA" --out "$SIDE/work_q$q" --minutes "$MIN" --batch "${AM_BATCH:-8}" --device "${AM_DEVICE:-cuda}" \
      --threads 2 "${extra[@]}" >"$SIDE/q$q.stdout" 2>&1 &
done
wait
for q in ${AM_QUALITIES:-1 2 3}; do
  $PY - "$SIDE/work_q$q" "$SIDE/h_q$q.pt" <<'PYEOF'
import sys, torch
s = torch.load(sys.argv[1] + "/h.pt", map_location="cpu")
torch.save({k: v for k, v in s.items() if k != "opt"}, sys.argv[2])
print(sys.argv[2], "step", s["step"])
PYEOF
  gzip -c "$SIDE/work_q$q/log.jsonl" >"$SIDE/log_q$q.jsonl.gz"
  rm -rf "$SIDE/work_q$q"
done
