"""Self-contained HTML reports: sections of text, plotly figures, tables and unit cards.

The page carries plotly.js inline once and every image as a ``data:`` URI, so it opens offline
and can be mailed as one file. Unit cards come from :mod:`transformer_lens_mm.report.cards`.

Example:
    >>> report = Report("My analysis")
    >>> report.section("Ablation", "Top units vs random units.")
    >>> report.table(pd.DataFrame({"k": [0, 50], "p_c": [0.9, 0.2]}))
    >>> report.write("report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
import plotly.graph_objects as go

from transformer_lens_mm.core.atomic import atomic_write

__all__ = ["HtmlBlock", "Report", "img_tag"]


@runtime_checkable
class HtmlBlock(Protocol):
    """Anything that renders itself as an HTML fragment (e.g. a unit card)."""

    def to_html(self) -> str: ...


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:6px;padding:8px;width:360px;font-size:13px}
.card img{width:112px;height:112px;margin:2px;image-rendering:auto}
.tok{display:inline-block;background:#eef;border-radius:3px;padding:0 4px;margin:1px}
.hit{background:#fd6}.note{color:#666;font-size:13px}
.kv td:first-child{text-align:left;font-weight:600}
"""


def img_tag(png: bytes, title: str = "") -> str:
    """An ``<img>`` tag carrying ``png`` as a data URI, with ``title`` as its hover text."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}">'


class Report:
    """An HTML report built section by section; :meth:`write` saves it atomically."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []
        self._plotly_included = False

    def section(self, title: str, text: str = "") -> None:
        """A new ``<h2>`` section with an optional paragraph (plain text, escaped)."""
        self._parts.append(f"<h2>{html.escape(title)}</h2>")
        if text:
            self.text(text)

    def text(self, text: str, *, note: bool = False) -> None:
        """A paragraph of plain text."""
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def key_values(self, values: dict[str, object]) -> None:
        """A two-column table of headline numbers."""
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in values.items()
        )
        self._parts.append(f'<table class="kv">{rows}</table>')

    def figure(self, fig: go.Figure) -> None:
        """A plotly figure (plotly.js is embedded inline once per page)."""
        self._parts.append(fig.to_html(full_html=False, include_plotlyjs=not self._plotly_included))
        self._plotly_included = True

    def table(self, df: pd.DataFrame, *, max_rows: int = 50, float_format: str = "{:.4g}") -> None:
        """A table (the first ``max_rows`` rows; the count of the rest is noted)."""
        shown = df.head(max_rows)
        self._parts.append(
            shown.to_html(
                index=False,
                float_format=float_format.format,
                escape=True,
                border=0,
            )
        )
        if len(df) > max_rows:
            self.text(f"... {len(df) - max_rows} more rows in the CSV file.", note=True)

    def images(self, pngs: Sequence[tuple[bytes, str]]) -> None:
        """A row of images with hover captions."""
        self._parts.append("<div>" + "".join(img_tag(p, c) for p, c in pngs) + "</div>")

    def cards(self, cards: Sequence[HtmlBlock]) -> None:
        """A grid of unit cards."""
        self._parts.append('<div class="cards">' + "".join(c.to_html() for c in cards) + "</div>")

    def to_html(self) -> str:
        return (
            '<!DOCTYPE html><html><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self._parts) + "</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        """Write the page (atomically) and return its path."""
        page = self.to_html()
        return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
