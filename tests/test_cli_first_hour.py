"""The CLIs as a new user meets them: no data loss, one-line errors, options that do what they
say, models found by one rule, a torch-free box. Real backends and real files throughout."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ilc_export.cli.export_cli import app as export_app
from ilc_export.cli.run_cli import app
from ilc_export.codec.bitstream import unpack
from ilc_export.pipeline.models import shipped_checkpoints

from conftest import BLOCK_TORCH, ROOT, SAMPLE

runner = CliRunner()


def run(*args, app_=app):
    r = runner.invoke(app_, [str(a) for a in args])
    return r


def one_line_error(r, *needles):
    """Exit 1, exactly one `error:` line holding every needle, no traceback."""
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    assert len(errs) == 1, r.output
    for n in needles:
        assert n in errs[0], (n, errs[0])
    return errs[0]


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _img(path: Path, h=64, w=96, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint's export (fp32 + fp16) in <root>/engines/ilc-tiny/onnx."""
    pytest.importorskip("onnx")
    from ilc_export.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("models")
    return export_onnx(tiny_ckpt, root / "engines" / "ilc-tiny" / "onnx", fp16=True)


# 1 ------------------------------------------------------------------------------------------
def test_no_data_loss_without_force(tiny_ckpt, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    for i in range(2):
        _img(photos / f"x{i}.png", seed=i)
    originals = {p.name: sha(p) for p in photos.iterdir()}
    r = run("compress", photos, "-m", tiny_ckpt)
    assert r.exit_code == 0, r.output
    r = run("decompress", photos, "-m", tiny_ckpt)
    assert r.exit_code == 0, r.output
    for name, h in originals.items():  # the originals are untouched ...
        assert sha(photos / name) == h
    # ... the decoded images sit beside them under another name, and the output says where
    assert sorted(p.name for p in photos.iterdir()) == [
        "x0.decoded.png", "x0.ilc", "x0.png", "x1.decoded.png", "x1.ilc", "x1.png"]
    assert "x0.decoded.png" in r.output
    # a second run would overwrite: refused before any work, nothing changed
    before = {p.name: sha(p) for p in photos.iterdir()}
    one_line_error(run("decompress", photos, "-m", tiny_ckpt), "already exist", "--force")
    one_line_error(run("compress", photos, "-m", tiny_ckpt), "already exist", "--force")
    one_line_error(run("decompress", photos / "x0.ilc", "-o", photos / "x0.png", "-m", tiny_ckpt),
                   "x0.png", "already exists")
    assert {p.name: sha(p) for p in photos.iterdir()} == before
    # --force overwrites what it is asked to
    r = run("decompress", photos / "x0.ilc", "-o", photos / "x0.png", "-m", tiny_ckpt, "--force")
    assert r.exit_code == 0, r.output
    assert sha(photos / "x0.png") != originals["x0.png"]
    # an output that is one of the inputs is refused even with --force
    one_line_error(run("compress", photos / "x1.png", "-o", photos / "x1.png", "-m", tiny_ckpt, "--force"),
                   "replace an input")
    # two inputs that would share an output
    _img(tmp_path / "dup" / "a.png")
    _img(tmp_path / "dup" / "a.jpg")
    one_line_error(run("compress", tmp_path / "dup", "-o", tmp_path / "dupout", "-m", tiny_ckpt), "both")
    # the demo keeps earlier results: new names, printed
    monkeypatch.chdir(tmp_path)
    for want in ("kodim23.ilc", "kodim23-2.ilc"):
        r = run("demo", "-m", tiny_ckpt, "-o", "d")
        assert r.exit_code == 0 and f"d/{want}" in r.output, r.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "kodim23-2.decoded.png", "kodim23-2.ilc", "kodim23.decoded.png", "kodim23.ilc"]


