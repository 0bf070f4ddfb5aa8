"""scripts/ab_protocol.py: the comparison arithmetic and the held-out split."""
import importlib.util
import math

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def ab():
    spec = importlib.util.spec_from_file_location("ab_protocol", ROOT / "scripts" / "ab_protocol.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_point_vs_curve(ab):
    curve = {"bpp": [0.1, 0.2, 0.4], "psnr-rgb": [26.0, 27.0, 28.0]}
    assert ab.point_vs_curve({"bpp": 0.2, "psnr-rgb": 27.0}, curve) == pytest.approx(0.0, abs=1e-9)
    # same PSNR, 10 % more bits
    assert ab.point_vs_curve({"bpp": 0.22, "psnr-rgb": 27.0}, curve) == pytest.approx(10.0)
    # halfway between points in PSNR -> geometric mean in rate
    assert ab.point_vs_curve({"bpp": math.sqrt(0.02), "psnr-rgb": 26.5}, curve) == pytest.approx(0.0, abs=1e-9)
    # outside the curve: the end segment is extended
    assert ab.point_vs_curve({"bpp": 0.8, "psnr-rgb": 29.0}, curve) == pytest.approx(0.0, abs=1e-9)


def test_local_bd_rate(ab):
    a = {"bpp": 0.3, "psnr-rgb": 27.0}
    assert ab.local_bd_rate(a, a, 1.5) == pytest.approx(0.0)
    assert ab.local_bd_rate(a, {"bpp": 0.33, "psnr-rgb": 27.0}, 1.5) == pytest.approx(10.0)
    # +s dB at the same rate = the rate of a point one ln-unit lower: exp(-1) - 1
    assert ab.local_bd_rate(a, {"bpp": 0.3, "psnr-rgb": 28.5}, 1.5) == pytest.approx(100 * (math.exp(-1) - 1))
    s = ab._slope_at(ab.GPU_CURVES["ilc_gpu"], 1)
    assert 1.0 < s < 2.0


def test_heldout_split_is_fixed_and_disjoint(ab, tmp_path):
    if not ab.DATA.exists():
        pytest.skip(f"no training data at {ab.DATA}")
    assert len(ab.HELDOUT) == 22 and ab.HELDOUT[0] == "bsds500/100007.jpg"
    tr, ho = ab._link_split(tmp_path)
    train = {p.name for p in tr.iterdir()}
    held = {p.name for p in ho.iterdir()}
    assert len(held) == 22 and not train & held
    assert len(train) + len(held) == sum(1 for s in ("bsds500", "sunhays80") for p in (ab.DATA / s).iterdir()
                                         if p.suffix.lower() in {".jpg", ".png"})
