"""BD metrics and the report renderer on synthetic curves (no model needed)."""
import math

import numpy as np
import pytest

from ilc_export.verify.rd import bd_psnr, bd_rate
from ilc_export.verify.report import bd_rate_crosscheck, render_html


def curve(bpp, psnr):
    return {"results": {"bpp": list(bpp), "psnr-rgb": list(psnr)}}


def test_bd_rate_of_a_scaled_curve():
    bpp = np.array([0.2, 0.4, 0.8, 1.6])
    psnr = 25 + 4 * np.log2(bpp / 0.2)
    anchor = curve(bpp, psnr)
    test = curve(bpp * 0.8, psnr)  # same quality at 80% of the bits
    assert bd_rate(anchor, test) == pytest.approx(-20.0, abs=0.01)
    assert bd_rate_crosscheck(anchor, test, "psnr-rgb") == pytest.approx(-20.0, abs=0.5)
    assert bd_psnr(anchor, curve(bpp, psnr + 1)) == pytest.approx(1.0, abs=1e-6)


def test_bd_rate_without_overlap_is_nan():
    a = curve([0.2, 0.4, 0.8], [25, 26, 27])
    b = curve([0.2, 0.4, 0.8], [30, 31, 32])
    assert math.isnan(bd_rate(a, b))
    assert bd_psnr(a, b) == pytest.approx(5.0, abs=1e-6)


def test_html_renders_tables_and_images():
    html = render_html("# T\n\n![x](rd.png)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<table" in html and "<img src=\"rd.png\"" in html and "<td>1</td>" in html


def test_bd_rate_refuses_non_monotonic_curves():
    a = curve([0.2, 0.4, 0.8], [25, 27, 29])
    b = curve([0.2, 0.3, 0.4], [26, 27, 25])  # quality falls at the top: BD-rate undefined
    assert math.isnan(bd_rate(a, b))


def test_pillow_curve_codes_real_files(tmp_path):
    """The anchors come from real Pillow files: bpp from the encoded size, PSNR of the decoded image."""
    from PIL import Image

    from ilc_export.verify.rd import pillow_curve

    rng = np.random.default_rng(0)
    img = np.clip(np.kron(rng.integers(0, 256, (8, 12, 3)), np.ones((8, 8, 1))) + rng.normal(0, 8, (64, 96, 3)), 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "a.png")
    c = pillow_curve(tmp_path, "JPEG", qualities=[10, 90])
    bpp, psnr = c["results"]["bpp"], c["results"]["psnr-rgb"]
    assert len(bpp) == 2 and 0 < bpp[0] < bpp[1] and 10 < psnr[0] < psnr[1] < 60