# 2 ------------------------------------------------------------------------------------------
def test_baseline_codes_on_every_backend(tmp_path):
    pytest.importorskip("onnx")
    import torch

    from conftest import randomize
    from ilc_export.backends import load_backend
    from ilc_export.export.tables_build import finalize_checkpoint
    from ilc_export.export.onnx_export import export_onnx
    from ilc_export.pipeline.codec import ImageCodec
    from ilc_reference.checkpoint import save_checkpoint
    from ilc_reference.config import tiny_config
    from ilc_reference.model import build_model

    torch.manual_seed(1)
    ck = save_checkpoint(randomize(build_model(tiny_config("baseline")), 0.05).eval(), tmp_path / "baseline-tiny")
    finalize_checkpoint(ck)
    exp = export_onnx(ck, tmp_path / "onnx", fp16=True)
    img = np.asarray(Image.open(SAMPLE).convert("RGB"))[:100, :140]
    codecs = {"torch": ImageCodec(load_backend("torch", ck)),
              "onnxruntime": ImageCodec(load_backend("onnxruntime", exp)),
              "onnxruntime-fp16": ImageCodec(load_backend("onnxruntime", exp, precision="fp16"))}
    files = {k: c.compress(img)[0] for k, c in codecs.items()}
    for f in files.values():
        recs = [c.decompress(f)[0].astype(int) for c in codecs.values()]
        for r in recs:
            assert r.shape == img.shape
        assert np.abs(recs[0] - recs[1]).max() <= 2
    # and through the CLI, the export found by itself
    _img(tmp_path / "in" / "a.png")
    r = run("compress", tmp_path / "in" / "a.png", "-m", exp)
    assert r.exit_code == 0, r.output
    r = run("decompress", tmp_path / "in" / "a.ilc", "-b", "onnxruntime", "-m", exp)
    assert r.exit_code == 0 and Image.open(tmp_path / "in" / "a.decoded.png").size == (96, 64), r.output


# 4 ------------------------------------------------------------------------------------------
NO_TORCH = BLOCK_TORCH + textwrap.dedent('''
    sys.argv = sys.argv[1:]
    from ilc_export.cli.{mod} import app
    try:
        app()
    finally:
        assert "torch" not in sys.modules
''')


