"""Batches on Ray: same bytes as the local engine, killed workers retried, bad files reported.

One local Ray (2 CPUs) is shared by the module: starting it costs several seconds.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ilc_export.codec.bitstream import unpack
from ilc_export.scale import Item, Job, LocalEngine, run_batch

from conftest import ROOT

N_GOOD = 8


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ilc-export[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-in")
    rng = np.random.default_rng(3)
    for i in range(N_GOOD):
        h, w = (64, 96) if i % 2 else (80, 64)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _items(files, out, suffix):
    out.mkdir(parents=True, exist_ok=True)
    return [Item(f, out / (f.stem + suffix)) for f in files]


@pytest.fixture(scope="module")
def engine(ray_local, tiny_ckpt):
    """Two actors shared by the tests (started once; a killed one is replaced by the engine)."""
    from ilc_export.scale.ray_engine import RayEngine

    with RayEngine(workers=2, inflight=3) as e:
        assert e.start(Job("compress", model=str(tiny_ckpt), options={"threads": 1})) == 2  # both actors up before the first batch
        yield e


def _only_complete(out):
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temp files left behind
    return names


def test_ray_bytes_equal_local_engine(engine, images, tiny_ckpt, tmp_path, one_thread):
    files = sorted(images.iterdir())
    job = Job("compress", model=str(tiny_ckpt), options={"threads": 1})
    local = run_batch(LocalEngine(), job, _items(files, tmp_path / "local", ".ilc"))
    seen = []
    remote = run_batch(engine, job, _items(files, tmp_path / "ray", ".ilc"),
                       lambda r, done, total: seen.append((done, total)))
    assert not local.summary.failures and not remote.summary.failures
    assert seen == [(i + 1, N_GOOD) for i in range(N_GOOD)]  # one progress callback per file
    assert len({r.worker for r in remote.results}) == 2  # both actors did work
    names = _only_complete(tmp_path / "ray")
    assert names == _only_complete(tmp_path / "local") and len(names) == N_GOOD
    for n in names:
        assert (tmp_path / "ray" / n).read_bytes() == (tmp_path / "local" / n).read_bytes(), n
    # and back: decoded PNGs are identical too; results carry the caller's (relative) paths
    bits = sorted((tmp_path / "ray").iterdir())
    djob = Job("decompress", model=str(tiny_ckpt), options={"threads": 1})
    dl = run_batch(LocalEngine(), djob, _items(bits, tmp_path / "dlocal", ".png"))
    dr = run_batch(engine, djob, _items(bits, tmp_path / "dray", ".png"))
    assert not dl.summary.failures and not dr.summary.failures
    for a, b in zip(dl.results, dr.results):
        assert a.item.dst.read_bytes() == b.item.dst.read_bytes()
        assert b.value.dst == b.item.dst and b.value.stats.width in (64, 96)
    s = dr.summary
    assert s.engine == "ray" and s.workers == 2 and s.ok == N_GOOD and s.images_per_s > 0 and s.mb_per_s > 0


def test_killed_worker_files_are_retried(ray_local, engine, images, tiny_ckpt, tmp_path, one_thread):
    files = sorted(images.iterdir())
    job = Job("compress", model=str(tiny_ckpt), options={"threads": 1})
    want = run_batch(LocalEngine(), job, _items(files, tmp_path / "local", ".ilc"))
    killed = []

    def kill_one(r, done, total):
        if not killed:
            killed.append(engine.actors[0])
            ray_local.kill(engine.actors[0])

    got = run_batch(engine, job, _items(files, tmp_path / "ray", ".ilc"), kill_one)
    assert killed and not got.summary.failures
    assert got.summary.retried >= 1 and max(r.attempts for r in got.results) >= 2
    assert _only_complete(tmp_path / "ray") == _only_complete(tmp_path / "local")
    for a, b in zip(want.results, got.results):
        data = b.item.dst.read_bytes()
        unpack(data)  # complete (CRC, lengths)
        assert data == a.item.dst.read_bytes()


def test_bad_input_reported_for_its_file(engine, images, tiny_ckpt, tmp_path, one_thread):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (bad / "empty.jpg").write_bytes(b"")
    files = sorted(images.iterdir()) + sorted(bad.iterdir()) + [tmp_path / "missing.png"]
    job = Job("compress", model=str(tiny_ckpt), options={"threads": 1})
    got = run_batch(engine, job, _items(files, tmp_path / "out", ".ilc"))
    fails = got.summary.failures
    assert sorted(fails) == sorted(str(p) for p in files[N_GOOD:])
    assert "not an image" in fails[str(bad / "garbage.png")] and "empty file" in fails[str(bad / "empty.jpg")]
    assert got.summary.ok == N_GOOD and all(r.attempts == 1 for r in got.results)  # bad input is not retried
    assert _only_complete(tmp_path / "out") == sorted(f"img{i}.ilc" for i in range(N_GOOD))


def test_eval_records_match_local(engine, images, tiny_ckpt, tmp_path, one_thread):
    from ilc_export.verify.rd import evaluate_codec

    timing = {"enc", "dec", "enc_entropy", "dec_entropy"}
    local = evaluate_codec(images, models=[tiny_ckpt], limit=4, threads=1)
    remote = evaluate_codec(images, models=[tiny_ckpt], limit=4, threads=1, engine=engine)
    assert remote.keys() == local.keys() and remote["results"].keys() == local["results"].keys()
    assert remote["description"] == local["description"]
    for a, b in zip(local["per_image"][0], remote["per_image"][0]):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    for k in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
        assert remote["results"][k] == local["results"][k]


def test_wrong_model_is_one_error_before_the_batch(ray_local, engine, images, tmp_path):
    job = Job("compress", model=str(tmp_path / "nope.safetensors"), options={"threads": 1})
    with pytest.raises(Exception) as e:
        run_batch(engine, job, _items(sorted(images.iterdir()), tmp_path / "out", ".ilc"))
    assert "nope.safetensors" in str(e.value) and "\n" not in str(e.value).strip()
    # the actor's own exception (a user error the CLI prints in one line), not Ray's wrapper
    assert not isinstance(e.value, ray_local.exceptions.RayError) and not list((tmp_path / "out").iterdir())


def test_without_ray_one_line_says_what_to_install(monkeypatch):
    from ilc_export.scale import make_engine
    from ilc_export.scale.ray_engine import EngineUnavailable

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(EngineUnavailable, match=r"pip install 'ilc-export\[ray\]'") as e:
        make_engine("ray")
    assert "\n" not in str(e.value)
    # the runtime itself never imports ray
    code = ("import sys, ilc_export.scale, ilc_export.scale.ray_engine, ilc_export.cli.run_cli, ilc_export.verify.rd; "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_actor_plan_follows_cluster_resources():
    """One GPU per actor where the cluster has GPUs and the backend uses one; --threads CPUs each."""
    from ilc_export.scale.ray_engine import plan

    gpu_cluster = {"CPU": 64.0, "GPU": 4.0}
    job, opts, n = plan(Job("compress", backend="tensorrt", model="m"), gpu_cluster)
    assert (opts["num_gpus"], opts["num_cpus"], n, job.options["threads"]) == (1, 1, 4, 1)
    job, opts, n = plan(Job("eval", backend="onnxruntime", options={"threads": 4}), gpu_cluster)
    assert (opts["num_gpus"], opts["num_cpus"], n, job.options["threads"]) == (1, 4, 4, 4)
    job, opts, n = plan(Job("compress", options={"threads": 2}), gpu_cluster)  # torch codes on the CPU
    assert (opts["num_gpus"], opts["num_cpus"], n) == (0, 2, 32)
    job, opts, n = plan(Job("decompress"), {"CPU": 2.0}, workers=5)
    assert (opts["num_gpus"], n, job.options["threads"]) == (0, 5, 1)
    assert opts["max_restarts"] == 0  # the engine, not Ray, retries: it must know which files a dead actor held



def test_local_engine_threads_same_bytes_and_summary(images, tiny_ckpt, tmp_path, one_thread):
    """The local engine (no Ray): -j 2 gives -j 1's bytes; results come back in input order."""
    files = sorted(images.iterdir()) + [tmp_path / "missing.png"]
    job = Job("compress", model=str(tiny_ckpt), options={"threads": 1})
    one = run_batch(LocalEngine(1), job, _items(files, tmp_path / "j1", ".ilc"))
    seen = []
    two = run_batch(LocalEngine(2), job, _items(files, tmp_path / "j2", ".ilc"), lambda r, d, t: seen.append(d))
    assert [r.item.src for r in two.results] == files and seen == list(range(1, len(files) + 1))
    assert list(two.summary.failures) == [str(files[-1])] and two.summary.ok == N_GOOD
    for a, b in zip(one.results[:N_GOOD], two.results[:N_GOOD]):
        assert a.item.dst.read_bytes() == b.item.dst.read_bytes() and b.value.stats.num_bytes == b.out_bytes


