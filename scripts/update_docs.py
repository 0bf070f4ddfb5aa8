"""Regenerate the results blocks of README.md and docs/model-card.md from docs/results/.

    python scripts/update_docs.py

Rewrites the text between `<!-- results:NAME:start -->` and `<!-- results:NAME:end -->`.
Inputs: summary.json (ilc-run report), runtime_checks.json, cross_backend_q2.json,
reference_estimated.json, bench_backends_q2.json (optional), trt_build_q2_*.txt (optional).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "docs" / "results"


def _load(name):
    p = RES / name
    return json.loads(p.read_text()) if p.exists() else None


def pct(v, digits=1):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f} %"


def db(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f} dB"


def models_table(s, est) -> str:
    rows = ["| model | real bpp (file size) | PSNR dB | MS-SSIM | estimated bpp (float model alone) |", "|---|---|---|---|---|"]
    for curve, kind in (("ILC (torch)", "ilc"), ("Baseline conv (torch)", "baseline")):
        c = s["curves"].get(curve)
        if not c:
            continue
        e = (est or {}).get(kind, {}).get("results", {}).get("bpp", [None] * len(c["bpp"]))
        for i, (b, p, m) in enumerate(zip(c["bpp"], c["psnr-rgb"], c["ms-ssim-rgb"])):
            eb = f"{e[i]:.3f}" if i < len(e) and e[i] is not None else "n/a"
            rows.append(f"| {kind}-q{i + 1} | {b:.3f} | {p:.2f} | {m:.3f} | {eb} |")
    return "\n".join(rows)


def budget_label(budget) -> str:
    """'equal budget (590 s on <device> each; q2: ILC 3592 steps, baseline 10801)' for the q2
    pair; where the cards' wall times or devices differ it says so instead of 'equal'."""
    i, b = (budget or {}).get("ilc-q2"), (budget or {}).get("baseline-q2")
    if not i or not b:
        return "equal budget"
    steps = f"q2: ILC {i.get('steps')} steps, baseline {b.get('steps')}"
    if i.get("decoder_finetune_steps"):
        steps += f"; then {i['decoder_finetune_steps']} CPU steps of the ILC's {i.get('decoder_finetune_parts', 'g')} with h, f frozen"
    if i.get("wall_s") == b.get("wall_s") and i.get("device") == b.get("device") and not i.get("decoder_finetune_steps"):
        return f"equal budget ({i['wall_s']} s on {i['device']} each; {steps})"
    return f"**unequal budget** (ILC {i.get('wall_s')} s, baseline {b.get('wall_s')} s of GPU time; {steps}; see the model card)"


def bd_table(s) -> str:
    by = {r["codec"]: r for r in s["bd_rate"]}
    ilc, web, avif = by.get("ILC (torch)", {}), by.get("Pillow WEBP", {}), by.get("Pillow AVIF", {})
    base = by.get("Baseline conv (torch)", {})
    claim = s.get("paper_claim") or {}
    rows = ["| comparison (Kodak, measured here) | BD-rate (PSNR) | BD-rate (MS-SSIM) | BD-PSNR |", "|---|---|---|---|",
            f"| ILC vs Pillow JPEG 4:2:0 | **{pct(ilc.get('vs_jpeg_psnr-rgb'))}** (target -20 %) "
            f"(check {pct(ilc.get('vs_jpeg_psnr-rgb_check'))}) | {pct(ilc.get('vs_jpeg_ms-ssim-rgb'))} | {db(ilc.get('bd_psnr_vs_jpeg'))} |",
            f"| conv baseline vs Pillow JPEG 4:2:0 | **{pct(base.get('vs_jpeg_psnr-rgb'))}** (target -25 %) "
            f"(check {pct(base.get('vs_jpeg_psnr-rgb_check'))}) | {pct(base.get('vs_jpeg_ms-ssim-rgb'))} | {db(base.get('bd_psnr_vs_jpeg'))} |",
            f"| Pillow WebP vs Pillow JPEG | {pct(web.get('vs_jpeg_psnr-rgb'))} | {pct(web.get('vs_jpeg_ms-ssim-rgb'))} | {db(web.get('bd_psnr_vs_jpeg'))} |",
            f"| Pillow AVIF vs Pillow JPEG | {pct(avif.get('vs_jpeg_psnr-rgb'))} | {pct(avif.get('vs_jpeg_ms-ssim-rgb'))} | {db(avif.get('bd_psnr_vs_jpeg'))} |"]
    if claim:
        rows.append(f"| ILC vs conv baseline, {budget_label(claim.get('budget'))} (paper claim) | **{pct(claim['psnr-rgb']['bd_rate_ilc_vs_baseline'])}** | "
                    f"{pct(claim['ms-ssim-rgb']['bd_rate_ilc_vs_baseline'])} | {db(claim['psnr-rgb']['bd_psnr_ilc_vs_baseline'])} |")
    return "\n".join(rows)