def _no_torch(mod, *args, cwd, env=None):
    code = NO_TORCH.replace("{mod}", mod)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "reference"), str(ROOT / "tests")]),
           **(env or {})}
    return subprocess.run([sys.executable, "-c", code, mod, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_torch_free_box_picks_onnxruntime_or_says_what_to_do(tiny_ckpt, tiny_onnx, tmp_path):
    img = _img(tmp_path / "a.png")
    env = {"ILC_MODEL_PATH": ""}
    # no export anywhere: one line saying what to install or pass
    for args in (["compress", img, "-o", tmp_path / "a.ilc", "-m", tiny_ckpt], ["demo", "-m", tiny_ckpt, "-o", tmp_path / "d"]):
        r = _no_torch("run_cli", *args, cwd=tmp_path, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        err = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and "PyTorch is not installed" in err[0] and "ilc-export onnx" in err[0], r.stderr
    r = _no_torch("run_cli", "compress", img, "-o", tmp_path / "a.ilc", "-b", "torch", cwd=tmp_path, env=env)
    assert r.returncode == 1 and "needs PyTorch" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for args in (["onnx", "--ckpt", tiny_ckpt], ["trt", "--ckpt", tiny_ckpt], ["tables", "--ckpt", tiny_ckpt]):
        r = _no_torch("export_cli", *args, cwd=tmp_path, env=env)
        assert r.returncode == 1 and "needs PyTorch" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # with the export on the search path: the checkpoint runs on onnxruntime by itself
    env = {"ILC_MODEL_PATH": str(tiny_onnx.parent.parent)}
    r = _no_torch("run_cli", "compress", img, "-o", tmp_path / "a.ilc", "-m", tiny_ckpt, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = _no_torch("run_cli", "decompress", tmp_path / "a.ilc", cwd=tmp_path, env=env)
    assert r.returncode == 0 and (tmp_path / "a.decoded.png").exists(), r.stderr
    r = _no_torch("run_cli", "demo", "-m", tiny_ckpt, "-o", tmp_path / "d", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "backend onnxruntime" in r.stdout, r.stderr


# 5 ------------------------------------------------------------------------------------------
def test_model_that_is_not_a_checkpoint(tiny_ckpt, tmp_path):
    img = _img(tmp_path / "a.png")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    trunc = tmp_path / "cut.safetensors"
    trunc.write_bytes(Path(tiny_ckpt).read_bytes()[: Path(tiny_ckpt).stat().st_size // 2])
    folder = tmp_path / "empty"
    folder.mkdir()
    for bad in (img, txt, trunc, folder, tmp_path / "missing.safetensors"):
        for cmd in (["compress", img, "-o", tmp_path / "o.ilc"], ["demo", "-o", tmp_path / "d"]):
            one_line_error(run(*cmd, "-m", bad), str(bad))
    one_line_error(run("compress", img, "-o", tmp_path / "o.ilc", "-m", trunc), "outside the file")
    one_line_error(run("onnx", "--ckpt", txt, app_=export_app), str(txt), "not an ILC checkpoint")
    one_line_error(run("tables", "--ckpt", img, app_=export_app), str(img))


def test_cli_catches_user_errors_only():
    """The catch-all is narrow: a bug (RuntimeError, LookupError, ValueError of its own) keeps its traceback."""
    import typer

    from ilc_export.backends.base import BackendError
    from ilc_export.cli.common import user_errors
    from ilc_export.pipeline.models import ModelNotFound

    for bug in (RuntimeError("bug"), LookupError("bug"), KeyError("bug"), ValueError("bug"), TypeError("bug")):
        with pytest.raises(type(bug)):
            user_errors(lambda: (_ for _ in ()).throw(bug))()
    for expected in (BackendError("no"), ModelNotFound("no"), FileNotFoundError(2, "No such file", "x")):
        with pytest.raises(typer.Exit):
            user_errors(lambda: (_ for _ in ()).throw(expected))()


# 6 ------------------------------------------------------------------------------------------
def test_tables_keep_the_model_id_and_the_file(tiny_ckpt, tmp_path):
    from ilc_export.contract.model_id import model_id_of_file
    from ilc_export.export.tables_build import finalize_checkpoint

    ck = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_ckpt, ck)
    os.chmod(ck, 0o644)
    mid, h = model_id_of_file(ck), sha(ck)
    r = run("tables", "--ckpt", ck, app_=export_app)  # already finalized: nothing to do
    assert r.exit_code == 0 and "already has codec tables" in r.output and mid in r.output, r.output
    assert sha(ck) == h
    r = run("tables", "--ckpt", ck, "--force", app_=export_app)  # rebuilt from the same calibration: same tables
    assert r.exit_code == 0 and "unchanged" in r.output, r.output
    assert sha(ck) == h and model_id_of_file(ck) == mid and (ck.stat().st_mode & 0o777) == 0o644
    # tables built with other settings: a rebuild would change the id, which needs --force
    old = finalize_checkpoint(ck, act_bits=18)
    assert old != mid and (ck.stat().st_mode & 0o777) == 0o644
    h = sha(ck)
    calib = tmp_path / "calib"
    for i in range(2):
        _img(calib / f"c{i}.png", 128, 128, seed=10 + i)
    one_line_error(run("tables", "--ckpt", ck, "--calib", calib, app_=export_app), "differ", old)
    assert sha(ck) == h
    r = run("tables", "--ckpt", ck, "--calib", calib, "--force", app_=export_app)
    assert r.exit_code == 0, r.output
    new = model_id_of_file(ck)
    assert new != old and (ck.stat().st_mode & 0o777) == 0o644
    h2 = sha(ck)
    r = run("tables", "--ckpt", ck, "--calib", calib, app_=export_app)  # same weights + calibration: same id
    assert r.exit_code == 0 and "unchanged" in r.output and sha(ck) == h2 and model_id_of_file(ck) == new, r.output


def test_tables_refuse_shipped_checkpoints(tmp_path):
    shipped = shipped_checkpoints()
    if not shipped:
        pytest.skip("no shipped checkpoints")
    ck = shipped[0]
    h, st = sha(ck), ck.stat()
    calib = _img(tmp_path / "calib" / "c.png", 128, 128).parent
    one_line_error(run("tables", "--ckpt", ck, "--calib", calib, app_=export_app), "shipped", "--force")
    assert sha(ck) == h and ck.stat().st_mtime == st.st_mtime


# 7 ------------------------------------------------------------------------------------------
def test_options_do_what_they_say(tiny_ckpt, tmp_path):
    img = _img(tmp_path / "a.png")
    o = tmp_path / "o.ilc"
    one_line_error(run("compress", img, "-o", o, "-q", 0), "no shipped quality 0")
    one_line_error(run("compress", img, "-o", o, "-q", 3, "-m", tiny_ckpt), "not both")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "--z-temperature", 0.5), "--z-seed")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "--z-seed", 3), "--z-temperature")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "--z-seed", 3, "--z-temperature", -1), "(0, ")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "--threads", 0), "--threads")
    one_line_error(run("decompress", img, "-o", o, "-m", tiny_ckpt, "-j", 0), "--jobs")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "-b", "tensorflow"), "unknown backend", "torch")
    one_line_error(run("compress", img, "-o", o, "-m", tiny_ckpt, "-p", "fp8"), "precision")
    assert not o.exists()
    r = run("compress", img, "-o", o, "-m", tiny_ckpt, "--z-seed", 3, "--z-temperature", 0.5)
    assert r.exit_code == 0 and "warning:" in r.output and "lowers PSNR" in r.output, r.output
    h = unpack(o.read_bytes())[0]
    assert (h.z_mode, h.z_seed, h.z_temperature) == (1, 3, 0.5)
    # -q picks the shipped model of that quality (the id in the file says which)
    from ilc_export.pipeline.models import model_id, shipped_checkpoint, shipped_qualities

    for q in shipped_qualities()[:2]:
        r = run("compress", img, "-o", tmp_path / f"q{q}.ilc", "-q", q)
        assert r.exit_code == 0, r.output
        assert unpack((tmp_path / f"q{q}.ilc").read_bytes())[0].model_id.hex() == model_id(shipped_checkpoint(q))