def _cli(args):
    from typer.testing import CliRunner

    from ilc_export.cli.run_cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, res.output  # stdout and stderr as a terminal shows them


def test_cli_engine_ray_same_files_and_summary(ray_local, images, tiny_ckpt, tmp_path, one_thread):
    """`ilc-run compress|eval --engine ray` on the module's Ray (joined, not restarted); decompress
    takes the same path through the CLI as compress."""
    common = ["--model", tiny_ckpt, "--threads", 1]
    res, text = _cli(["compress", images, "-o", tmp_path / "local", *common])
    assert res.exit_code == 0, text
    res, text = _cli(["compress", images, "-o", tmp_path / "ray", *common, "--engine", "ray", "--workers", 2])
    assert res.exit_code == 0, text
    assert "summary:" in text and "images/s" in text and "engine ray" in text
    names = _only_complete(tmp_path / "ray")
    assert names == _only_complete(tmp_path / "local") and len(names) == N_GOOD
    assert all((tmp_path / "ray" / n).read_bytes() == (tmp_path / "local" / n).read_bytes() for n in names)
    res, text = _cli(["eval", images, "--json", tmp_path / "r.json", "-m", tiny_ckpt, "--threads", 1, "--limit", 2,
                      "--engine", "ray"])
    assert res.exit_code == 0, text
    import json

    got = json.loads((tmp_path / "r.json").read_text())
    assert [r["image"] for r in got["per_image"][0]] == ["img0.png", "img1.png"]
    assert ray_local.is_initialized()  # the CLI did not shut down a Ray it joined