def checks_table(rt, xb, bench) -> str:
    rows = ["| deployment check | result |", "|---|---|"]
    if rt:
        qs = sorted(rt)
        rows.append("| real vs estimated bpp (header + coder overhead) | " +
                    ", ".join(f"{q} {rt[q]['file_vs_float_model_estimate_pct']:+.2f} %" for q in qs) + " |")
        worst = max(abs(rt[q]["integer_vs_float_index_rate_pct"]) for q in qs)
        agree = min(rt[q]["index_agreement_min"] for q in qs)
        rows.append(f"| integer scale path vs float model, rate | at most {worst:.3f} % (indices agree on >= {100 * agree:.3f} % of elements) |")
        ok = sum(r["perturbed_decodes"] for q in qs for r in rt[q]["per_image"])
        n = sum(len(rt[q]["per_image"]) for q in qs)
        rows.append(f"| encoder float path perturbed by 1e-3 relative noise, all images, every quality | {ok} / {n} files decode to exactly the encoded symbols |")
    if xb:
        x = xb["summary"]
        mx = max(v for k, v in x["max_psnr_diff_db"].items() if "fp16" not in k)
        rows.append(f"| torch vs ONNX Runtime fp32 (q2), 4 encoder/decoder pairings | all decode; max PSNR difference {mx:.1e} dB; "
                    f"total size difference {x['total_size_diff_pct_ort_vs_torch']:.3f} %; {x['y_symbols_differ'] + x['w_symbols_differ']} "
                    f"of {x['symbols'] / 1e6:.2f} M symbols differ |")
        rows.append(f"| ONNX Runtime fp16 vs fp32 (q2) | max PSNR difference {x['max_psnr_diff_db']['ort_fp16->ort_fp16']:.3f} dB; no inf/nan |")
    trt = [RES / f"trt_build_q2_{p}.txt" for p in ("fp32", "fp16")]
    if all(t.exists() for t in trt):
        txt = "".join(t.read_text() for t in trt)
        ok = "wrote engines" in txt and "FAIL" not in txt
        rows.append(f"| TensorRT-RTX engines (CPU AOT, SM86 + SM89), q2, fp32 and fp16 | "
                    f"{'all 3 graphs build; fp32-island check passed' if ok else 'FAILED (see docs/results/trt_build_q2_*.txt)'}"
                    " (engines not run: no GPU here) |")
    rows.append("| decoder fuzzing (`benchmarks/fuzz_decoder.py --cases 10000`) | see docs/robustness.md: 0 crashes, 0 hangs, "
                "0 silently wrong images from damaged payloads |")
    if bench:
        for v in bench.get("verdict", []):
            rows.append(f"| ONNX Runtime vs torch speed (benchmarks/bench_backends.py) | {v} |")
    return "\n".join(rows)


def replace_block(text: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- results:{name}:start -->\n).*?(\n<!-- results:{name}:end -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"marker results:{name} not found")
    return pat.sub(lambda m: m.group(1) + body + m.group(2), text)


def main():
    s = _load("summary.json")
    est, rt, xb, bench = _load("reference_estimated.json"), _load("runtime_checks.json"), _load("cross_backend_q2.json"), _load("bench_backends_q2.json")
    for doc in (ROOT / "README.md", ROOT / "docs" / "model-card.md"):
        t = doc.read_text()
        if "<!-- results:models:start -->" in t:
            t = replace_block(t, "models", models_table(s, est))
        if "<!-- results:bd:start -->" in t:
            t = replace_block(t, "bd", bd_table(s))
        if "<!-- results:checks:start -->" in t:
            t = replace_block(t, "checks", checks_table(rt, xb, bench))
        doc.write_text(t)
        print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
