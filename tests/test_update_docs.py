"""scripts/update_docs.py and the report's budget line: the paper-claim row says whether the
budget was equal, and names training done after the GPU windows."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import update_docs  # noqa: E402

from ilc_export.verify.report import _budget_line, finetune_parts  # noqa: E402


def test_budget_label_equal_unequal_and_finetuned():
    same = {"steps": 100, "wall_s": 590, "device": "cuda"}
    assert update_docs.budget_label({"ilc-q2": same, "baseline-q2": same}).startswith("equal budget (590 s on cuda")
    longer = {**same, "wall_s": 1053}
    assert update_docs.budget_label({"ilc-q2": longer, "baseline-q2": same}).startswith("**unequal budget**")
    tuned = {**same, "decoder_finetune_steps": 2400}
    label = update_docs.budget_label({"ilc-q2": tuned, "baseline-q2": same})
    assert label.startswith("**unequal budget**") and "2400 CPU steps of the ILC's g with h" in label
    assert update_docs.budget_label({}) == "equal budget"
    line = _budget_line({"ilc-q2": tuned, "baseline-q2": same})
    assert "ilc-q2: 100 steps, 590 s on cuda, then 2400 steps of g with h (f frozen)" in line
    assert line.rstrip().endswith("; baseline-q2: 100 steps, 590 s on cuda.")  # no fine-tune named for it
    post = {**tuned, "decoder_finetune_parts": "g and the post-filter"}
    assert "2400 CPU steps of the ILC's g and the post-filter with h" in update_docs.budget_label(
        {"ilc-q2": post, "baseline-q2": same})
    assert "then 2400 steps of g and the post-filter with h (f frozen)" in _budget_line({"ilc-q2": post})


def test_finetune_parts_names_what_was_trained():
    assert finetune_parts({"steps": 3, "refine_y": True}) == "g"
    assert finetune_parts({"post_hidden": 32}) == "g and the post-filter"
    assert finetune_parts({"post_hidden": 32, "hyper": True}) == "g, the post-filter and the hyperprior"
    assert finetune_parts({"hyper": True}) == "g and the hyperprior"
