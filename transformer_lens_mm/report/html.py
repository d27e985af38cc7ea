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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd
import plotly.graph_objects as go

from transformer_lens_mm.core.atomic import atomic_write

__all__ = ["HtmlBlock", "Report", "Tile", "img_tag"]


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
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:12px;margin:1em 0}
.tile{border:1px solid #ccc;border-radius:8px;padding:10px 12px;background:#fafafa}
.tile .label{font-size:13px;color:#555;font-weight:600}
.tile .value{font-size:28px;font-weight:700;margin:4px 0}
.tile .base{font-size:13px;color:#444}.tile .means{font-size:13px;color:#333;margin-top:6px}
.tile.met{border-left:6px solid #2a2}.tile.unmet{border-left:6px solid #c33}
.verdict{font-size:12px;font-weight:700;margin-left:6px}.met .verdict{color:#2a2}
.unmet .verdict{color:#c33}
.badge{font-size:11px;border-radius:3px;padding:0 5px;margin-left:4px;color:#fff}
.badge.generic{background:#888}.badge.specific{background:#2a7}.badge.broad{background:#a83}
details{margin:0.6em 0}summary{cursor:pointer;font-weight:600}
"""


@dataclass(frozen=True)
class Tile:
    """One headline number beside its baseline, with a sentence on what it means.

    ``met``: ``True``/``False`` when the number has a target (shown as met / not met)."""

    label: str
    value: str
    baseline: str = ""
    meaning: str = ""
    met: bool | None = None

    def to_html(self) -> str:
        cls = "" if self.met is None else (" met" if self.met else " unmet")
        verdict = (
            ""
            if self.met is None
            else f'<span class="verdict">{"target met" if self.met else "target not met"}</span>'
        )
        base = f'<div class="base">{html.escape(self.baseline)}</div>' if self.baseline else ""
        means = f'<div class="means">{html.escape(self.meaning)}</div>' if self.meaning else ""
        return (
            f'<div class="tile{cls}"><div class="label">{html.escape(self.label)}{verdict}</div>'
            f'<div class="value">{html.escape(self.value)}</div>{base}{means}</div>'
        )


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

    def tiles(self, tiles: Sequence[Tile]) -> None:
        """A headline panel: a grid of numbers, each beside its baseline."""
        self._parts.append('<div class="tiles">' + "".join(t.to_html() for t in tiles) + "</div>")

    def table(
        self,
        df: pd.DataFrame,
        *,
        max_rows: int = 50,
        float_format: str = "{:.4g}",
        collapsed: str | None = None,
    ) -> None:
        """A table (the first ``max_rows`` rows; the count of the rest is noted). Columns with
        no value in any row (all ``None``/NaN) are left out, and named in a note. With
        ``collapsed``, the table is folded under that title (click to open)."""
        empty = [c for c in df.columns if df[c].isna().all()] if len(df) else []
        df = df.drop(columns=empty)
        shown = df.head(max_rows)
        body = shown.to_html(index=False, float_format=float_format.format, escape=True, border=0)
        notes = []
        if len(df) > max_rows:
            notes.append(f"{len(df) - max_rows:,} more rows not shown here")
        if empty:
            notes.append("no value in any row, left out: " + ", ".join(map(str, empty)))
        if notes:
            body += f'<p class="note">{html.escape("; ".join(notes))}.</p>'
        if collapsed is not None:
            body = (
                f"<details><summary>{html.escape(collapsed)} ({len(df)} rows)</summary>"
                f"{body}</details>"
            )
        self._parts.append(body)

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
