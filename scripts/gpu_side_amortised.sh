#!/usr/bin/env bash
# Side job of scripts/gpu_window.sh (SIDE_CMD="bash scripts/gpu_side_amortised.sh"): the post
# phase's h training (gpu_post_amortised.sh), beside the main training and against the shipped
# q1-q3 as they are, until DEADLINE_AT; leaves in SIDE each h as an encoder add-on of the shipped
# model (ilc-q<N>.encoder.safetensors, ~1.1 MB) and its log. Useful only for models the window
# does not retrain: an add-on does not carry over to another version of its model.
# Env: SIDE, DATA, DEADLINE_AT (from gpu_window.sh), AM_QUALITIES ("1 2 3"), and those of
# gpu_post_amortised.sh.
set -uo pipefail
ck="$PWD/reference/ilc_reference/checkpoints"
links="$SIDE/shipped"
for q in ${AM_QUALITIES:-1 2 3}; do  # each shipped checkpoint as a run folder
  mkdir -p "$links/ilc-q$q"
  ln -sf "$ck/ilc-q$q.safetensors" "$links/ilc-q$q/model.safetensors"
  ln -sf "$ck/ilc-q$q.json" "$links/ilc-q$q/model.json"
done
RUNS="$links" AM_MARGIN="${AM_MARGIN:-20}" AM_NOTE="${AM_NOTE:-GPU side job}" bash scripts/gpu_post_amortised.sh
rc=$?
rm -rf "$links"
exit $rc
