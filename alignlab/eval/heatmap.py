"""Token-reward heatmaps: per-token values of preference pairs, rendered as a self-contained HTML page and a PNG.

For the chosen and rejected response of each pair, every token is coloured by its self-generated T-REG reward
r̂_t (contrastive prompting with the reference or another scorer) and, given a trained policy, by the policy's
implicit token reward beta * (log pi_theta(y_t|.) - log pi_ref(y_t|.)), side by side. The HTML has inline CSS
only; a Content-Security-Policy forbids any fetch or script.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alignlab.data.collate import collate_pairs
from alignlab.data.tokenize import TokenizedPair
from alignlab.eval.htmlpage import page
from alignlab.models.scorer import SequenceScorer
from alignlab.precompute.token_rewards import cached_token_rewards


@dataclass
class ResponseHeat:
    tokens: list[str]
    rhat: list[float]
    implicit: list[float] | None = None


@dataclass
class PairHeat:
    source: str
    prompt: str
    chosen: ResponseHeat
    rejected: ResponseHeat


def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]


def _prompt_text(p: TokenizedPair, tokenizer) -> str:
    if p.prompt is None:
        return tokenizer.decode(p.prompt_ids, skip_special_tokens=True)
    return p.prompt if isinstance(p.prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p.prompt)


@torch.no_grad()
def response_token_logps(
    model, pairs: list[TokenizedPair], pad_id: int, batch_size: int = 8
) -> list[tuple[list[float], list[float]]]:
    """Per-token log pi(y_t|x, y_<t) of each pair's chosen / rejected response (the training ids and scorer)."""
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        b = collate_pairs(chunk, list(range(len(chunk))), pad_id).to(device)
        tok = scorer(b.input_ids, b.attention_mask, b.completion_mask, return_tokens=True).token.float().cpu()
        mask = b.completion_mask[:, 1:].cpu()
        n = len(chunk)
        out += [(tok[k][mask[k]].tolist(), tok[n + k][mask[n + k]].tolist()) for k in range(n)]
    model.train(was_training)
    return out


