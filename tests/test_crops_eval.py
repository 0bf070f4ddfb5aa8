"""scripts/crops_eval.py: a checkpoint without tables gets them, every crop goes through a real
file, and the local BD-rate against another evaluation is the per-crop formula's mean."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilc_reference.checkpoint import save_checkpoint
from ilc_reference.config import tiny_config
from ilc_reference.model import add_post_filter, build_model

from conftest import randomize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import crops_eval  # noqa: E402


def _pngs(d: Path, n: int, size: int, seed: int) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(base, np.ones((8, 8, 1), np.uint8))).save(d / f"c{i}.png")
    return d


def test_tableless_weights_are_tabled_and_compared_through_real_files(tmp_path, capsys):
    crops, calib = _pngs(tmp_path / "crops", 3, 64, 0), _pngs(tmp_path / "calib", 2, 128, 1)
    model = randomize(build_model(tiny_config("baseline")), scale=0.05, seed=0).eval()
    a = save_checkpoint(model, tmp_path / "a" / "model")
    b = save_checkpoint(randomize(add_post_filter(model, 4), scale=0.05, seed=1).eval(), tmp_path / "b" / "model")
    assert not crops_eval.has_tables(a)
    common = ["--crops", str(crops), "--calib", str(calib)]
    crops_eval.main(["--ckpt", str(a), "--json", str(tmp_path / "a.json"), *common])
    assert not crops_eval.has_tables(a)  # tabled in a temporary copy, the weights left as they were
    crops_eval.main(["--ckpt", str(b), "--json", str(tmp_path / "b.json"), "--vs", str(tmp_path / "a.json"), *common])
    ra, rb = (json.loads((tmp_path / f"{k}.json").read_text()) for k in "ab")
    assert [r["image"] for r in ra["rows"]] == ["c0.png", "c1.png", "c2.png"]
    assert all(r["bytes"] > 0 and r["bpp"] == 8 * r["bytes"] / 64**2 for r in ra["rows"])
    d = [math.log(y["bpp"] / x["bpp"]) - (y["psnr"] - x["psnr"]) / 1.547 for x, y in zip(ra["rows"], rb["rows"])]
    assert rb["vs"]["local_bd_rate"] == pytest.approx(math.exp(np.mean(d)) - 1)
    assert rb["vs"]["better"] == sum(v < 0 for v in d) and rb["vs"]["crops"] == 3
    assert rb["psnr"] != ra["psnr"]  # the filter changed the decode
    assert "local BD-rate" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists"):  # never overwritten
        crops_eval.main(["--ckpt", str(a), "--json", str(tmp_path / "a.json"), *common])
    with pytest.raises(SystemExit, match="no .png crops"):
        crops_eval.main(["--ckpt", str(a), "--json", str(tmp_path / "c.json"), "--crops", str(tmp_path), "--calib", str(calib)])


def test_a_runs_encoder_addon_is_carried_into_the_tabled_copy(tmp_path):
    """Building tables changes the model id; the add-on trained for the weights must follow it,
    or the run is evaluated without it (its decoder was trained on the add-on's latents)."""
    import shutil

    import torch

    from ilc_export.contract.encoder_addon import addon_path, read_addon_meta
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.encoder_addon import LatentCorrection, save_addon

    crops, calib = _pngs(tmp_path / "crops", 2, 64, 2), _pngs(tmp_path / "calib", 2, 128, 3)
    model = randomize(build_model(tiny_config("ilc")), scale=0.05, seed=2).eval()
    a = save_checkpoint(model, tmp_path / "a" / "model")
    bare = tmp_path / "bare" / a.name
    bare.parent.mkdir()
    shutil.copyfile(a, bare)
    h = LatentCorrection(model.cfg.latent_channels, model.cfg.z_channels, hidden=4)
    with torch.no_grad():
        h.net[-1].weight.normal_(0, 0.5)
    save_addon(h, addon_path(a), model_id_of_file(a), {"steps": 1})
    common = ["--crops", str(crops), "--calib", str(calib)]
    crops_eval.main(["--ckpt", str(a), "--json", str(tmp_path / "a.json"), *common])
    crops_eval.main(["--ckpt", str(bare), "--json", str(tmp_path / "bare.json"), *common])
    ra, rb = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("a", "bare"))
    assert ra["encoder_addon"] is True and rb["encoder_addon"] is False
    assert [r["bytes"] for r in ra["rows"]] != [r["bytes"] for r in rb["rows"]] or ra["psnr"] != rb["psnr"]
    assert not crops_eval.has_tables(a) and read_addon_meta(addon_path(a))["serves"] == model_id_of_file(a)  # untouched
