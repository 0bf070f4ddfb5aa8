"""scripts/training_curves.py on synthetic logs with known curves."""
from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import training_curves  # noqa: E402


def _write(path: Path, steps: int, a: float, b: float, seconds: float) -> None:
    with gzip.open(path, "wt") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "loss": a + b * math.log(s), "bpp": 0.4, "psnr": 27.0,
                                "wall": seconds * s / steps}) + "\n")


def test_steps_to_reach_the_other_curve(tmp_path):
    # ILC: 1.6 - 0.05 ln(s), 3000 steps; baseline: 1.45 - 0.08 ln(s), 9000 steps, same time
    _write(tmp_path / "ilc-q2.log.jsonl.gz", 3000, 1.6, -0.05, 600)
    _write(tmp_path / "baseline-q2.log.jsonl.gz", 9000, 1.45, -0.08, 600)
    res = training_curves.compare(tmp_path, phase_s=600)
    r = res["q2"]
    assert r["ilc"]["slope_per_ln_step"] == pytest.approx(-0.05, abs=1e-9)
    assert r["baseline"]["slope_per_ln_step"] == pytest.approx(-0.08, abs=1e-9)
    base_final = np.mean([1.45 - 0.08 * math.log(s) for s in range(8701, 9001)])
    assert r["ilc_steps_to_baseline_final_loss"] == pytest.approx(math.exp((base_final - 1.6) / -0.05), rel=1e-6)
    assert r["equal_steps"]["1000"]["ilc"] > r["equal_steps"]["1000"]["baseline"]
    assert set(res) == {"q2"}  # q1, q3 have no logs


def test_cli_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit):
        training_curves.main([str(tmp_path)])