def heatmap_data(
    model,
    tokenizer,
    pairs: list[TokenizedPair],
    template: str = "revision",
    beta: float = 0.1,
    policy=None,
    scorer=None,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[PairHeat]:
    """r̂ by ``scorer`` (default ``model``, the reference); implicit rewards if a ``policy`` is given (a callable
    ``policy(model) -> policy_model``, applied after the reference has been scored, because a LoRA adapter is
    injected into the base model in place; or a model)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rhat = cached_token_rewards(
        scorer if scorer is not None else model, tokenizer, pairs, template, batch_size, max_length
    ).rewards
    implicit = None
    if policy is not None:
        ref = response_token_logps(model, pairs, pad_id, batch_size)
        pol_model = policy(model) if callable(policy) and not isinstance(policy, torch.nn.Module) else policy
        pol = response_token_logps(pol_model, pairs, pad_id, batch_size)
        implicit = [
            tuple([beta * (a - b) for a, b in zip(pa, ra)] for pa, ra in zip(pp, rr)) for pp, rr in zip(pol, ref)
        ]
    out = []
    for k, p in enumerate(pairs):
        sides = []
        for s, ids in enumerate((p.chosen_ids, p.rejected_ids)):
            sides.append(
                ResponseHeat(_token_strings(tokenizer, ids), rhat[k][s], None if implicit is None else implicit[k][s])
            )
        out.append(PairHeat(p.source, _prompt_text(p, tokenizer), sides[0], sides[1]))
    return out


# --------------------------------------------------------------------------- rendering


def _rgb(v: float, scale: float) -> tuple[int, int, int]:
    """Diverging colour: red (negative) - white (0) - green (positive), saturating at |v| = scale."""
    x = max(-1.0, min(1.0, v / scale)) if scale > 0 else 0.0
    if x >= 0:
        return (int(255 - 155 * x), int(255 - 55 * x), int(255 - 155 * x))
    return (255, int(255 + 155 * x), int(255 + 155 * x))


def _scale(values: list[float]) -> float:
    return max([abs(v) for v in values] + [1e-12])


def _show(tok: str) -> str:
    return tok.replace("\n", "\u21b5\n").replace("\t", "\u21e5")


def _spans(rh: ResponseHeat, kind: str, scale: float) -> str:
    vals = rh.rhat if kind == "rhat" else rh.implicit
    parts = []
    for t, v in zip(rh.tokens, vals):
        r, g, b = _rgb(v, scale)
        parts.append(
            f'<span class="tok" data-v="{v:.6g}" title="{html.escape(repr(t))}: {v:+.4f}" '
            f'style="background:rgb({r},{g},{b})">{html.escape(_show(t))}</span>'
        )
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px} h2{font-size:15px;margin:28px 0 6px} .prompt{white-space:pre-wrap;color:#444;font-size:13px}
table{border-collapse:collapse;width:100%;table-layout:fixed} th{font-size:12px;text-align:left;padding:4px;color:#555}
td{vertical-align:top;padding:6px;border-top:1px solid #ddd} td.side{width:80px;font-size:12px;font-weight:600}
.resp{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px;white-space:pre-wrap;line-height:1.7;
word-break:break-word} .tok{border-radius:2px;padding:1px 0} .legend{font-size:12px;color:#555}
.sw{display:inline-block;width:14px;height:12px;vertical-align:middle;border:1px solid #ccc}
"""


def render_html(heats: list[PairHeat], title: str, notes: list[str]) -> str:
    has_pol = any(h.chosen.implicit is not None for h in heats)
    s_r = _scale([v for h in heats for r in (h.chosen, h.rejected) for v in r.rhat])
    s_i = _scale([v for h in heats for r in (h.chosen, h.rejected) for v in (r.implicit or [])]) if has_pol else 0.0
    cols = [("rhat", "self-generated token reward r̂ = σ(Δ) − 0.5 (scale ±%.3g)" % s_r)]
    if has_pol:
        cols.append(("implicit", "policy implicit token reward β·log π/π_ref (scale ±%.3g)" % s_i))
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="legend">{html.escape(n)}</p>' for n in notes]
    neg, pos = _rgb(-1, 1), _rgb(1, 1)
    body.append(
        f'<p class="legend"><span class="sw" style="background:rgb{neg}"></span> negative '
        f'<span class="sw" style="background:#fff"></span> 0 <span class="sw" style="background:rgb{pos}"></span>'
        " positive; hover a token for its value</p>"
    )
    for h in heats:
        body.append(f'<h2>{html.escape(h.source)}</h2><div class="prompt">{html.escape(h.prompt)}</div>')
        head = "".join(f"<th>{html.escape(c[1])}</th>" for c in cols)
        rows = []
        for name, rh in (("chosen", h.chosen), ("rejected", h.rejected)):
            cells = "".join(f'<td class="resp {k}">{_spans(rh, k, s_r if k == "rhat" else s_i)}</td>' for k, _ in cols)
            rows.append(f'<tr class="{name}"><td class="side">{name}</td>{cells}</tr>')
        cg = (
            '<colgroup><col style="width:80px">' + "<col>" * len(cols) + "</colgroup>"
        )  # fixed layout: 1st row sets widths
        body.append(f"<table>{cg}<tr><th></th>{head}</tr>{''.join(rows)}</table>")
    return page(title, body, css=_CSS, images=False)


def render_png(heats: list[PairHeat], path: Path, width_chars: int = 90, max_tokens: int = 200) -> Path:
    """Same layout as the HTML: one panel per (pair, response, reward kind), tokens as coloured boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    has_pol = any(h.chosen.implicit is not None for h in heats)
    kinds = ["rhat"] + (["implicit"] if has_pol else [])
    s = {"rhat": _scale([v for h in heats for r in (h.chosen, h.rejected) for v in r.rhat])}
    if has_pol:
        s["implicit"] = _scale([v for h in heats for r in (h.chosen, h.rejected) for v in (r.implicit or [])])

    def layout(tokens):
        x, y, boxes = 0, 0, []
        for t in tokens[:max_tokens]:
            label = t.replace("\n", "\u21b5") or " "
            w = max(1, len(label))
            if x + w > width_chars:
                x, y = 0, y + 1
            boxes.append((x, y, w, label))
            x += w
            if "\n" in t:
                x, y = 0, y + 1
        return boxes, y + 1

    panels = [(h, name, rh) for h in heats for name, rh in (("chosen", h.chosen), ("rejected", h.rejected))]
    lines = [layout(rh.tokens)[1] for _, _, rh in panels]
    heights = [n + 1.2 for n in lines]
    fig, axes = plt.subplots(
        len(panels),
        len(kinds),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        figsize=(7.5 * len(kinds), 0.22 * sum(heights) + 0.5),
    )
    for i, (h, name, rh) in enumerate(panels):
        boxes, n = layout(rh.tokens)
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            vals = rh.rhat if kind == "rhat" else rh.implicit
            for (x, y, w, label), v in zip(boxes, vals):
                r, g, b = _rgb(v, s[kind])
                ax.add_patch(Rectangle((x, y), w, 0.9, color=(r / 255, g / 255, b / 255), lw=0))
                ax.text(x + 0.05, y + 0.45, label, fontsize=6, family="monospace", va="center")
            ax.set_xlim(0, width_chars)
            ax.set_ylim(n, -0.2)
            ax.axis("off")
            what = "r̂ (self-generated)" if kind == "rhat" else "β·log π/π_ref (policy)"
            src = h.source.rsplit("/", 1)[-1]  # file:line, not the whole path
            ax.set_title(f"{src} · {name} · {what} (±{s[kind]:.3g})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_heatmap(heats: list[PairHeat], out_dir: Path, title: str, notes: list[str], png: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "heatmap.html", "json": out_dir / "heatmap.json"}
    paths["html"].write_text(render_html(heats, title, notes), encoding="utf-8")
    paths["json"].write_text(json.dumps([asdict(h) for h in heats], indent=1))
    if png:
        paths["png"] = render_png(heats, out_dir / "heatmap.png")
    return paths
