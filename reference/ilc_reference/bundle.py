"""Carry a training plan to a borrowed GPU and its results back, within transfer limits.

    # here: pack what the plan needs into a folder that travels with the work tree
    python -m ilc_reference.bundle pack --plan plan.json --out gpu_window/bundle [--resume-from runs]
    # there (scripts/gpu_window.sh does these three): lay out, train, pack the results
    python -m ilc_reference.bundle unpack gpu_window/bundle --work /tmp/w
    python -m ilc_reference.multitrain --plan /tmp/w/plan.json --out-root /tmp/w/runs --deadline-s 500
    python -m ilc_reference.bundle pack-results /tmp/w/runs --out "$OUT"
    # here again: put the returned states/weights/logs into run folders
    python -m ilc_reference.bundle adopt <returned files dir> --runs runs

A bundle is a folder: plan.json (paths relative to the bundle, or "repo:<path>" for files the
work tree carries anyway, such as the shipped checkpoints), init/ (init weights not in the
repo), runs/<name>/ (states to resume), data/ (the training images re-encoded as JPEG at a
reduced size, as many as fit) and bundle.json (every file's size and sha256).

Size: the bundle must fit --cap-mib; with --tree-aware (default) also what the transfer
limit (64 MiB) leaves after the git work tree (tracked + untracked-not-ignored files), since
both travel together. Results come back as one tar split into at most --max-files parts of at
most --file-mib each; each run at the most exact level that fits: "exact" (full state), then
"compact" (Adam moments in bf16), then "weights" (weights only, continue with --init); runs
early in the plan keep their exact states longest.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from ilc_export.contract.model_id import TABLE_PREFIX

from .trainstate import INDEX, LEGACY, load_state, read_index, read_parts, save_state, state_files, write_parts

MIB = 1 << 20
TRANSFER_LIMIT = 64 * MIB
REPO_PREFIX = "repo:"
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def repo_root(cwd: Path = Path(".")) -> Path | None:
    out = _git(["rev-parse", "--show-toplevel"], cwd)
    return Path(out.strip()) if out else None


def tree_bytes(root: Path) -> int:
    """Bytes of what a transfer sends of this checkout: tracked and untracked-not-ignored files."""
    out = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], root) or ""
    total = 0
    for rel in filter(None, out.split("\0")):
        p = root / rel
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def _tracked(path: Path, root: Path | None) -> str | None:
    """path relative to the repo root if git tracks it (then it travels with the tree)."""
    if root is None:
        return None
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return str(rel) if _git(["ls-files", "--error-unmatch", str(rel)], root) is not None else None


# ---------------------------------------------------------------------------------- pack


def config_fields(d: dict) -> dict:
    """ModelConfig fields from a config JSON or a checkpoint's .json sidecar ({"config": {...}, "info": ...})."""
    return d["config"] if isinstance(d.get("config"), dict) else d


def encode_images(dirs: list[str], min_side: int, short_side: int, quality: int) -> list[tuple[str, bytes]]:
    """Every image under dirs as JPEG bytes, short side reduced to short_side (never below min_side).

    Images whose short side is below min_side are skipped (the trainer cannot crop them).
    """
    from PIL import Image

    out = []
    for d in dirs:
        d = Path(d)
        for p in sorted(q for q in d.rglob("*") if q.suffix.lower() in IMAGE_EXT):
            with Image.open(p) as im:
                im = im.convert("RGB")
                s = min(im.size)
                if s < min_side:
                    continue
                target = max(min_side, short_side) if short_side else s
                if s > target:
                    k = target / s
                    im = im.resize((max(target, round(im.width * k)), max(target, round(im.height * k))),
                                   Image.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=True)
            out.append((f"{d.name}/{p.relative_to(d).with_suffix('.jpg')}", buf.getvalue()))
    return out


