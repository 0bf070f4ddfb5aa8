"""`ilc-run report`: the verification a user runs before shipping (RD, BD-rate, speed, parity).

Writes into one folder: results JSON per codec (CompressAI format), BD-rate tables,
RD plots (anchors dashed), a speed table, and report.md + report.html.
"""
from __future__ import annotations

import html
import io
import json
import platform
from pathlib import Path

import numpy as np

from ..contract.files import write_atomic
from .rd import ResultCache, bd_psnr, bd_rate, evaluate_codec, load_results, pillow_curve, write_results_json

DEFAULT_ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "data" / "anchors" / "kodak"


def bd_rate_crosscheck(anchor: dict, test: dict, metric: str) -> float:
    """The same BD-rate from the maintained `bjontegaard` package (pchip), for cross-checking."""
    try:
        import bjontegaard as bd
    except ImportError:
        return float("nan")
    a, t = anchor["results"], test["results"]
    da, dt = np.asarray(a[metric]), np.asarray(t[metric])
    if metric.startswith("ms-ssim"):
        da, dt = -10 * np.log10(1 - da), -10 * np.log10(1 - dt)
    if max(da.min(), dt.min()) >= min(da.max(), dt.max()):
        return float("nan")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(bd.bd_rate(a["bpp"], da, t["bpp"], dt, method="pchip", require_matching_points=False))
    except Exception:
        return float("nan")


def load_anchors(folder: Path | None) -> list[dict]:
    folder = Path(folder) if folder else DEFAULT_ANCHORS
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        try:
            d = load_results(p)
            if d.get("results", {}).get("bpp"):
                d["name"] = f"{d.get('name', p.stem)} [{p.stem}]"
                out.append(d)
        except (ValueError, OSError):
            continue
    return out


def _fmt(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.1f}%"


def _db(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:+.2f} dB"