def test_cli_engine_ray_without_ray_or_with_local(monkeypatch, images, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    res, text = _cli(["compress", images, "-o", tmp_path / "out", "--engine", "ray"])
    flat = " ".join(text.split())  # the test console wraps at 80 columns
    assert res.exit_code == 1 and "pip install 'ilc-export[ray]'" in flat and "Traceback" not in text
    assert flat.startswith("error:") and flat.count("error:") == 1, text
    res, text = _cli(["compress", images, "-o", tmp_path / "out", "--ray-address", "auto"])
    assert res.exit_code == 1 and "--engine ray" in text
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_decompress_finds_models_by_id_on_the_workers(engine, images, tiny_ckpt, tmp_path, monkeypatch, one_thread):
    """Without --model, the driver's search folders travel with the job: actors do not see its
    environment (ILC_MODEL_PATH here is set after they started, as on a cluster's other nodes)."""
    from ilc_export.cli.scale import batch_job

    files = sorted(images.iterdir())[:3]
    enc = run_batch(LocalEngine(), Job("compress", model=str(tiny_ckpt), options={"threads": 1}),
                    _items(files, tmp_path / "bits", ".ilc"))
    assert not enc.summary.failures
    monkeypatch.setenv("ILC_MODEL_PATH", str(tiny_ckpt.parent))
    job = batch_job("decompress", None, None, "torch", None, {"threads": 1}, False, None)
    assert job.model is None and str(tiny_ckpt.parent) in job.search
    bits = sorted((tmp_path / "bits").iterdir())
    got = run_batch(engine, job, _items(bits, tmp_path / "png", ".png"))
    want = run_batch(LocalEngine(), job, _items(bits, tmp_path / "png_local", ".png"))
    assert not got.summary.failures and not want.summary.failures
    for a, b in zip(want.results, got.results):
        assert a.item.dst.read_bytes() == b.item.dst.read_bytes()