# 8 ------------------------------------------------------------------------------------------
def test_output_paths_are_checked_first(tiny_ckpt, tmp_path):
    img = _img(tmp_path / "a.png")
    r = run("compress", img, "-o", tmp_path / "new" / "deeper" / "a.ilc", "-m", tiny_ckpt)
    assert r.exit_code == 0 and (tmp_path / "new" / "deeper" / "a.ilc").is_file(), r.output
    r = run("decompress", tmp_path / "new" / "deeper" / "a.ilc", "-o", tmp_path / "new2" / "x.png", "-m", tiny_ckpt)
    assert r.exit_code == 0 and (tmp_path / "new2" / "x.png").is_file(), r.output
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    e = one_line_error(run("compress", img, "-o", blocker / "a.ilc", "-m", tiny_ckpt), str(blocker))
    assert ".tmp" not in e
    # an unwritable place is found before the encode (the error comes before any "->" line)
    r = run("compress", img, "-o", "/proc/ilc-test.ilc", "-m", tiny_ckpt)
    e = one_line_error(r, "/proc", "not writable")
    assert "->" not in r.output and ".tmp" not in e
    # every compress error names its input
    bad = tmp_path / "in"
    _img(bad / "good.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    r = run("compress", bad, "-o", tmp_path / "bits", "-m", tiny_ckpt)
    assert r.exit_code == 1 and any("broken.png" in ln for ln in r.output.splitlines() if ln.startswith("error:"))


# 9 ------------------------------------------------------------------------------------------
def test_piped_output_is_one_line_per_file_and_version(tiny_ckpt, tmp_path):
    deep = tmp_path / ("a_rather_long_folder_name_" * 4) / "images"
    for i in range(3):
        _img(deep / f"picture_with_a_long_name_{i:02d}.png", seed=i)
    out = tmp_path / ("another_long_output_folder_name_" * 3)
    env = {**os.environ, "COLUMNS": "40"}
    p = subprocess.run([sys.executable, "-m", "ilc_export.cli.run_cli", "compress", str(deep), "-o", str(out),
                        "-m", str(tiny_ckpt), "--threads", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3, p.stdout
    for i, ln in enumerate(lines):
        assert ln.startswith(str(deep / f"picture_with_a_long_name_{i:02d}.png") + " -> " + str(out)) and "bpp" in ln
    for a, name in ((app, "ilc-run"), (export_app, "ilc-export")):
        r = runner.invoke(a, ["--version"])
        assert r.exit_code == 0 and r.output.startswith(name + " ") and len(r.output.splitlines()) == 1


# 11 -----------------------------------------------------------------------------------------
def test_max_pixels_lifts_and_lowers_the_limit(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # restored after the test (the CLI sets it too)
    img = _img(tmp_path / "big.png", 40, 60)  # 2400 px: more than twice the limit
    one_line_error(run("compress", img, "-o", tmp_path / "big.ilc", "-m", tiny_ckpt), "big.png", "--max-pixels")
    r = run("compress", img, "-o", tmp_path / "big.ilc", "-m", tiny_ckpt, "--max-pixels", 3000)
    assert r.exit_code == 0, r.output
    Image.MAX_IMAGE_PIXELS = 1000
    r = run("decompress", tmp_path / "big.ilc", "-o", tmp_path / "big.png2.png", "-m", tiny_ckpt)
    assert r.exit_code == 1 and "above the decoder's limit" in r.output and not (tmp_path / "big.png2.png").exists()
    r = run("decompress", tmp_path / "big.ilc", "-o", tmp_path / "big2.png", "-m", tiny_ckpt, "--max-pixels", 0)
    assert r.exit_code == 0 and Image.open(tmp_path / "big2.png").size == (60, 40), r.output
    one_line_error(run("compress", img, "-o", tmp_path / "x.ilc", "-m", tiny_ckpt, "--max-pixels", -1), "--max-pixels")


# 12 -----------------------------------------------------------------------------------------
def test_models_are_found_by_one_rule(tiny_ckpt, tiny_onnx, tmp_path, monkeypatch):
    from ilc_export.export.trt_build import default_out_dir
    from ilc_export.pipeline.api import open_codec

    img = _img(tmp_path / "a.png")
    root = tiny_onnx.parent.parent.parent  # <root>/engines/ilc-tiny/onnx
    monkeypatch.delenv("ILC_MODEL_PATH", raising=False)
    monkeypatch.chdir(root)  # ./engines is searched
    for cmd in ("compress", "demo"):
        args = [img, "-o", tmp_path / "c.ilc"] if cmd == "compress" else ["-o", tmp_path / "demo"]
        r = run(cmd, *args, "-m", tiny_ckpt, "-b", "onnxruntime")
        assert r.exit_code == 0, r.output
    r = run("decompress", tmp_path / "c.ilc", "-o", tmp_path / "c.png", "-b", "onnxruntime")
    assert r.exit_code == 0, r.output
    evaldir = tmp_path / "eval"
    _img(evaldir / "e.png")
    r = run("eval", evaldir, "--json", tmp_path / "e.json", "-m", tiny_ckpt, "-b", "onnxruntime")
    assert r.exit_code == 0 and r.output.startswith("ilc-tiny: "), r.output
    assert "point 1" not in r.output and "backend onnxruntime" in r.output
    # the same from anywhere with ILC_MODEL_PATH
    monkeypatch.chdir(tmp_path)
    one_line_error(run("decompress", tmp_path / "c.ilc", "-o", tmp_path / "c2.png", "-b", "onnxruntime"),
                   "ILC_MODEL_PATH")
    monkeypatch.setenv("ILC_MODEL_PATH", str(root / "engines"))
    r = run("decompress", tmp_path / "c.ilc", "-o", tmp_path / "c2.png", "-b", "onnxruntime")
    assert r.exit_code == 0, r.output
    # a folder picks its backend; fp16 graphs can be chosen
    assert open_codec(tiny_onnx).runner.name == "onnxruntime"
    c16 = open_codec(tiny_ckpt, precision="fp16")
    assert c16.runner.name == "onnxruntime" and c16.runner.files["forward"] == "forward.fp16.onnx"
    r = run("decompress", tmp_path / "c.ilc", "-o", tmp_path / "c16.png", "-p", "fp16")
    assert r.exit_code == 0, r.output
    one_line_error(run("compress", img, "-o", tmp_path / "x.ilc", "-m", tiny_onnx, "-b", "torch"), "onnxruntime")
    # TensorRT engines go beside the ONNX folder, as the help says
    assert default_out_dir(tiny_onnx) == tiny_onnx.parent / "trt"
    assert default_out_dir(tiny_onnx, fp16=True) == tiny_onnx.parent / "trt-fp16"
    assert default_out_dir(Path("/x/myexport")) == Path("/x/trt")
