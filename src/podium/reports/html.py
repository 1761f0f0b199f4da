"""Self-contained HTML pages for the EDA and run reports.

A report has to open from a zip file, an e-mail attachment or a laptop with no
network, so everything lives inside one file: the CSS is inline, figures are
PNG data URIs and reports carry no JavaScript at all (nothing that can fail to
load or throw). The one interactive page, `podium audit`'s review page, adds a
small inline script (`Page(script=...)`) for its choices and nothing else.
Every piece of user text is escaped, because class names and file paths come
from the user's folder names.
"""
from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.fileio import write_atomic, write_text

CSS = """
:root { --fg: #1d2430; --muted: #5b6575; --line: #d9dee7; --accent: #2557a7; --bg-soft: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.subtitle, p.note, figcaption { color: var(--muted); }
p.note { font-size: 13px; }
nav.toc { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px;
          padding: 8px 14px; margin: 16px 0; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 8px 0 12px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: right; }
th { background: var(--bg-soft); }
td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
pre { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      font-size: 13px; overflow-x: auto; }
.warn { color: #a33; font-weight: 600; }
details summary { cursor: pointer; color: var(--accent); }
"""


def figure_png(fig: Any, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (figures leak memory otherwise)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def rgb_png(rgb: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 RGB array as PNG bytes."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode an image of shape {rgb.shape} as PNG")
    return encoded.tobytes()


def rgb_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """Encode an HxWx3 uint8 RGB array as JPEG bytes (thumbnails: a fifth of a PNG's size)."""
    import cv2

    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode an image of shape {rgb.shape} as JPEG")
    return encoded.tobytes()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _anchor(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    anchor, k = base, 2
    while anchor in taken:
        anchor, k = f"{base}-{k}", k + 1
    taken.add(anchor)
    return anchor


class Section:
    """One <h2> block of a page; the add-methods return self so calls can chain."""

    def __init__(self, title: str, anchor: str):
        self.title = title
        self.anchor = anchor
        self.blocks: list[str] = []

    def heading(self, text: str) -> Section:
        self.blocks.append(f"<h3>{esc(text)}</h3>")
        return self

    def text(self, text: str) -> Section:
        self.blocks.append(f"<p>{esc(text)}</p>")
        return self

    def note(self, text: str) -> Section:
        self.blocks.append(f'<p class="note">{esc(text)}</p>')
        return self

    def warning(self, text: str) -> Section:
        self.blocks.append(f'<p class="warn">{esc(text)}</p>')
        return self

    def code(self, text: str) -> Section:
        self.blocks.append(f"<pre>{esc(text)}</pre>")
        return self

    def items(self, items: Iterable[str]) -> Section:
        lis = "".join(f"<li>{esc(i)}</li>" for i in items)
        self.blocks.append(f"<ul>{lis}</ul>")
        return self

    def raw(self, markup: str) -> Section:
        """Markup built by the caller, who escapes every piece of user text in it (see `esc`)."""
        self.blocks.append(markup)
        return self

    def details(self, summary: str, text: str) -> Section:
        """Collapsed block for long text (a config file) that most readers skip."""
        self.blocks.append(f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>")
        return self

    def table(
        self,
        frame: pd.DataFrame,
        *,
        max_rows: int = 200,
        index: bool = False,
        digits: int = 4,
        caption: str | None = None,
    ) -> Section:
        """Render a DataFrame; long tables are cut to ``max_rows`` with a note saying so."""
        shown = frame.head(max_rows)
        self.blocks.append(table_html(shown, index=index, digits=digits))
        if len(frame) > max_rows:
            self.note(f"showing the first {max_rows} of {len(frame)} rows")
        if caption:
            self.note(caption)
        return self

    def figure(self, fig_or_png: Any, caption: str | None = None, *, save_to: str | Path | None = None) -> Section:
        """Embed a matplotlib figure or PNG bytes; ``save_to`` also keeps the PNG on disk."""
        png = fig_or_png if isinstance(fig_or_png, bytes) else figure_png(fig_or_png)
        if save_to is not None:
            write_atomic(save_to, lambda p: p.write_bytes(png))
        alt = esc(caption or self.title)
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img src="{data_uri(png)}" alt="{alt}">{cap}</figure>')
        return self

    def render(self) -> str:
        return f'<section id="{self.anchor}"><h2>{esc(self.title)}</h2>\n' + "\n".join(self.blocks) + "</section>"


def _format_cell(value: Any, digits: int) -> tuple[str, bool]:
    """(text, is_numeric) for one table cell."""
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return "", True
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e7):
            return f"{v:.{digits}g}", True
        return f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0", True
    return str(value), False


def table_html(frame: pd.DataFrame, *, index: bool = False, digits: int = 4) -> str:
    """A plain, escaped HTML table; numbers right-aligned, text left-aligned."""
    if index:
        frame = frame.reset_index()
    head = "".join(f'<th class="text">{esc(c)}</th>' for c in frame.columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = []
        for v in values:
            text, numeric = _format_cell(v, digits)
            cls = "" if numeric else ' class="text"'
            cells.append(f"<td{cls}>{esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


class Page:
    """A whole report: title, table of contents, sections."""

    def __init__(self, title: str, subtitle: str | None = None, *, style: str = "", script: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.style = style    # CSS added after the shared CSS
        self.script = script  # inline JavaScript run at the end of the body (interactive pages only)
        self.sections: list[Section] = []
        self._anchors: set[str] = set()

    def section(self, title: str) -> Section:
        sec = Section(title, _anchor(title, self._anchors))
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        toc = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in self.sections)
        sub = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        body = "\n".join(s.render() for s in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            # An empty icon stops the browser from requesting /favicon.ico (a console error offline).
            '<link rel="icon" href="data:,">'
            f"<title>{esc(self.title)}</title><style>{CSS}{self.style}</style></head>\n"
            f"<body><main><h1>{esc(self.title)}</h1>{sub}<nav class=\"toc\">{toc}</nav>\n{body}\n</main>"
            + (f"<script>{self.script}</script>" if self.script else "") + "</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.render())