def evenly(items: list, budget: int) -> list:
    """The largest evenly spread subset of (name, bytes) items whose bytes fit budget."""
    def pick(f):
        return [it for i, it in enumerate(items) if math.floor((i + 1) * f) > math.floor(i * f)]

    if sum(len(b) for _, b in items) <= budget:
        return items
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if sum(len(b) for _, b in pick(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return pick(lo)


def pack(plan_path: str, out: str, cap_mib: float = 60, tree_aware: bool = True, data: list[str] | None = None,
         short_side: int = 512, quality: int = 88, resume_from: str | None = None, compact_states: bool = False,
         init_fp16: bool = False) -> dict:
    """Write a bundle folder for plan_path; returns its manifest."""
    plan = json.loads(Path(plan_path).read_text())
    out = Path(out)
    if out.exists():
        if any(out.iterdir()) and not (out / "bundle.json").exists():
            raise SystemExit(f"{out} exists and is not a bundle: refusing to replace it")
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    root = repo_root()
    cap = int(cap_mib * MIB)
    tree = tree_bytes(root) if (tree_aware and root is not None) else 0
    if tree_aware and root is not None:
        cap = min(cap, TRANSFER_LIMIT - tree - MIB // 2)
        if cap <= 0:
            raise SystemExit(f"the work tree alone is {tree / MIB:.1f} MiB: nothing fits the {TRANSFER_LIMIT // MIB} MiB transfer")
    defaults = dict(plan.get("defaults", {}))
    data_dirs = data or defaults.get("data") or sorted({d for r in plan["runs"] for d in r.get("data", [])})
    crops = [c for r in plan["runs"] for c in (r.get("crop") or defaults.get("crop") or [320])]
    new_runs = []
    notes = []
    (out / "init").mkdir()
    for r in plan["runs"]:
        r = {k.replace("-", "_"): v for k, v in r.items()}
        name = r["name"]
        cfg = r.get("config", defaults.get("config"))
        if isinstance(cfg, str):
            r["config"] = config_fields(json.loads(Path(cfg).read_text()))
        init = r.get("init", defaults.get("init"))
        if init:
            rel = _tracked(Path(init), root)
            if rel is not None:
                r["init"] = REPO_PREFIX + rel
            else:
                dst = out / "init" / f"{name}.safetensors"
                if init_fp16:
                    _to_fp16(Path(init), dst)
                else:
                    shutil.copyfile(init, dst)
                r["init"] = f"init/{dst.name}"
        if resume_from:
            src = Path(resume_from) / name
            files = state_files(src)
            if files:
                dst = out / "runs" / name
                if compact_states or files[0].name == LEGACY:
                    st = load_state(src)
                    st.pop("_exact", None)
                    save_state(dst, st, moments="bf16" if compact_states else "fp32")
                else:
                    dst.mkdir(parents=True, exist_ok=True)
                    for f in files:
                        shutil.copyfile(f, dst / f.name)
                notes.append(f"{name}: resumes from step {read_index(dst)['step']}")
        r.pop("data", None)
        new_runs.append(r)
    defaults.pop("data", None)
    defaults.pop("init", None)  # resolved per run above
    if isinstance(defaults.get("config"), str):
        defaults.pop("config")
    new_plan = {"defaults": {**defaults, "data": ["data"]}, "runs": new_runs}
    (out / "plan.json").write_text(json.dumps(new_plan, indent=1) + "\n")
    fixed = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    budget = cap - fixed - 64 * 1024  # room for bundle.json
    if budget <= 0:
        raise SystemExit(f"plan, init and states take {fixed / MIB:.1f} MiB; the cap is {cap / MIB:.1f} MiB")
    t = time.time()
    imgs = encode_images(data_dirs, max(crops), short_side, quality)
    if not imgs:
        raise SystemExit(f"no usable images under {data_dirs}")
    kept = evenly(imgs, budget)
    if not kept:
        raise SystemExit(f"no image fits the {budget / MIB:.1f} MiB left for data")
    for name, b in kept:
        p = out / "data" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
    files = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    total = sum(f["bytes"] for f in files.values())
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "plan": str(plan_path),
        "bytes": total, "cap_bytes": cap, "tree_bytes": tree,
        "data": {"sources": [str(d) for d in data_dirs], "images": len(kept), "of": len(imgs), "short_side": short_side,
                 "quality": quality, "bytes": sum(len(b) for _, b in kept), "encode_s": round(time.time() - t, 1)},
        "notes": notes, "files": files,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"bundle {out}: {total / MIB:.1f} MiB (cap {cap / MIB:.1f} MiB; work tree {tree / MIB:.1f} MiB); "
          f"{len(kept)}/{len(imgs)} images at short side <= {max(max(crops), short_side)}, JPEG q{quality}")
    for n in notes:
        print(n)
    return manifest


def _to_fp16(src: Path, dst: Path):
    """Float weights as fp16 (half the bytes; the trainer casts them back to fp32 on load)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(TABLE_PREFIX)}
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in t.items()}, str(dst), metadata=meta)


# -------------------------------------------------------------------------------- unpack


def verify(bundle: Path) -> dict:
    manifest = json.loads((bundle / "bundle.json").read_text())
    for rel, f in manifest["files"].items():
        p = bundle / rel
        if not p.is_file() or p.stat().st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            raise SystemExit(f"{p}: missing or damaged (size/sha256 differ from bundle.json)")
    return manifest


def unpack(bundle: str, work: str, repo: str = ".") -> Path:
    """Check a bundle and write work/plan.json (absolute paths) and work/runs/<name>/ states."""
    bundle, work = Path(bundle).resolve(), Path(work)
    verify(bundle)
    plan = json.loads((bundle / "plan.json").read_text())
    repo = Path(repo).resolve()

    def resolve(p: str) -> str:
        return str(repo / p[len(REPO_PREFIX):]) if p.startswith(REPO_PREFIX) else str(bundle / p)

    plan["defaults"]["data"] = [resolve(d) for d in plan["defaults"]["data"]]
    for r in plan["runs"]:
        if r.get("init"):
            r["init"] = resolve(r["init"])
            if not Path(r["init"]).exists():
                raise SystemExit(f"init weights not found: {r['init']}")
        src = bundle / "runs" / r["name"]
        if src.is_dir():
            dst = work / "runs" / r["name"]
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                shutil.copyfile(f, dst / f.name)
    work.mkdir(parents=True, exist_ok=True)
    (work / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    print(f"unpacked {bundle} -> {work}/plan.json ({len(plan['runs'])} runs)")
    return work / "plan.json"


# -------------------------------------------------------------------------- pack results

RESULT_INDEX = "results-index.json"


def _run_payload(run: Path, level: str, scratch: Path) -> list[tuple[str, Path]]:
    """(archive name, file) pairs for one run folder at a level."""
    name = run.name
    items = []
    for f in ("model.json", "multi.json", "plan-config.json"):
        if (run / f).exists():
            items.append((f"{name}/{f}", run / f))
    if (run / "log.jsonl").exists():
        gz = scratch / f"{name}.log.jsonl.gz"
        if not gz.exists():
            gz.write_bytes(gzip.compress((run / "log.jsonl").read_bytes(), 6))
        items.append((f"{name}/log.jsonl.gz", gz))
    if level == "weights" or not state_files(run):
        if (run / "model.safetensors").exists():
            items.append((f"{name}/model.safetensors", run / "model.safetensors"))
        return items
    if level == "compact":
        dst = scratch / f"compact-{name}"
        if not (dst / INDEX).exists():
            st = load_state(run)
            st.pop("_exact", None)
            save_state(dst, st, moments="bf16")
        files = state_files(dst)
    else:
        files = state_files(run)
    return items + [(f"{name}/{f.name}", f) for f in files]


def pack_results(runs_root: str, out: str, level: str = "auto", max_files: int = 8, file_mib: float = 16,
                 total_mib: float = 64) -> dict:
    """Tar the runs under runs_root, each at the most exact level that fits, split into parts under out.

    level "auto": start with every run exact and, while the total does not fit, take the run
    latest in the plan (multi.json's order; else by name) one level down (exact -> compact ->
    weights), so the first runs of a plan keep their exact states longest.
    """
    runs_root, out = Path(runs_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    part = int(file_mib * MIB) - 4096  # a little under the per-file limit
    max_parts = max_files - 1  # one file is the index
    limit = min(int(total_mib * MIB) - 64 * 1024, part * max_parts)
    runs = sorted(p for p in runs_root.iterdir() if p.is_dir())
    if (runs_root / "multi.json").exists():
        order = [r["name"] for r in json.loads((runs_root / "multi.json").read_text()).get("runs", [])]
        runs.sort(key=lambda p: order.index(p.name) if p.name in order else len(order))
    extras = [(f.name, f) for f in sorted(runs_root.iterdir()) if f.is_file() and f.suffix in (".json", ".jsonl", ".log")]
    ladder = ["exact", "compact", "weights"]
    levels = {r.name: ("exact" if level == "auto" else level) for r in runs}
    with tempfile.TemporaryDirectory() as td:
        scratch = Path(td)
        while True:
            items = list(extras)
            for r in runs:
                items += _run_payload(r, levels[r.name], scratch)
            size = sum(f.stat().st_size + 1024 for _, f in items) + 10240  # tar headers and end blocks
            if size <= limit:
                break
            down = [r.name for r in reversed(runs) if levels[r.name] != "weights"] if level == "auto" else []
            if not down:
                raise SystemExit(f"results do not fit {limit / MIB:.1f} MiB even as weights only ({size / MIB:.1f} MiB)")
            levels[down[0]] = ladder[ladder.index(levels[down[0]]) + 1]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arc, f in items:
                tar.add(f, arcname=arc)
        blob = buf.getbuffer()
    for old in out.glob("results.tar.*"):
        old.unlink()
    parts = write_parts(out, "results.tar", blob, part)
    kinds = set(levels.values())
    index = {"level": kinds.pop() if len(kinds) == 1 else "mixed", "levels": levels, "bytes": len(blob), "parts": parts,
             "runs": [r.name for r in runs], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / RESULT_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    print(f"results: {len(blob) / MIB:.1f} MiB in {len(parts)} part(s) under {out}; "
          + ", ".join(f"{k} {v}" for k, v in levels.items()))
    return index


# --------------------------------------------------------------------------------- adopt


def adopt(results: str, runs_root: str = "runs") -> list[str]:
    """Put returned results into runs_root/<name>/: state (replacing the local one), weights,
    model.json, and the log records after the local log's last step."""
    results, runs_root = Path(results), Path(runs_root)
    index = json.loads((results / RESULT_INDEX).read_text())
    try:
        blob = read_parts(results, index["parts"], RESULT_INDEX)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    adopted = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp, filter="data")
        stamp = index["created"].replace(":", "").replace("-", "")
        for src in sorted(p for p in tmp.iterdir() if p.is_dir()):
            dst = runs_root / src.name
            dst.mkdir(parents=True, exist_ok=True)
            _adopt_run(src, dst, stamp)
            adopted.append(src.name)
        for f in tmp.iterdir():
            if f.is_file():
                shutil.copyfile(f, runs_root / f"gpu-{stamp}-{f.name}")
    print(f"adopted {len(adopted)} run(s) at level {index['level']} into {runs_root}: {', '.join(adopted)}")
    return adopted


def _adopt_run(src: Path, dst: Path, stamp: str):
    import torch  # noqa: F401  (load_state needs it)

    from .checkpoint import save_checkpoint
    from .config import ModelConfig
    from .model import build_model

    if (src / INDEX).exists():
        st = load_state(src)
        for f in state_files(dst):  # the returned state supersedes the local one
            f.unlink()
        for f in state_files(src):
            if f.name != INDEX:
                shutil.copyfile(f, dst / f.name)
        shutil.copyfile(src / INDEX, dst / INDEX)  # index last: a complete state at every moment
        info = json.loads((src / "model.json").read_text())["info"] if (src / "model.json").exists() else {}
        model = build_model(ModelConfig.from_dict(st["config"]))
        model.load_state_dict(st["model"])
        save_checkpoint(model, dst / "model", info=info)
    elif (src / "model.safetensors").exists():
        shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
        if (src / "model.json").exists():
            shutil.copyfile(src / "model.json", dst / "model.json")
        idx = read_index(dst)
        legacy = dst / LEGACY
        if idx is not None or legacy.exists():
            # a local state is older than these weights: keep it, but not where a rerun resumes from it
            p = dst / INDEX if idx is not None else legacy
            p.rename(p.with_name(p.name + ".superseded"))
            print(f"{dst}: local state moved aside ({p.name}.superseded); continue with --init {dst / 'model.safetensors'}")
    for f in ("plan-config.json",):
        if (src / f).exists():
            shutil.copyfile(src / f, dst / f)
    if (src / "log.jsonl.gz").exists():
        new = gzip.decompress((src / "log.jsonl.gz").read_bytes()).decode().splitlines(keepends=True)
        new = [line if line.endswith("\n") else line + "\n" for line in new if line.strip()]
        local = dst / "log.jsonl"
        last = 0
        if local.exists():
            for line in local.read_text().splitlines():
                if line.strip():
                    last = int(json.loads(line).get("step", 0))
        first = int(json.loads(new[0]).get("step", 1)) if new else last + 1
        if first == last + 1:  # the returned steps continue the local log
            with open(local, "a") as f:
                f.writelines(new)
        else:  # another history (e.g. a fresh run from --init into a used folder): keep both
            other = dst / f"log-gpu-{stamp}.jsonl"
            other.write_text("".join(new))
            print(f"{dst}: returned log starts at step {first}, local log ends at {last}; kept as {other.name}")


# ----------------------------------------------------------------------------------- CLI


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="bundle a plan (config, init/state, re-encoded data) under a size cap")
    a.add_argument("--plan", required=True)
    a.add_argument("--out", default="gpu_window/bundle")
    a.add_argument("--cap-mib", type=float, default=60)
    a.add_argument("--no-tree-aware", dest="tree_aware", action="store_false",
                   help="do not shrink the cap by the size of the git work tree that travels with it")
    a.add_argument("--data", nargs="+", default=None, help="image folders (default: the plan's)")
    a.add_argument("--short-side", type=int, default=512, help="reduce images to this short side (never below the largest crop)")
    a.add_argument("--quality", type=int, default=88)
    a.add_argument("--resume-from", default=None, help="runs root whose <name>/ states the bundle carries")
    a.add_argument("--compact-states", action="store_true", help="carry states with bf16 Adam moments (approximate resume)")
    a.add_argument("--init-fp16", action="store_true", help="carry init weights that are not in the repo as fp16")
    u = sub.add_parser("unpack", help="check a bundle and lay out plan.json + run folders (GPU side)")
    u.add_argument("bundle")
    u.add_argument("--work", required=True)
    u.add_argument("--repo", default=".", help="root of the work tree that repo: paths refer to")
    r = sub.add_parser("pack-results", help="tar + split the run folders for the trip back (GPU side)")
    r.add_argument("runs_root")
    r.add_argument("--out", required=True)
    r.add_argument("--level", default="auto", choices=["auto", "exact", "compact", "weights"])
    r.add_argument("--max-files", type=int, default=8)
    r.add_argument("--file-mib", type=float, default=16)
    r.add_argument("--total-mib", type=float, default=64)
    d = sub.add_parser("adopt", help="put returned results into local run folders")
    d.add_argument("results", help="folder holding results-index.json and results.tar.*")
    d.add_argument("--runs", default="runs")
    x = p.parse_args(argv)
    if x.cmd == "pack":
        pack(x.plan, x.out, x.cap_mib, x.tree_aware, x.data, x.short_side, x.quality, x.resume_from,
             x.compact_states, x.init_fp16)
    elif x.cmd == "unpack":
        unpack(x.bundle, x.work, x.repo)
    elif x.cmd == "pack-results":
        pack_results(x.runs_root, x.out, x.level, x.max_files, x.file_mib, x.total_mib)
    else:
        adopt(x.results, x.runs)


if __name__ == "__main__":
    main()
