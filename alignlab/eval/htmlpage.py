"""Self-contained HTML pages (report.html, compare.html, heatmap.html): one scaffold for all of them.

A page has inline CSS only, images embedded as base64 PNG data URIs, no scripts, fonts or links; its
Content-Security-Policy forbids any fetch or script, so the page reads the same offline, mailed or archived.
Every text that goes in is escaped here (cells, notes, titles): callers pass plain strings.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1400px;padding:0 24px;
color:#222;background:#fff;line-height:1.45}
h1{font-size:21px;margin:0 0 14px} h2{font-size:17px;margin:30px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:14px;margin:18px 0 6px} p,li{font-size:13px} .muted{color:#666;font-size:12px}
.scroll{overflow-x:auto;margin:8px 0 12px}
table.data{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
table.data th{background:#f3f4f6;text-align:left;font-weight:600;padding:5px 9px;border-bottom:2px solid #ccd;
white-space:nowrap} table.data td{padding:4px 9px;border-bottom:1px solid #e5e7eb;white-space:nowrap}
table.data td.num,table.data th.num{text-align:right} table.data tr:nth-child(even) td{background:#fafafa}
table.data td.label{font-weight:600;color:#333} table.data tr.first td{border-top:2px solid #ccd}
img.plot{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}
summary{cursor:pointer;font-size:13px;margin:6px 0}
pre{background:#f6f8fa;padding:10px;font-size:12px;overflow-x:auto;white-space:pre-wrap}
"""

_NUMBER = re.compile(r"^(-|nan|[+\-−]?(\d[\d,]*\.?\d*|\.\d+)([eE][+\-]?\d+)?%?( ?±.*)?)$")


def esc(value) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value))


def csp(images: bool = True) -> str:
    """The Content-Security-Policy meta tag: nothing may be fetched or run; inline styles (and, with ``images``,
    data: images) only."""
    policy = "default-src 'none'; style-src 'unsafe-inline'" + ("; img-src data:" if images else "")
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'


def page(title: str, body: list[str], css: str = CSS, images: bool = True) -> str:
    """A whole HTML document: head (charset, CSP, title, inline ``css``) and the already-rendered ``body`` parts."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        + csp(images)
        + f"<title>{esc(title)}</title><style>{css}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _td(cell: str, label: bool) -> str:
    """One cell: a label (bold, left), or a value; numbers (``0.123``, ``+0.08 ± 0.02``, ``-``) are right-aligned."""
    cls = "label" if label else ("num" if _NUMBER.match(cell.strip()) else "")
    return f'<td class="{cls}">{esc(cell)}</td>' if cls else f"<td>{esc(cell)}</td>"


def _mostly_numbers(cells: list[str]) -> bool:
    """True when most cells of a column are numbers (its head is then right-aligned like them)."""
    return sum(bool(_NUMBER.match(c.strip())) for c in cells) * 2 > len(cells) > 0


def table(head: list[str], body: list[list[str]], label_cols: int = 1, row_classes: list[str] | None = None) -> str:
    """A table of plain-text cells (escaped here) in a horizontally scrolling box. The first ``label_cols`` columns
    name the row; ``row_classes``: one class per body row ("first": rule a section off above it)."""
    classes = row_classes or [""] * len(body)
    rows = []
    for cells, cls in zip(body, classes):
        tds = "".join(_td(c, i < label_cols) for i, c in enumerate(cells))
        rows.append((f'<tr class="{cls}">' if cls else "<tr>") + tds + "</tr>")
    ths = "".join(
        f'<th class="num">{esc(h)}</th>'
        if i >= label_cols and _mostly_numbers([b[i] for b in body])
        else f"<th>{esc(h)}</th>"
        for i, h in enumerate(head)
    )
    head_html = f"<tr>{ths}</tr>"
    inner = f"<thead>{head_html}</thead><tbody>{''.join(rows)}</tbody>"
    return f'<div class="scroll"><table class="data">{inner}</table></div>'


def bullets(items: list[str]) -> str:
    """A list of notes ("" when there are none)."""
    return "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in items) + "</ul>" if items else ""


def png_bytes(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def image(png: bytes | str | Path, alt: str) -> str:
    """An <img> that carries the PNG itself (bytes, or a file read now) as a base64 data URI."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, inner: str) -> str:
    """A collapsed section (no script: the browser opens it): ``inner`` is already-rendered HTML."""
    return f"<details><summary>{esc(summary)}</summary>{inner}</details>"
