"""Time-boxed multi-model training, split training states, GPU bundles and the speed-up flags (CPU, tiny models)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ilc_reference import bundle, multitrain
from ilc_reference.config import ModelConfig, tiny_config
from ilc_reference.trainstate import INDEX, load_state, read_index, save_state

ROOT = Path(__file__).resolve().parents[1]


def _images(d: Path, n=3, size=(80, 96)):
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def _plan(tmp: Path, data: Path, steps=4, **defaults) -> Path:
    cfg = {k: v for k, v in json.loads(tiny_config().to_json()).items() if k not in ("name", "kind")}
    plan = {"defaults": {"data": [str(data)], "config": cfg, "steps": steps, "batch": 2, "crop": [64], "pixels": 0,
                         "ckpt_every": 2, "threads": 1, "quiet": True, **defaults},
            "runs": [{"name": "ilc_a", "kind": "ilc", "lmbda": 0.01, "seed": 1},
                     {"name": "base_b", "kind": "baseline", "lmbda": 0.003}]}
    p = tmp / "plan.json"
    p.write_text(json.dumps(plan))
    return p


def _multi(plan, root, *extra):
    multitrain.main(["--plan", str(plan), "--out-root", str(root), "--threads", "1", "--status-every-s", "0", *extra])


def _same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _same_state(a: Path, b: Path):
    sa, sb = load_state(a), load_state(b)
    assert sa["step"] == sb["step"]
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for i, s in sa["opt"]["state"].items():
        for n, v in s.items():
            assert torch.equal(v, sb["opt"]["state"][i][n]), (i, n)
    assert sa["np_rng"] == sb["np_rng"] and torch.equal(sa["torch_rng"], sb["torch_rng"])


# ------------------------------------------------------------------------------ state files


def test_state_parts_under_cap_checked_and_replaced_atomically(tmp_path):
    state = {"step": 3, "wall": 1.0, "model": {"w": torch.randn(300, 100)}, "opt": {"state": {}, "param_groups": []}}
    idx = save_state(tmp_path, state, part_bytes=40_000)
    assert len(idx["parts"]) >= 3 and all(p["bytes"] <= 40_000 for p in idx["parts"])
    assert all((tmp_path / p["file"]).stat().st_size <= 40_000 for p in idx["parts"])
    assert torch.equal(load_state(tmp_path)["model"]["w"], state["model"]["w"])
    # a kill during the next save leaves parts without an index: the old state still loads
    (tmp_path / "state-00000004-dead00.000").write_bytes(b"partial")
    assert load_state(tmp_path)["step"] == 3
    state["step"] = 4
    save_state(tmp_path, state, part_bytes=40_000)
    names = {p.name for p in tmp_path.iterdir()}
    assert "state-00000004-dead00.000" not in names  # stale parts are cleaned after the new index
    assert len([n for n in names if n.startswith("state-")]) == len(read_index(tmp_path)["parts"])
    part = tmp_path / read_index(tmp_path)["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_state(tmp_path)


def test_compact_moments_are_bf16_and_marked_approximate(tmp_path):
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p])
    p.sum().backward()
    opt.step()
    save_state(tmp_path, {"step": 1, "opt": opt.state_dict()}, moments="bf16")
    assert read_index(tmp_path)["exact"] is False
    st = load_state(tmp_path)
    assert st["opt"]["state"][0]["exp_avg"].dtype == torch.bfloat16 and st["_exact"] is False
    opt2 = torch.optim.Adam([p])
    opt2.load_state_dict(st["opt"])  # moments come back as fp32 (the param dtype)
    assert opt2.state[p]["exp_avg"].dtype == torch.float32


# -------------------------------------------------------------------------- multi training


def test_multi_resume_equals_uninterrupted_and_single_runs(tmp_path):
    """Bit-exact: 4 steps straight == 2 steps + resume to 4, and each model of a multi run ==
    that model trained alone with ilc-train (own RNG streams: the interleaving does not matter)."""
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=4, state_part_mib=0.2)
    _multi(plan, tmp_path / "straight")
    _multi(plan, tmp_path / "resumed", "--set", "steps=2")
    assert read_index(tmp_path / "resumed" / "ilc_a")["step"] == 2
    _multi(plan, tmp_path / "resumed", "--share", "time")
    for name in ("ilc_a", "base_b"):
        a, b = tmp_path / "straight" / name, tmp_path / "resumed" / name
        _same_state(a, b)
        _same_weights(a, b)
        parts = read_index(b)["parts"]
        assert len(parts) > 1 and all(p["bytes"] <= 0.2 * (1 << 20) for p in parts)
        steps = [json.loads(line)["step"] for line in (b / "log.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4]
    from ilc_reference.train import main as train_main

    alone = tmp_path / "alone" / "ilc_a"
    train_main(["--data", str(data), "--out", str(alone), "--config", str(tmp_path / "straight" / "ilc_a" / "plan-config.json"),
                "--kind", "ilc", "--lmbda", "0.01", "--seed", "1", "--steps", "4", "--batch", "2", "--crop", "64",
                "--pixels", "0", "--ckpt-every", "2", "--threads", "1", "--quiet", "--name", "ilc_a"])
    _same_weights(tmp_path / "straight" / "ilc_a", alone)
    summary = json.loads((tmp_path / "resumed" / "multi.json").read_text())
    assert {r["name"]: r["steps_here"] for r in summary["runs"]} == {"ilc_a": 2, "base_b": 2}


def test_procs_mode_equals_inproc(tmp_path, monkeypatch):
    """One ilc-train process per model gives the same models as one process stepping both."""
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=2)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "reference"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    _multi(plan, tmp_path / "p", "--mode", "procs")
    _multi(plan, tmp_path / "i")
    summary = json.loads((tmp_path / "p" / "multi.json").read_text())
    assert [r["returncode"] for r in summary["runs"]] == [0, 0]
    for name in ("ilc_a", "base_b"):
        _same_state(tmp_path / "p" / name, tmp_path / "i" / name)


def test_legacy_state_pt_resumes_and_is_replaced(tmp_path):
    from ilc_reference.train import main as train_main

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(tiny_config().to_json()).items() if k not in ("name", "kind")}))

    def run(out, steps):
        train_main(["--data", str(data), "--out", str(out), "--config", str(cfg), "--steps", str(steps), "--batch", "2",
                    "--crop", "64", "--pixels", "0", "--ckpt-every", "2", "--threads", "1", "--quiet"])

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    st = load_state(tmp_path / "b")
    st.pop("_exact")
    for f in (tmp_path / "b").glob("state*"):
        f.unlink()
    torch.save(st, tmp_path / "b" / "state.pt")  # what the trainer wrote before the split format
    run(tmp_path / "b", 4)
    assert not (tmp_path / "b" / "state.pt").exists() and read_index(tmp_path / "b")["step"] == 4
    _same_state(tmp_path / "a", tmp_path / "b")


def test_deadline_stops_with_saved_state(tmp_path):
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=10**6, ckpt_every=10**6)
    t0 = time.time()
    _multi(plan, tmp_path / "r", "--deadline-s", "6")
    assert time.time() - t0 < 6 + 15  # inside the deadline, give or take one step on a loaded 2-core box
    for name in ("ilc_a", "base_b"):
        log = (tmp_path / "r" / name / "log.jsonl")
        if log.exists() and log.read_text():
            last = json.loads(log.read_text().splitlines()[-1])["step"]
            assert read_index(tmp_path / "r" / name)["step"] == last  # nothing stepped is lost


def _spawn_multi(plan, out_root, **popen):
    """ilc-train-multi on `plan` as a child process (to be signalled), one thread, no status lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "reference"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "ilc_reference.multitrain", "--plan", str(plan), "--out-root",
                             str(out_root), "--threads", "1", "--status-every-s", "0"], env=env, **popen)


