"""The study's report: fits per curve, the verdict, plots, study.html and results.json (docs/study.md).

Every curve (one run: a loss at a beta, best-of-n with one proxy, an RL run against one proxy) is fitted on its
points as R = gold − gold(base) against d = sqrt(KL): the Gao et al. form of the mode (bon: d(a − b d); daa and rl:
d(a − b log d)) beside a quadratic in d, each with bootstrap intervals and held-out RMSE (alignlab.study.fits).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from alignlab.eval.htmlpage import bullets, heading, image, page, paragraph, table
from alignlab.study.fits import fit_all, predict
from alignlab.study.points import StudyPoint

FORM = {"bon": "bon", "daa": "rl", "rl": "rl"}
PROXY_NAME = {"bon": "proxy RM", "rl": "proxy RM", "daa": "implicit reward margin (held-out pairs)"}


def curves(points: list[StudyPoint]) -> dict[str, list[StudyPoint]]:
    """run -> its points ordered by KL (then step)."""
    out: dict[str, list[StudyPoint]] = {}
    for p in points:
        out.setdefault(p.run, []).append(p)
    return {k: sorted(v, key=lambda p: (p.kl, p.step)) for k, v in sorted(out.items())}


def fit_curve(mode: str, pts: list[StudyPoint], n_boot: int, seed: int) -> dict | None:
    """The law and the quadratic on one curve (gold relative to its base point); None with < 4 distinct d."""
    base = next((p for p in pts if p.method == "base"), None)
    d = np.array([p.sqrt_kl for p in pts])
    if base is None or len(np.unique(d)) < 4:
        return None
    r = np.array([p.gold - base.gold for p in pts])
    fits = fit_all(FORM[mode], d, r, n_boot=n_boot, seed=seed)
    return {"form": FORM[mode], "base_gold": base.gold, **fits}


def verdict_for(mode: str, run: str, pts: list[StudyPoint]) -> dict:
    """Did gold fall (by more than 2 combined s.e. below its peak) at a larger KL while the proxy rose? Plain data
    checks, no fit involved."""
    k = int(np.argmax([p.gold for p in pts]))
    peak = pts[k]
    out = {"run": run, "mode": mode, "peak_kl": peak.kl, "peak_gold": peak.gold, "max_kl": max(p.kl for p in pts)}
    for p in pts[k + 1 :]:
        se = math.sqrt((p.gold_se or 0.0) ** 2 + (peak.gold_se or 0.0) ** 2)
        fell = p.gold < peak.gold - 2 * se
        rose = p.proxy is not None and peak.proxy is not None and p.proxy > peak.proxy
        if fell and rose:
            out |= {"overoptimized": True, "fall_kl": p.kl, "fall_gold": p.gold, "se": se}
            out["text"] = (
                f"{run}: yes — gold peaked at {peak.gold:.4f} (KL {peak.kl:.2f} nats, step/n {peak.step}) and fell to "
                f"{p.gold:.4f} at KL {p.kl:.2f} (more than 2 s.e. = {2 * se:.4f} below the peak) while the "
                f"{PROXY_NAME[mode]} rose from {peak.proxy:+.3f} to {p.proxy:+.3f}"
            )
            return out
    out["overoptimized"] = False
    out["text"] = (
        f"{run}: no — gold did not fall by more than 2 s.e. below its peak ({peak.gold:.4f} at KL {peak.kl:.2f}) "
        f"while the {PROXY_NAME[mode]} rose; the largest KL reached was {out['max_kl']:.2f} nats"
    )
    return out


def _ci(fit, key: str) -> str:
    v = fit.coef[key]
    lo, hi = fit.ci.get(key, (None, None))
    return f"{v:+.4g} [{lo:+.3g}, {hi:+.3g}]" if lo is not None else f"{v:+.4g}"


def _num(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def fits_table(fits: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "form", "points", "a [95% CI]", "b [95% CI]", "d* (KL*)", "peak", "RMSE law", "RMSE quad"]
    head += ["held-out RMSE law", "held-out RMSE quad", "R² law"]
    body = []
    for run, f in fits.items():
        law, quad = f["law"], f["quadratic"]
        pk = law.peak
        star = f"{pk.d:.3g} ({pk.kl:.3g})" if pk.d is not None else "-"
        body.append(
            [run, f["form"], str(law.n), _ci(law, "a"), _ci(law, "b"), star, pk.status, _num(law.rmse),
             _num(quad.rmse), _num(law.heldout_rmse), _num(quad.heldout_rmse), _num(law.r2, ".3f")]
        )  # fmt: skip
    return head, body


def _plots(out_dir: Path, mode: str, cs: dict[str, list[StudyPoint]], fits: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, (run, pts) in enumerate(cs.items()):
        colour = f"C{i % 10}"
        d = [p.sqrt_kl for p in pts]
        axes[0].errorbar(d, [p.gold for p in pts], yerr=[p.gold_se or 0 for p in pts], fmt="o", ms=4, c=colour,
                         label=run)  # fmt: skip
        if run in fits:
            grid = np.linspace(0, max(d), 100)
            axes[0].plot(grid, fits[run]["base_gold"] + predict(fits[run]["law"], grid), "--", c=colour, lw=1)
        if any(p.proxy is not None for p in pts):
            axes[1].plot(d, [p.proxy for p in pts], "s-", ms=4, c=colour, label=run)
    axes[0].set(xlabel="sqrt(KL) (nats^½)", ylabel="gold", title="gold vs sqrt(KL); dashed: fitted law")
    axes[1].set(xlabel="sqrt(KL) (nats^½)", ylabel=PROXY_NAME[mode], title=f"{PROXY_NAME[mode]} vs sqrt(KL)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    gold_png = out_dir / "study_gold_proxy.png"
    fig.savefig(gold_png, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (run, pts) in enumerate(cs.items()):
        ax.plot([p.kl for p in pts], [p.length for p in pts], "o-", ms=4, c=f"C{i % 10}", label=run)
    ax.set(xlabel="KL (nats)", ylabel="response length (tokens)", title="length vs KL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    len_png = out_dir / "study_length.png"
    fig.savefig(len_png, dpi=110)
    plt.close(fig)
    return [gold_png, len_png]


def _points_table(cs: dict[str, list[StudyPoint]]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "step / n", "KL", "sqrt(KL)", "gold", "± se", "proxy", "length", "EOS share", "implicit acc"]
    body = [
        [run, str(p.step), f"{p.kl:.3f}", f"{p.sqrt_kl:.3f}", f"{p.gold:.4f}", _num(p.gold_se), _num(p.proxy, "+.3f"),
         _num(p.length, ".1f"), _num(p.eos_share, ".2f"), _num(p.implicit_acc, ".3f")]
        for run, pts in cs.items() for p in pts
    ]  # fmt: skip
    return head, body


def _fit_json(f: dict) -> dict:
    out = {"form": f["form"], "base_gold": f["base_gold"]}
    for k in ("law", "quadratic"):
        fit = asdict(f[k])
        fit["ci"] = {n: list(v) for n, v in f[k].ci.items()}
        out[k] = fit
    return out


def summary_lines(mode: str, verdicts: list[dict]) -> list[str]:
    over = [v for v in verdicts if v["overoptimized"]]
    if over:
        kls = ", ".join(f"{v['run']} (from KL {v['fall_kl']:.2f})" for v in over)
        head = f"Over-optimization seen in mode {mode}: gold fell while the {PROXY_NAME[mode]} rose in {kls}."
    else:
        largest = max((v["max_kl"] for v in verdicts), default=0.0)
        head = (
            f"No over-optimization seen in mode {mode}: in no run did gold fall more than 2 s.e. below its peak while "
            f"the {PROXY_NAME[mode]} rose; the largest KL reached was {largest:.2f} nats."
        )
    return [head] + [v["text"] for v in verdicts]


def write_study_report(out_dir: Path, mode: str, points: list[StudyPoint], n_boot: int = 1000, seed: int = 0) -> dict:
    """study.html (self-contained), study_gold_proxy.png, study_length.png and results.json (every point, every
    fit, the verdict); returns their paths and the verdict lines."""
    out_dir = Path(out_dir)
    pts = [p for p in points if p.mode == mode]
    cs = curves(pts)
    fits = {run: f for run, c in cs.items() if (f := fit_curve(mode, c, n_boot, seed)) is not None}
    verdicts = [verdict_for(mode, run, c) for run, c in cs.items()]
    lines = summary_lines(mode, verdicts)
    pngs = _plots(out_dir, mode, cs, fits) if cs else []
    results = {
        "mode": mode,
        "points": [asdict(p) for p in pts],
        "fits": {run: _fit_json(f) for run, f in fits.items()},
        "verdict": lines,
        "verdicts": verdicts,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    body = [heading(f"alignlab study: reward over-optimization, mode {mode}", 1), heading("Verdict"), bullets(lines)]
    body += [heading("Gold and proxy against sqrt(KL)")] + [image(p, p.stem) for p in pngs[:1]]
    body += [heading("Fits (gold − gold of the base policy, against d = sqrt(KL))")]
    body += [
        paragraph(
            "Law: Gao et al. (arXiv 2210.10760) — best-of-n d(a − b d), RL d(a − b log d) (also used for DAA "
            "checkpoints, Rafailov et al. arXiv 2406.02900) — beside a quadratic in d; 95% intervals from a bootstrap "
            "over the points; held-out RMSE: every 4th point (sorted by d) left out of the fit. Peak 'measured' "
            "only when b > 0 and d* lies inside the observed range.",
            "muted",
        )
    ]
    body += [table(*fits_table(fits))] if fits else [paragraph("Too few points for a fit (need 4 distinct KL).")]
    body += [heading("Length against KL")] + [image(p, p.stem) for p in pngs[1:]]
    body += [heading("Every point"), table(*_points_table(cs))]
    html_path = out_dir / "study.html"
    html_path.write_text(page(f"alignlab study ({mode})", body), encoding="utf-8")
    for line in lines:
        print("-", line)
    return {"html": html_path, "results": out_dir / "results.json", "pngs": pngs, "verdict": lines}
