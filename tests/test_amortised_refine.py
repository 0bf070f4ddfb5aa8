"""scripts/amortised_refine.py: the correction starts as the identity, trains, and its files
decode with the plain decoder."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import amortised_refine  # noqa: E402

CKPT = ROOT / "reference" / "ilc_reference" / "checkpoints" / "ilc-q2.safetensors"


def test_correction_starts_as_identity():
    h = amortised_refine.Correction(4, 6, hidden=8)
    y, z = torch.randn(1, 4, 3, 5), torch.randn(1, 6, 3, 5)
    assert torch.equal(h(y, z), y)


def test_train_then_eval_through_real_files(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        img = (rng.random((80, 96, 3)) * 40 + np.linspace(0, 200, 96)[None, :, None]).astype(np.uint8)
        Image.fromarray(img).save(data / f"im{i}.png")
    out = tmp_path / "run"
    amortised_refine.main(["train", "--ckpt", str(CKPT), "--data", str(data), "--out", str(out), "--steps", "3",
                           "--batch", "1", "--crop", "64", "--hidden", "8", "--lr", "1e-3"])
    state = torch.load(out / "h.pt")
    assert state["step"] == 3
    assert state["h"]["net.4.weight"].abs().sum() > 0  # the zero-initialised last conv moved
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["loss"] == pytest.approx(rows[0]["base"], rel=1e-6)  # identity at step 1
    crops = tmp_path / "crops"
    crops.mkdir()
    Image.fromarray(np.asarray(Image.open(data / "im0.png"))[:64, :64]).save(crops / "c.png")
    amortised_refine.main(["eval", "--ckpt", str(CKPT), "--out", str(out), "--crops", str(crops)])
    res = json.loads((out / "eval.json").read_text())
    assert res["summary"]["images"] == 1 and res["rows"][0]["psnr"] > 15 and res["rows"][0]["bpp"] > 0
    assert res["summary"]["tiles"] == 1 and res["summary"]["tiles_refined"] == 1  # always h without --keep-better
    amortised_refine.main(["eval", "--ckpt", str(CKPT), "--out", str(out), "--crops", str(crops), "--keep-better",
                           "--tag", "_kb"])
    kb = json.loads((out / "eval_kb.json").read_text())["summary"]
    assert kb["keep_better"] and kb["tiles"] == 1 and kb["tiles_refined"] in (0, 1)
    # --plain: the same crop without h, through real files, for models no records fit
    from ilc_export.pipeline.api import open_codec
    from ilc_export.pipeline.image_io import load_rgb
    from ilc_export.pipeline.metrics import psnr

    amortised_refine.main(["eval", "--ckpt", str(CKPT), "--out", str(out), "--crops", str(crops), "--plain",
                           "--tag", "_plain"])
    pl = json.loads((out / "eval_plain.json").read_text())
    img = load_rgb(crops / "c.png")[0]
    plain_codec = open_codec(CKPT, backend="torch", encoder_addon=False)
    data0, _ = plain_codec.compress(img)
    assert pl["rows"][0]["bpp_0"] == 8 * len(data0) / img[..., 0].size
    assert pl["rows"][0]["psnr_0"] == pytest.approx(psnr(img, plain_codec.decompress(data0)[0]))
    assert pl["rows"][0]["bpp"] == res["rows"][0]["bpp"] and "local_bd_vs_0" in pl["summary"]
    # report: curves on the same crops as refine_ab's records
    rec = tmp_path / "records"
    rec.mkdir()
    for kind, bpp in (("ilc", 0.5), ("baseline", 0.4)):
        (rec / f"{kind}.jsonl").write_text("".join(json.dumps({"q": 2, "image": "c.png", "iters": it, "bpp": bpp, "psnr": 25.0 + it / 100})
                                                   + "\n" for it in (0, 60)))
    amortised_refine.main(["report", str(out / "eval_kb.json"), "--records", str(rec), "--json", str(tmp_path / "rep.json")])
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["table"]["ILC amortised"]["curve"]["bpp"] == [pytest.approx(res["rows"][0]["bpp"])]
    assert rep["table"]["ILC refine 60"]["curve"]["psnr-rgb"] == [pytest.approx(25.6)]
    assert rep["images"] == ["c.png"]

    # ship: h as an encoder add-on the torch backend then uses (written elsewhere than next to
    # the shipped checkpoint, whose own add-on stays as it is)
    from ilc_export.contract.encoder_addon import read_addon_meta
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.encoder_addon import load_addon

    dst = tmp_path / "h.encoder.safetensors"
    amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out), "--addon", str(dst), "--note", "t"])
    h = load_addon(dst, model_id_of_file(CKPT))
    assert torch.allclose(h.state_dict()["net.4.weight"], state["h"]["net.4.weight"], atol=1e-3)
    with pytest.raises(SystemExit, match="exists"):
        amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out), "--addon", str(dst)])
    # --from-addon: an add-on relabelled for a checkpoint (here the same weights), weights kept
    re = tmp_path / "re.encoder.safetensors"
    amortised_refine.main(["ship", "--ckpt", str(CKPT), "--from-addon", str(dst), "--addon", str(re)])
    assert torch.equal(load_addon(re, model_id_of_file(CKPT)).state_dict()["net.4.weight"], h.state_dict()["net.4.weight"])
    info = read_addon_meta(re)["info"]
    assert info["relabelled_from"] == model_id_of_file(CKPT) and info["steps"] == torch.load(out / "h.pt")["step"] and info["note"] == "t"
    with pytest.raises(SystemExit, match="one of"):
        amortised_refine.main(["ship", "--ckpt", str(CKPT), "--addon", str(tmp_path / "x.encoder.safetensors")])
    # --init-addon: a new run starts from the shipped h (lr 0: it stays there)
    warm = tmp_path / "warm"
    amortised_refine.main(["train", "--ckpt", str(CKPT), "--data", str(data), "--out", str(warm), "--steps", "1",
                           "--batch", "1", "--crop", "64", "--hidden", "8", "--lr", "0", "--init-addon", str(dst)])
    assert torch.equal(torch.load(warm / "h.pt")["h"]["net.4.weight"], h.state_dict()["net.4.weight"])


def test_shipping_a_new_model_retires_the_addon_of_the_old_one(tmp_path):
    import shutil

    import ship_models
    from ilc_export.contract.encoder_addon import addon_path
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.encoder_addon import LatentCorrection, save_addon

    ckpt = tmp_path / "ilc-q2.safetensors"
    shutil.copyfile(CKPT, ckpt)
    save_addon(LatentCorrection(96, 672, hidden=4), addon_path(ckpt), model_id_of_file(ckpt))
    run = tmp_path / "run"
    run.mkdir()
    ship_models.retire_addon(ckpt, model_id_of_file(ckpt), run)  # serves this model: stays
    assert addon_path(ckpt).is_file()
    ship_models.retire_addon(ckpt, "f" * 32, run)  # the checkpoint now holds another model
    assert not addon_path(ckpt).exists() and (run / "retired-ilc-q2.encoder.safetensors").is_file()


def test_train_g_with_h_makes_a_new_decoder_as_a_run(tmp_path):
    """--train-g: g (grown with the y head) learns with h while f and the hyperprior stay frozen;
    eval decodes with that g; ship writes the new model as a run folder, never in place."""
    from PIL import Image
    from safetensors.torch import load_file

    from ilc_export.contract.model_id import model_id_of_file
    from ilc_reference.checkpoint import load_model, read_config

    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    img = (rng.random((64, 64, 3)) * 60 + np.linspace(0, 180, 64)[None, :, None]).astype(np.uint8)
    Image.fromarray(img).save(data / "im.png")
    out = tmp_path / "dec"
    args = ["train", "--ckpt", str(CKPT), "--data", str(data), "--out", str(out), "--batch", "1", "--crop", "64",
            "--hidden", "8", "--lr", "1e-3", "--train-g", "--refine-y", "--g-lr", "1e-5"]
    amortised_refine.main(args + ["--steps", "2"])
    amortised_refine.main(args[:11] + ["--steps", "3"])  # resumes h and g as stored, flags or not
    state = torch.load(out / "h.pt")
    assert state["step"] == 3 and state["decoder"] == {"g_hidden": None, "refine_y": True}
    head = state["g"]["net.4.weight"][:96]  # the y head, zero at the start
    assert head.abs().sum() > 0
    crops = tmp_path / "crops"
    crops.mkdir()
    Image.fromarray(img).save(crops / "c.png")
    amortised_refine.main(["eval", "--ckpt", str(CKPT), "--out", str(out), "--crops", str(crops), "--plain"])
    row = json.loads((out / "eval.json").read_text())["rows"][0]
    assert row["psnr"] > 15 and row["psnr_0"] > 15

    with pytest.raises(SystemExit, match="--run"):
        amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out)])
    run = tmp_path / "ship" / "ilc_q2"
    amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out), "--run", str(run)])
    cfg = read_config(run / "model.safetensors")
    assert cfg.g_refine_y and cfg.g_hidden == read_config(CKPT).g_hidden
    new, old = load_file(str(run / "model.safetensors")), load_file(str(CKPT))
    decoder_parts = ("g.", "post.")  # g and, where the model has one, the post-filter learn
    assert all(torch.equal(new[k], old[k]) for k in new if not k.startswith(decoder_parts))  # f, hyperprior unchanged
    assert torch.equal(new["g.net.4.weight"], state["g"]["net.4.weight"])
    info = json.loads((run / "model.json").read_text())["info"]
    prev = json.loads(CKPT.with_suffix(".json").read_text())["info"]["decoder_finetune"]  # the shipped model's own
    tune = info["decoder_finetune"]
    assert tune.get("post_hidden") == (read_config(CKPT).post_hidden or None)  # a filter of its own trained too
    assert tune["steps"] == prev["steps"] + 3 and tune["stages"][-1]["steps"] == 3 and "shipped_from" not in info
    assert tune["stages"][-1]["from_id"] == model_id_of_file(CKPT)
    assert (run / "model.encoder.safetensors").is_file()
    load_model(run / "model.safetensors")
    with pytest.raises(SystemExit, match="exists"):
        amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out), "--run", str(run)])
    (run / "model.safetensors").unlink()  # the add-on alone also refuses, before the model is written
    with pytest.raises(SystemExit, match="encoder.safetensors exists"):
        amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(out), "--run", str(run)])
    assert not (run / "model.safetensors").exists()

    # with an image-domain post-filter: trained with h and g, stored in h.pt, shipped in the model
    post_out, post_run = tmp_path / "post", tmp_path / "ship_post" / "ilc_q2"
    pargs = [a if a != str(out) else str(post_out) for a in args]
    with pytest.raises(SystemExit, match="needs --train-g"):
        amortised_refine.main(pargs[:11] + ["--post-hidden", "4", "--steps", "1"])
    assert not post_out.exists()
    shipped_post = read_config(CKPT).post_hidden
    if shipped_post:  # the shipped model has a filter of its own: a narrower one is refused in one line
        with pytest.raises(SystemExit, match=f"{shipped_post} wide; it can widen, not narrow to 4"):
            amortised_refine.main(pargs + ["--post-hidden", "4", "--steps", "1"])
        shutil.rmtree(post_out)
    # added to a model without one (the shipped model, its filter dropped): starts at zero, learns
    import dataclasses

    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.model import build_model

    full = load_model(CKPT)
    bare = build_model(dataclasses.replace(full.cfg, post_hidden=0))
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("post.")})
    bare_ckpt = save_checkpoint(bare, tmp_path / "bare" / "ilc-q2")
    pargs[pargs.index(str(CKPT))] = str(bare_ckpt)
    amortised_refine.main(pargs + ["--post-hidden", "4", "--post-lr", "1e-3", "--steps", "2"])
    state = torch.load(post_out / "h.pt")
    assert state["decoder"]["post_hidden"] == 4 and state["post"]["net.6.weight"].abs().sum() > 0  # left zero
    amortised_refine.main(["ship", "--ckpt", str(bare_ckpt), "--out", str(post_out), "--run", str(post_run)])
    shipped = load_model(post_run / "model.safetensors")
    assert shipped.cfg.post_hidden == 4 and torch.equal(shipped.post.net[6].weight, state["post"]["net.6.weight"])
    assert json.loads((post_run / "model.json").read_text())["info"]["decoder_finetune"]["post_hidden"] == 4

    # with the hyperprior trained too: w's rate counts, eval builds the new tables, ship carries it
    hyp_out, hyp_run = tmp_path / "hyper", tmp_path / "ship_hyper" / "ilc_q2"
    hargs = [a if a != str(out) else str(hyp_out) for a in args]
    amortised_refine.main(hargs + ["--train-hyper", "--hyper-lr", "1e-3", "--steps", "2"])
    state = torch.load(hyp_out / "h.pt")
    assert state["decoder"]["hyper"] is True and (state["post"] is None) == (not read_config(CKPT).post_hidden)
    old = load_model(CKPT)
    for name in ("h_a", "h_s_mean", "h_s_scale"):
        assert not torch.equal(state["hyper"][name]["net.0.weight"], getattr(old, name).state_dict()["net.0.weight"])
    log = [json.loads(r) for r in (hyp_out / "log.jsonl").read_text().splitlines()]
    assert all(r["w_bpp"] > 0 for r in log)
    amortised_refine.main(["eval", "--ckpt", str(CKPT), "--out", str(hyp_out), "--crops", str(crops), "--calib", str(data)])
    assert json.loads((hyp_out / "eval.json").read_text())["rows"][0]["psnr"] > 15
    assert model_id_of_file(hyp_out / "eval_model.safetensors") != model_id_of_file(CKPT)
    amortised_refine.main(["ship", "--ckpt", str(CKPT), "--out", str(hyp_out), "--run", str(hyp_run)])
    shipped = load_model(hyp_run / "model.safetensors")
    for name, sd in state["hyper"].items():
        assert all(torch.equal(v, getattr(shipped, name).state_dict()[k]) for k, v in sd.items())


def test_gpu_side_job_trains_h_of_the_shipped_models_through_the_post_script(tmp_path):
    """gpu_side_amortised.sh links the shipped checkpoints as runs and hands them to
    gpu_post_amortised.sh: on CPU, a few steps at a tiny crop until the deadline, then an
    add-on of each shipped model, its log, and nothing else left in SIDE."""
    import os
    import subprocess
    import time

    from PIL import Image

    from ilc_export.contract.encoder_addon import read_addon_meta
    from ilc_export.contract.model_id import model_id_of_file

    data, side = tmp_path / "data", tmp_path / "side"
    data.mkdir()
    side.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(data / "im.png")
    env = {**os.environ, "SIDE": str(side), "DATA": str(data), "DEADLINE_AT": str(int(time.time()) + 35),
           "AM_QUALITIES": "2", "AM_DEVICE": "cpu", "AM_BATCH": "1", "AM_CROP": "64", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "reference")])}
    subprocess.run(["bash", "scripts/gpu_side_amortised.sh"], cwd=ROOT, env=env, check=True, timeout=300)
    assert sorted(p.name for p in side.iterdir()) == ["ilc-q2.encoder.safetensors", "ilc-q2.stdout",
                                                      "log_ilc-q2.jsonl.gz"]
    meta = read_addon_meta(side / "ilc-q2.encoder.safetensors", model_id_of_file(CKPT))
    assert meta["info"]["note"].startswith("GPU side job, batch 1")
    assert "starting from" in (side / "ilc-q2.stdout").read_text()  # the shipped add-on as its start


def test_lr_decay_follows_a_stored_schedule_that_a_resumed_run_goes_on_along(tmp_path):
    from PIL import Image

    assert amortised_refine.lr_factor(0, 0.1) == 1 and amortised_refine.lr_factor(1, 0.1) == pytest.approx(0.1)
    assert amortised_refine.lr_factor(0.5, 0.1) == pytest.approx(0.55)
    data = tmp_path / "data"
    data.mkdir()
    img = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(data / "im.png")
    out = tmp_path / "run"
    args = ["train", "--ckpt", str(CKPT), "--data", str(data), "--out", str(out), "--batch", "1", "--crop", "64",
            "--hidden", "8", "--warmup-steps", "0", "--decay-to", "0.1"]
    with pytest.raises(SystemExit, match="from 0 to 1"):
        amortised_refine.main(args[:-1] + ["2", "--steps", "1"])
    amortised_refine.main(args + ["--minutes", "0.05"])  # 3 s: the whole schedule
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    factors = [r["lr_factor"] for r in rows]
    assert len(factors) >= 2 and factors == sorted(factors, reverse=True) and factors[-1] >= 0.1
    state = torch.load(out / "h.pt")
    assert state["decay"]["to"] == 0.1 and state["decay"]["done"] >= 3
    amortised_refine.main(args + ["--minutes", "5"])  # the stored schedule is over: no more steps
    assert torch.load(out / "h.pt")["step"] == state["step"] == len(rows)