def test_sigterm_saves_and_resume_matches(tmp_path):
    """A worker killed politely (SIGTERM) saves its step; resuming to N equals N straight."""
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=10**6, ckpt_every=1)
    p = _spawn_multi(plan, tmp_path / "k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    idx = tmp_path / "k" / "base_b" / INDEX
    t0 = time.time()
    while not idx.exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 0, out
    n = {}
    for name in ("ilc_a", "base_b"):
        lines = (tmp_path / "k" / name / "log.jsonl").read_text().splitlines()
        n[name] = read_index(tmp_path / "k" / name)["step"]
        assert n[name] == json.loads(lines[-1])["step"] >= 1
    steps = max(n.values()) + 1
    _multi(plan, tmp_path / "k", "--set", f"steps={steps}")
    _multi(plan, tmp_path / "s", "--set", f"steps={steps}")
    for name in ("ilc_a", "base_b"):
        _same_state(tmp_path / "k" / name, tmp_path / "s" / name)


def test_hard_kill_loses_only_unsaved_steps(tmp_path):
    """SIGKILL at a random moment (maybe mid-save): the run folder still holds a complete state,
    the log is trimmed to it on resume, and resuming to N equals N straight."""
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=10**6, ckpt_every=1)
    p = _spawn_multi(plan, tmp_path / "k", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        idx = read_index(tmp_path / "k" / "base_b") if (tmp_path / "k" / "base_b" / INDEX).exists() else None
        if idx and idx["step"] >= 2:
            break
        time.sleep(0.05)
    time.sleep(float(np.random.default_rng().uniform(0, 0.5)))
    p.kill()
    p.wait()
    steps = max(read_index(tmp_path / "k" / n)["step"] for n in ("ilc_a", "base_b")) + 2
    _multi(plan, tmp_path / "k", "--set", f"steps={steps}")
    _multi(plan, tmp_path / "s", "--set", f"steps={steps}")
    for name in ("ilc_a", "base_b"):
        _same_state(tmp_path / "k" / name, tmp_path / "s" / name)
        logged = [json.loads(line)["step"] for line in (tmp_path / "k" / name / "log.jsonl").read_text().splitlines()]
        assert logged == list(range(1, steps + 1))


# ---------------------------------------------------------------------------------- bundle


def test_bundle_train_resume_cycle(tmp_path, monkeypatch):
    """pack -> unpack -> train 2 steps -> pack results -> adopt -> pack (resume) -> train to 4 ->
    adopt equals 4 steps straight from the same bundle, bit for bit."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    data = _images(tmp_path / "imgs", n=4, size=(100, 140))
    plan = _plan(tmp_path, data, steps=4)
    b1 = tmp_path / "b1"
    m = bundle.pack(str(plan), str(b1), cap_mib=1, tree_aware=False, short_side=64, quality=88)
    assert m["data"]["images"] == 4 and m["bytes"] <= (1 << 20)
    sizes = [Image.open(b1 / n).size for n in m["files"] if n.startswith("data/")]
    assert len(sizes) == 4 and all(min(s) == 64 for s in sizes)  # re-encoded at the reduced size

    def window(b, work, steps):
        bundle.unpack(str(b), str(work))
        _multi(work / "plan.json", work / "runs", "--set", f"steps={steps}")
        assert bundle.pack_results(str(work / "runs"), str(work / "out"), max_files=3, file_mib=2)["level"] == "exact"
        assert len(list((work / "out").iterdir())) <= 3
        assert all(f.stat().st_size <= 2 << 20 for f in (work / "out").iterdir())
        return work / "out"

    local = tmp_path / "runs"
    bundle.adopt(str(window(b1, tmp_path / "w1", 2)), str(local))
    assert read_index(local / "ilc_a")["step"] == 2
    b2 = tmp_path / "b2"
    bundle.pack(str(plan), str(b2), cap_mib=4, tree_aware=False, short_side=64, resume_from=str(local))
    assert (b2 / "runs" / "ilc_a" / INDEX).exists()
    bundle.adopt(str(window(b2, tmp_path / "w2", 4)), str(local))
    straight = tmp_path / "w3"
    bundle.unpack(str(b1), str(straight))
    _multi(straight / "plan.json", straight / "runs")
    for name in ("ilc_a", "base_b"):
        _same_state(local / name, straight / "runs" / name)
        _same_weights(local / name, straight / "runs" / name)
        steps = [json.loads(line)["step"] for line in (local / name / "log.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4]


def test_results_fall_back_to_compact_then_weights(tmp_path):
    data = _images(tmp_path / "imgs")
    plan = _plan(tmp_path, data, steps=1)
    _multi(plan, tmp_path / "r")
    size = {n: sum(p["bytes"] for p in read_index(tmp_path / "r" / n)["parts"]) for n in ("ilc_a", "base_b")}
    mib = 1 << 20
    # the plan's last run goes down first: base_b compact (bf16 moments, ~2/3 of its state), ilc_a stays exact
    total = (size["ilc_a"] + 0.8 * size["base_b"] + 64 * 1024 + 40_000) / mib
    idx = bundle.pack_results(str(tmp_path / "r"), str(tmp_path / "o1"), total_mib=total)
    assert idx["levels"] == {"ilc_a": "exact", "base_b": "compact"} and idx["level"] == "mixed"
    idx = bundle.pack_results(str(tmp_path / "r"), str(tmp_path / "o2"), total_mib=0.45 * sum(size.values()) / mib)
    assert idx["levels"] == {"ilc_a": "weights", "base_b": "weights"} and idx["level"] == "weights"
    adopted = tmp_path / "adopted"
    bundle.adopt(str(tmp_path / "o1"), str(adopted))
    assert read_index(adopted / "ilc_a")["exact"] and not read_index(adopted / "base_b")["exact"]
    local = tmp_path / "local"
    save_state(local / "ilc_a", {"step": 0})  # an older local state must not be resumed over the new weights
    (local / "ilc_a" / "log.jsonl").write_text('{"step": 7}\n')  # another history: not merged
    bundle.adopt(str(tmp_path / "o2"), str(local))
    assert read_index(local / "ilc_a") is None and (local / "ilc_a" / (INDEX + ".superseded")).exists()
    assert (local / "ilc_a" / "log.jsonl").read_text() == '{"step": 7}\n'
    assert [json.loads(x)["step"] for x in next((local / "ilc_a").glob("log-gpu-*.jsonl")).read_text().splitlines()] == [1]
    assert [json.loads(x)["step"] for x in (local / "base_b" / "log.jsonl").read_text().splitlines()] == [1]
    _same_weights(local / "ilc_a", tmp_path / "r" / "ilc_a")
    with pytest.raises(SystemExit, match="do not fit"):
        bundle.pack_results(str(tmp_path / "r"), str(tmp_path / "o3"), total_mib=0.05)


def test_bundle_data_subset_fits_cap(tmp_path):
    items = [(f"{i}", b"x" * (100 + i)) for i in range(50)]
    kept = bundle.evenly(items, 2000)
    assert sum(len(b) for _, b in kept) <= 2000 and len(kept) >= 15
    assert kept[0][0] != kept[1][0] and int(kept[-1][0]) > 40  # spread over the whole list
    data = _images(tmp_path / "imgs", n=6, size=(80, 96))
    plan = _plan(tmp_path, data)
    with pytest.raises(SystemExit, match="cap"):
        bundle.pack(str(plan), str(tmp_path / "b"), cap_mib=0.001, tree_aware=False)
    with pytest.raises(SystemExit, match="not a bundle"):  # never wipes a folder it did not make
        bundle.pack(str(plan), str(tmp_path / "imgs"), cap_mib=1, tree_aware=False)
    assert len(list((tmp_path / "imgs").iterdir())) == 6
    if bundle.repo_root(ROOT) is not None:
        assert bundle.tree_bytes(ROOT) > 10 * (1 << 20)  # the shipped checkpoints travel with the tree


# ---------------------------------------------------------------------------- speed flags


def test_amp_keeps_inverse_latents_and_likelihoods_fp32():
    from ilc_reference.model import build_model
    from ilc_reference.speedups import apply_amp

    torch.manual_seed(0)
    model = build_model(tiny_config())
    assert apply_amp(model, "bf16", torch.device("cpu")) > 0
    seen = {}
    coupling = next(m for m in model.f.modules() if type(m).__name__ == "AffineCoupling")
    coupling.F[0].register_forward_hook(lambda m, i, o: seen.setdefault("dir", []).append(o.dtype))
    x = torch.rand(1, 3, 64, 64)
    y, z = model.f(x)
    assert seen["dir"][-1] == torch.bfloat16  # the trunk ran in low precision
    assert y.dtype == torch.float32 and z.dtype == torch.float32
    back = model.f.inverse(y, z)
    assert seen["dir"][-1] == torch.float32 and back.dtype == torch.float32  # the inverse did not
    out = model(x)
    assert out["y_lik"].dtype == torch.float32 and out["x_hat"].dtype == torch.float32
    base = build_model(tiny_config("baseline"))
    apply_amp(base, "fp16", torch.device("cpu"))
    assert base(x)["y"].dtype == torch.float32


@pytest.mark.parametrize("flags", [["--amp", "bf16"], ["--amp", "fp16"],
                                   ["--channels-last", "--fused-adam", "--prefetch", "2"],
                                   # traced by dynamo around the amp wrappers; inductor codegen takes minutes on CPU
                                   ["--compile", "--compile-backend", "eager", "--amp", "bf16"]])
def test_speed_flags_train_and_resume_exactly(tmp_path, flags):
    from ilc_reference.train import main as train_main

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(tiny_config().to_json()).items() if k not in ("name", "kind")}))

    def run(out, steps):
        train_main(["--data", str(data), "--out", str(out), "--config", str(cfg), "--steps", str(steps), "--batch", "2",
                    "--crop", "64", "--pixels", "0", "--ckpt-every", "2", "--threads", "1", "--quiet", *flags])

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    run(tmp_path / "b", 4)
    _same_state(tmp_path / "a", tmp_path / "b")
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    if "--amp" in flags and flags[1] == "fp16":
        assert "scaler" in load_state(tmp_path / "a")


def test_prefetch_changes_no_batch(tmp_path):
    from ilc_reference.train import main as train_main

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in json.loads(tiny_config().to_json()).items() if k not in ("name", "kind")}))
    for out, extra in (("a", []), ("b", ["--prefetch", "3"])):
        train_main(["--data", str(data), "--out", str(tmp_path / out), "--config", str(cfg), "--steps", "3", "--batch", "2",
                    "--crop", "64", "--pixels", "0", "--threads", "1", "--quiet", *extra])
    _same_state(tmp_path / "a", tmp_path / "b")


def test_lr_end_decays_cosine_over_the_window_and_only_with_a_deadline(tmp_path):
    from ilc_reference.train import Trainer, build_parser

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(tiny_config().to_json())
    base = ["--data", str(data), "--config", str(cfg), "--crop", "64", "--batch", "1", "--pixels", "0", "--threads", "1",
            "--quiet", "--lr", "1e-3"]
    tr = Trainer(build_parser().parse_args([*base, "--out", str(tmp_path / "a"), "--lr-end", "1e-5"]))
    tr.set_lr_window(100.0, 200.0)
    assert tr.current_lr(100.0) == pytest.approx(1e-3)
    assert tr.current_lr(150.0) == pytest.approx((1e-3 + 1e-5) / 2)
    assert tr.current_lr(200.0) == pytest.approx(1e-5) and tr.current_lr(999.0) == pytest.approx(1e-5)
    tr.set_lr_window(time.time(), time.time() + 60)
    tr.step()
    assert tr.opt.param_groups[0]["lr"] < 1e-3 and tr.last_stats["lr"] == tr.opt.param_groups[0]["lr"]
    tr.close()
    plain = Trainer(build_parser().parse_args([*base, "--out", str(tmp_path / "b")]))
    plain.set_lr_window(time.time(), time.time() + 60)  # no --lr-end: the lr stays
    plain.step()
    assert plain.opt.param_groups[0]["lr"] == 1e-3 and "lr" not in plain.last_stats
    plain.close()


def test_post_filter_learns_at_its_own_lr_multiple_which_decays_and_resumes(tmp_path):
    from ilc_reference.train import Trainer, build_parser

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(ModelConfig.from_dict({**json.loads(tiny_config().to_json()), "post_hidden": 4}).to_json())
    base = ["--data", str(data), "--config", str(cfg), "--crop", "64", "--batch", "1", "--pixels", "0", "--threads", "1",
            "--quiet", "--lr", "1e-4", "--out", str(tmp_path / "a"), "--ckpt-every", "1"]
    tr = Trainer(build_parser().parse_args([*base, "--lr-mult", "post=10", "prior=2"]))
    rest, post, prior = tr.opt.param_groups
    assert {id(p) for p in post["params"]} == {id(p) for p in tr.model.post.parameters()}
    assert len(rest["params"]) + len(post["params"]) + len(prior["params"]) == len(list(tr.model.parameters()))
    assert rest["lr"] == pytest.approx(1e-4) and post["lr"] == pytest.approx(1e-3) and prior["lr"] == pytest.approx(2e-4)
    before = [p.detach().clone() for p in tr.model.post.parameters()]
    tr.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.post.parameters()))  # the filter trains
    tr.save()
    tr.close()
    again = Trainer(build_parser().parse_args([*base, "--lr-mult", "post=3", "prior=2", "--lr-end", "1e-6"]))
    assert again.step_no == 1  # resumed; the flag, not the state, sets the multiple
    assert again.opt.param_groups[1]["lr"] == pytest.approx(3e-4)
    again.set_lr_window(time.time() - 30, time.time() + 30)
    again.step()
    rest, post, _ = again.opt.param_groups
    assert post["lr"] == pytest.approx(3 * rest["lr"]) and rest["lr"] < 1e-4
    again.close()
    with pytest.raises(SystemExit, match="other lr groups"):  # a state resumes with its own groups only
        Trainer(build_parser().parse_args([*base, "--lr-mult", "post=3"]))
    with pytest.raises(SystemExit, match="MODULE=FACTOR"):
        Trainer(build_parser().parse_args([*base[:-4], "--out", str(tmp_path / "b"), "--lr-mult", "post=-1"]))
    with pytest.raises(SystemExit, match="MODULE=FACTOR"):
        Trainer(build_parser().parse_args([*base[:-4], "--out", str(tmp_path / "b"), "--lr-mult", "post"]))
    # a module the model lacks (a plan's defaults serve the baseline too) is noted, not an error
    odd = Trainer(build_parser().parse_args([*base[:-4], "--out", str(tmp_path / "c"), "--lr-mult", "nope=2"]))
    assert len(odd.opt.param_groups) == 1 and any("nope" in n for n in odd.notes)
    odd.close()


def test_a_trained_baseline_gets_a_post_filter_that_starts_as_the_identity(tmp_path):
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.model import build_model
    from ilc_reference.train import Trainer, build_parser

    data = _images(tmp_path / "imgs")
    base_cfg = tiny_config("baseline")
    torch.manual_seed(3)
    plain = build_model(base_cfg).eval()
    init = save_checkpoint(plain, tmp_path / "init")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(base_cfg.to_json())
    tr = Trainer(build_parser().parse_args(["--data", str(data), "--kind", "baseline", "--config", str(cfg), "--crop", "64",
                                            "--batch", "1", "--pixels", "0", "--threads", "1", "--quiet", "--init", str(init),
                                            "--init-partial", "--post-hidden", "4", "--lr-mult", "post=10", "g_a=0",
                                            "h_a=0", "--out", str(tmp_path / "a")]))
    assert tr.cfg.post_hidden == 4 and any("fresh" in n and "post" in n for n in tr.notes)
    assert "frozen: g_a, h_a" in tr.notes
    in_opt = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt or p.requires_grad for p in [*tr.model.g_a.parameters(), *tr.model.h_a.parameters()])
    y = torch.randn(1, base_cfg.latent_channels, 4, 4)
    with torch.no_grad():
        assert torch.equal(tr.model.eval().synthesis(y), plain.synthesis(y))
    tr.model.train()
    enc = {k: v.clone() for k, v in tr.model.g_a.state_dict().items()}
    dec = tr.model.g_s[0].weight.detach().clone()
    tr.step()
    assert tr.model.post.net[6].weight.abs().sum() > 0 and not torch.equal(tr.model.g_s[0].weight, dec)
    assert all(torch.equal(v, tr.model.g_a.state_dict()[k]) for k, v in enc.items())  # the frozen encoder
    tr.close()


def test_warmup_ramps_the_lr_by_step_and_resumes_on_the_ramp(tmp_path):
    from ilc_reference.train import Trainer, build_parser

    data = _images(tmp_path / "imgs")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(tiny_config().to_json())
    base = ["--data", str(data), "--config", str(cfg), "--crop", "64", "--batch", "1", "--pixels", "0", "--threads", "1",
            "--quiet", "--lr", "1e-3", "--warmup-steps", "4", "--ckpt-every", "1"]
    tr = Trainer(build_parser().parse_args([*base, "--out", str(tmp_path / "a")]))
    lrs = []
    for _ in range(2):
        lrs.append(tr.step()["lr"])
    tr.save()
    tr.close()
    tr = Trainer(build_parser().parse_args([*base, "--out", str(tmp_path / "a")]))
    for _ in range(2):
        lrs.append(tr.step()["lr"])
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert "lr" not in tr.step() and tr.opt.param_groups[0]["lr"] == 1e-3  # past the ramp
    tr.close()


def test_init_partial_keeps_fresh_modules_and_refuses_foreign_weights(tmp_path):
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.model import build_model
    from ilc_reference.train import Trainer, build_parser

    data = _images(tmp_path / "imgs")
    plain_cfg = tiny_config()
    init = tmp_path / "init.safetensors"
    torch.manual_seed(3)
    save_checkpoint(build_model(plain_cfg), init)
    g_cfg = tmp_path / "g.json"
    g_cfg.write_text(ModelConfig.from_dict({**json.loads(plain_cfg.to_json()), "z_model": "g", "g_hidden": 8}).to_json())
    args = ["--data", str(data), "--crop", "64", "--batch", "1", "--pixels", "0", "--threads", "1", "--quiet",
            "--init", str(init)]
    with pytest.raises(RuntimeError, match="Missing key"):  # strict by default
        Trainer(build_parser().parse_args([*args, "--config", str(g_cfg), "--out", str(tmp_path / "s")]))
    tr = Trainer(build_parser().parse_args([*args, "--config", str(g_cfg), "--out", str(tmp_path / "p"), "--init-partial"]))
    w = load_file(str(init))
    sd = tr.model.state_dict()
    assert all(torch.equal(sd[k], w[k]) for k in w)  # every init weight taken
    assert any(k.startswith("g.") for k in sd) and any("fresh" in n and "g" in n for n in tr.notes)
    tr.close()
    # the other way round (a g init into a model without g) is refused even with --init-partial
    g_init = tmp_path / "g_init.safetensors"
    save_checkpoint(tr.model, g_init)
    plain_json = tmp_path / "plain.json"
    plain_json.write_text(plain_cfg.to_json())
    with pytest.raises(SystemExit, match="does not"):
        Trainer(build_parser().parse_args([*args[:-1], str(g_init), "--config", str(plain_json),
                                           "--out", str(tmp_path / "q"), "--init-partial"]))


def test_gpu_window_script_runs_a_side_job_and_sends_its_folder_back(tmp_path, monkeypatch):
    """scripts/gpu_window.sh end to end on CPU: unpack, train, a SIDE_CMD beside it, and the
    results packed so that side.tar plus the training parts keep to the file-count limit."""
    import tarfile

    monkeypatch.chdir(tmp_path)
    data = _images(tmp_path / "imgs", n=3, size=(100, 140))
    b = tmp_path / "bundle"
    bundle.pack(str(_plan(tmp_path, data, steps=2)), str(b), cap_mib=2, tree_aware=False, short_side=64)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable, "RESERVE_S": "10",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "reference"), str(ROOT)]),
           "SIDE_CMD": 'find "$DATA" -type f > "$SIDE/data.txt"; echo "$DEADLINE_AT" > "$SIDE/deadline.txt"',
           # after the training: every run's final weights are there, and the post phase has its time
           "POST_CMD": 'ls "$RUNS"/*/model.safetensors > "$SIDE/post.txt"; echo $(( DEADLINE_AT - $(date +%s) )) >> "$SIDE/post.txt"',
           "POST_S": "30"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_window.sh"), str(b), "120", "--threads", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert "side.tar" in files and "results-index.json" in files and len(files) <= 8
    with tarfile.open(out / "side.tar") as t:
        side = {m.name: t.extractfile(m).read().decode() for m in t.getmembers() if m.isfile()}
    assert len(side["side/data.txt"].split()) == 3  # the bundle's images
    assert int(side["side/deadline.txt"]) > time.time() - 300
    post = side["side/post.txt"].split()
    assert sorted(Path(p).parent.name for p in post[:-1]) == ["base_b", "ilc_a"]
    assert int(post[-1]) >= 15  # the post phase starts with (about) POST_S or more left before the deadline
    assert "side/post.log" in side
    index = json.loads((out / "results-index.json").read_text())
    assert set(index["runs"]) == {"ilc_a", "base_b"} and len(index["parts"]) <= 7
