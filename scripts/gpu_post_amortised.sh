#!/usr/bin/env bash
# Post phase of scripts/gpu_window.sh (POST_CMD="bash scripts/gpu_post_amortised.sh" POST_S=...):
# once the training has stopped, train the encoder add-on h of every ILC run against that run's
# final weights (an add-on does not carry over to another version of its model: docs/research.md
# section 10), all runs at once on the GPU until DEADLINE_AT; leave in SIDE each h as an add-on of
# the run's weights (<run>.encoder.safetensors, 1.1 MB) and its log. Shipping the run builds codec
# tables, which changes its model id; then relabel the add-on for the shipped checkpoint:
#     python scripts/amortised_refine.py ship --ckpt <shipped ckpt> --from-addon <side>/<run>.encoder.safetensors
# Starts from the shipped add-on of the run's model name, where there is one (AM_INIT=0: from zero).
# A run is a folder with model.safetensors and model.json (gpu_side_amortised.sh links the shipped
# checkpoints as runs). Env: RUNS, SIDE, DATA, DEADLINE_AT (from gpu_window.sh); AM_BATCH (8),
# AM_CROP (256), AM_DEVICE (cuda), AM_MARGIN (seconds kept before DEADLINE_AT for shipping, 15),
# AM_NOTE (the add-on's note, "GPU post phase").
set -uo pipefail
PY=${PYTHON:-python3}
MIN=$(awk -v d="$DEADLINE_AT" -v n="$(date +%s)" -v m="${AM_MARGIN:-15}" 'BEGIN { t = (d - n - m) / 60; printf "%.2f", (t > 0 ? t : 0) }')
names=()
for run in "$RUNS"/*/; do
  run=${run%/}; name=$(basename "$run")
  [ -f "$run/model.safetensors" ] && [ -f "$run/model.json" ] || continue
  read -r kind lmbda cname < <($PY -c 'import json, sys; c = json.load(open(sys.argv[1]))["config"]
print(c.get("kind"), c.get("lmbda"), c.get("name"))' "$run/model.json")
  [ "$kind" = ilc ] || continue
  # the lowest lambda learns with the noise rate proxy (the straight-through rate's gradient is biased there)
  if awk -v l="$lmbda" 'BEGIN { exit !(l < 0.004) }'; then extra=(--rate noise --lr 1e-4); else extra=(--lr 2e-4); fi
  addon="reference/ilc_reference/checkpoints/$cname.encoder.safetensors"
  if [ "${AM_INIT:-1}" = 1 ] && [ -f "$addon" ]; then extra+=(--init-addon "$addon"); fi
  $PY scripts/amortised_refine.py train --ckpt "$run/model.safetensors" --data "$DATA" --out "$SIDE/work_$name" \
      --minutes "$MIN" --batch "${AM_BATCH:-8}" --crop "${AM_CROP:-256}" --device "${AM_DEVICE:-cuda}" --threads 2 \
      "${extra[@]}" >"$SIDE/$name.stdout" 2>&1 &
  names+=("$name")
done
wait
for name in "${names[@]}"; do
  $PY scripts/amortised_refine.py ship --ckpt "$RUNS/$name/model.safetensors" --out "$SIDE/work_$name" \
      --addon "$SIDE/$name.encoder.safetensors" --note "${AM_NOTE:-GPU post phase}, batch ${AM_BATCH:-8}, weights of $name"
  gzip -c "$SIDE/work_$name/log.jsonl" >"$SIDE/log_$name.jsonl.gz"
  rm -rf "$SIDE/work_$name"
done