def _plot(curves: list[dict], anchors: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 5.8), dpi=100)
    for a in anchors:
        r = a["results"]
        if metric in r and len(r[metric]) == len(r["bpp"]):
            ax.plot(r["bpp"], r[metric], "--", lw=1, alpha=0.7, label=f"{a['name']} (published)")
    marks = iter("osD^v<>p*h")
    for c in curves:
        r = c["results"]
        ax.plot(r["bpp"], r[metric], next(marks, "o") + "-", lw=2, ms=5, label=c["name"])
    ax.set_xlabel("bits per pixel (real file size)")
    ax.set_ylabel("PSNR RGB (dB)" if metric.startswith("psnr") else "MS-SSIM RGB")
    ax.set_xlim(0, 1.6)
    if metric.startswith("psnr"):
        ax.set_ylim(22, 40)
    else:
        ax.set_ylim(0.85, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def build_report(images: Path, out: Path, backends: list[str], qualities: list[int] | None = None,
                 export_dirs: dict[str, Path] | None = None, anchors_dir: Path | None = None,
                 pillow_formats=("JPEG", "WEBP", "AVIF"), include_baseline: bool = True,
                 limit: int | None = None, progress=None, parity_files: list[Path] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out / "cache.jsonl")
    curves: dict[str, dict] = {}
    for be in backends:
        models = None
        if be != "torch":
            if not export_dirs or be not in export_dirs:
                raise ValueError(f"backend {be} needs an export folder per quality (--export)")
            models = export_dirs[be]
        curves[f"ILC ({be})"] = evaluate_codec(images, qualities, models=models, backend=be, limit=limit,
                                               progress=progress, name=f"ILC ({be})", cache=cache)
    if include_baseline:
        try:
            curves["Baseline conv (torch)"] = evaluate_codec(images, qualities, backend="torch", limit=limit,
                                                             progress=progress, name="Baseline conv (torch)",
                                                             kind="baseline", cache=cache)
        except (ValueError, LookupError):
            pass
    for fmt in pillow_formats:
        curves[f"Pillow {fmt}"] = pillow_curve(images, fmt, limit=limit, progress=progress, cache=cache)
    for name, c in curves.items():
        fname = name.lower().replace(" ", "_").replace("(", "").replace(")", "") + ".json"
        write_results_json(c, out / fname)
    anchors = load_anchors(anchors_dir)

    # BD-rate tables
    jpeg = curves.get("Pillow JPEG")
    ref = curves.get("ILC (torch)")
    rows = []
    for name, c in curves.items():
        row = {"codec": name}
        for m in ("psnr-rgb", "ms-ssim-rgb"):
            if jpeg is not None and c is not jpeg:
                row[f"vs_jpeg_{m}"] = bd_rate(jpeg, c, m)
                row[f"vs_jpeg_{m}_check"] = bd_rate_crosscheck(jpeg, c, m)
            if ref is not None and c is not ref:
                row[f"vs_ilc_{m}"] = bd_rate(ref, c, m)
        if jpeg is not None and c is not jpeg:
            row["bd_psnr_vs_jpeg"] = bd_psnr(jpeg, c)
        if ref is not None and c is not ref:
            row["bd_psnr_vs_ilc"] = bd_psnr(ref, c)
        rows.append(row)
    anchor_rows = []
    for a in anchors:
        if ref is None:
            break
        anchor_rows.append({"anchor": a["name"], "ilc_vs_anchor_psnr": bd_rate(a, ref, "psnr-rgb"),
                            "ilc_vs_anchor_psnr_check": bd_rate_crosscheck(a, ref, "psnr-rgb"),
                            "ilc_vs_anchor_bd_psnr": bd_psnr(a, ref)})
    base = curves.get("Baseline conv (torch)")
    claim = None
    if ref is not None and base is not None:
        claim = {m: {"bd_rate_ilc_vs_baseline": bd_rate(base, ref, m), "bd_psnr_ilc_vs_baseline": bd_psnr(base, ref, m)}
                 for m in ("psnr-rgb", "ms-ssim-rgb")}
        claim["budget"] = training_budget()

    _plot(list(curves.values()), anchors, "psnr-rgb", out / "rd_psnr.png", f"Kodak-style RD, {images}")
    _plot(list(curves.values()), anchors, "ms-ssim-rgb", out / "rd_msssim.png", f"Kodak-style RD, {images}")

    # speed table (mean per image, per backend and quality)
    speed = []
    for name, c in curves.items():
        if not name.startswith(("ILC", "Baseline")):
            continue
        for pt in c["per_image"]:
            enc = np.mean([r["enc"] for r in pt])
            dec = np.mean([r["dec"] for r in pt])
            ent = np.mean([r.get("enc_entropy", 0) + r.get("dec_entropy", 0) for r in pt])
            speed.append({"codec": name, "model": pt[0]["model"], "enc_s": enc, "dec_s": dec,
                          "entropy_share": ent / (enc + dec)})

    parity = [parity_rows(json.loads(Path(p).read_text())) for p in parity_files or []]
    summary = {"images": str(images), "n_images": len(next(iter(curves.values()))["per_image"][0]),
               "machine": f"{platform.machine()} {platform.processor() or ''} {platform.system()}, "
                          f"{__import__('os').cpu_count()} cores",
               "bd_rate": rows, "anchors": anchor_rows, "paper_claim": claim, "encoder_addons": encoder_addons(), "speed": speed, "parity": [r for rows_ in parity for r in rows_],
               "curves": {k: v["results"] for k, v in curves.items()}}
    write_atomic(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    md = render_markdown(summary)
    write_atomic(out / "report.md", md.encode())
    write_atomic(out / "report.html", render_html(md).encode())
    return summary


def training_budget() -> dict:
    """Steps, wall time and device of each shipped model's training, from its JSON card: the
    paper-claim comparison is only fair at an equal budget, so the report states it."""
    from ..pipeline.models import checkpoint_dir

    out = {}
    for card in sorted(checkpoint_dir().glob("*.json")):
        info = json.loads(card.read_text()).get("info", {})
        out[card.stem] = {k: info[k] for k in ("steps", "wall_s", "device", "pixels", "init") if k in info}
        if "decoder_finetune" in info:  # g trained further with the encoder add-on, the rest frozen
            tune = info["decoder_finetune"]
            out[card.stem]["decoder_finetune_steps"] = tune.get("steps")
            out[card.stem]["decoder_finetune_parts"] = finetune_parts(tune)
    return out


def finetune_parts(tune: dict) -> str:
    """What a card's ``decoder_finetune`` trained, in words: 'g', 'g and the post-filter', ..."""
    parts = ["g"] + ["the post-filter"] * bool(tune.get("post_hidden")) + ["the hyperprior"] * bool(tune.get("hyper"))
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "g"


def encoder_addons() -> dict:
    """The shipped checkpoints' encoder add-ons (name -> kind and info): they move the ILC's
    curve without changing its model id, so the report names them."""
    from ..contract.encoder_addon import addon_path, read_addon_meta
    from ..pipeline.models import shipped_checkpoints

    out = {}
    for c in shipped_checkpoints():
        if addon_path(c).is_file():
            meta = read_addon_meta(addon_path(c))
            out[c.stem] = {"kind": meta["kind"], "info": meta["info"]}
    return out


def _budget_line(budget: dict) -> str:
    if not budget:
        return ""
    parts = [f"{name}: {b.get('steps', '?')} steps, {b.get('wall_s', '?')} s on {b.get('device', '?')}"
             + (f", then {b['decoder_finetune_steps']} steps of {b.get('decoder_finetune_parts', 'g')} with h (f frozen)"
                if "decoder_finetune_steps" in b else "")
             for name, b in budget.items()]
    return "Training budget of each model (from its card): " + "; ".join(parts) + ".\n"


def parity_rows(rep: dict) -> list[dict]:
    """Flatten an `ilc-export verify --json` report: one row per model, precision and graph."""
    rows = []
    for prec, p in rep.get("precisions", {}).items():
        if "skipped" in p:
            continue
        for g, outs in p["graphs"].items():
            vals = [o for o in outs.values() if "max_abs" in o]
            rows.append({"model": rep.get("model_name"), "precision": prec, "graph": g,
                         "max_abs": max((o["max_abs"] for o in vals), default=float("nan")),
                         "mean_abs": max((o["mean_abs"] for o in vals), default=float("nan")),
                         "psnr_vs_torch_min": p["psnr_vs_torch_min"], "pass": all(o["pass"] for o in outs.values())})
    return rows


def render_markdown(s: dict) -> str:
    L = ["# ILC report\n", f"Images: `{s['images']}` ({s['n_images']} images). Machine: {s['machine']}.\n",
         "![RD PSNR](rd_psnr.png)\n", "![RD MS-SSIM](rd_msssim.png)\n",
         "## Rate-distortion (mean over images, real file sizes)\n"]
    for name, r in s["curves"].items():
        pts = ", ".join(f"{b:.3f} bpp / {p:.2f} dB" for b, p in zip(r["bpp"], r["psnr-rgb"]))
        L.append(f"- **{name}**: {pts}")
    if s.get("encoder_addons"):
        L.append("\nEncoder add-ons used by the shipped models (encoder side only; the model ids, decoders and bitstream "
                 "are those of the models alone): " + "; ".join(
                     f"{n}: {a['kind']}, {a['info'].get('steps', '?')} steps" for n, a in s["encoder_addons"].items()) + ".")
    L += ["\n## BD-rate (negative = fewer bits for the same quality)\n",
          "| codec | vs JPEG (PSNR) | check (bjontegaard pchip) | vs JPEG (MS-SSIM) | vs ILC torch (PSNR) | BD-PSNR vs JPEG | BD-PSNR vs ILC torch |",
          "|---|---|---|---|---|---|---|"]
    for r in s["bd_rate"]:
        L.append(f"| {r['codec']} | {_fmt(r.get('vs_jpeg_psnr-rgb'))} | {_fmt(r.get('vs_jpeg_psnr-rgb_check'))} | "
                 f"{_fmt(r.get('vs_jpeg_ms-ssim-rgb'))} | {_fmt(r.get('vs_ilc_psnr-rgb'))} | "
                 f"{_db(r.get('bd_psnr_vs_jpeg'))} | {_db(r.get('bd_psnr_vs_ilc'))} |")
    L.append("\nBD-rate is n/a where two curves share no quality range or a curve is not monotonic; BD-PSNR (dB at equal rate, "
             "over the shared rate range) still compares them.")
    if s["anchors"]:
        L += ["\n## ILC (torch) vs published anchor curves (PSNR)\n", "| anchor | BD-rate | check | BD-PSNR |", "|---|---|---|---|"]
        for a in s["anchors"]:
            L.append(f"| {a['anchor']} | {_fmt(a['ilc_vs_anchor_psnr'])} | {_fmt(a['ilc_vs_anchor_psnr_check'])} | "
                     f"{_db(a.get('ilc_vs_anchor_bd_psnr'))} |")
    if s.get("paper_claim"):
        c = s["paper_claim"]
        L += ["\n## Paper claim: ILC vs the non-invertible baseline (same entropy model; the training budget of each model below)\n",
              "| metric | BD-rate ILC vs baseline | BD-quality ILC vs baseline |", "|---|---|---|",
              f"| PSNR | {_fmt(c['psnr-rgb']['bd_rate_ilc_vs_baseline'])} | {_db(c['psnr-rgb']['bd_psnr_ilc_vs_baseline'])} |",
              f"| MS-SSIM | {_fmt(c['ms-ssim-rgb']['bd_rate_ilc_vs_baseline'])} | "
              f"{c['ms-ssim-rgb']['bd_psnr_ilc_vs_baseline']:+.4f} (MS-SSIM units) |",
              "", _budget_line(c.get("budget", {}))]
    L += ["\n## Speed (seconds per image, this machine, one run)\n",
          "| codec | model | encode s | decode s | entropy coder share |", "|---|---|---|---|---|"]
    for r in s["speed"]:
        L.append(f"| {r['codec']} | {r['model']} | {r['enc_s']:.3f} | {r['dec_s']:.3f} | {100 * r['entropy_share']:.1f}% |")
    if s["parity"]:
        L += ["\n## Parity: ONNX Runtime vs torch (`ilc-export verify`)\n",
              "| model | precision | graph | max abs | mean abs | reconstruction PSNR vs torch (min) | pass |",
              "|---|---|---|---|---|---|---|"]
        for r in s["parity"]:
            L.append(f"| {r['model']} | {r['precision']} | {r['graph']} | {r['max_abs']:.2e} | {r['mean_abs']:.2e} | "
                     f"{r['psnr_vs_torch_min']:.2f} dB | {'yes' if r['pass'] else 'NO'} |")
    return "\n".join(L) + "\n"


def render_html(md: str) -> str:
    """A dependency-free offline HTML rendering of report.md (tables, images, lists)."""
    out, in_table, in_pre = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_pre else "<pre>")
            in_pre = not in_pre
            continue
        if in_pre:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table border=1 cellpadding=4>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            out.append(f'<img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}" width=800>')
        elif line.startswith("#"):
            n = len(line) - len(line.lstrip("#"))
            out.append(f"<h{n}>{html.escape(line[n:].strip())}</h{n}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "<!doctype html><meta charset=utf-8><title>ILC report</title><body style='font-family:sans-serif'>\n" + "\n".join(out) + "\n</body>\n"
