"""Unit cards: a unit's decoded tokens and its patch maps over the images where it scores best.

:func:`unit_cards` is the one builder: it picks the units most often in the images' top-k
(those whose decoding contains the image's target first) from a units table and draws each
card's maps from the per-row patch maps that the search step stores beside it. The demo and
the dataset report both call it.

Example:
    >>> import torch
    >>> png = unit_map_png(torch.rand(3, 8, 8), torch.arange(4.0), (2, 2), size=8)
    >>> png[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import functools
import html
import io
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float
from PIL import Image
from plotly.colors import sample_colorscale
from torch import Tensor

from transformer_lens_mm.core.images import ImageLike, to_rgb_image
from transformer_lens_mm.core.paper import REGION_QUANTILE
from transformer_lens_mm.report.html import img_tag
from transformer_lens_mm.tools.spatial import patch_map, quantile_mask

__all__ = [
    "UnitCard",
    "card_groups",
    "card_pairs",
    "card_units",
    "unit_cards",
    "unit_map_png",
    "visible_token",
]


@functools.lru_cache(maxsize=4)
def _lut(colorscale: str = "Inferno") -> np.ndarray:
    colours = sample_colorscale(colorscale, [i / 255 for i in range(256)], colortype="tuple")
    return (np.asarray(colours) * (255 if max(max(c) for c in colours) <= 1 else 1)).astype(
        np.uint8
    )


def unit_map_png(
    image: ImageLike,
    activations: Float[Tensor, " n_image_tokens"],
    grid_size: tuple[int, int],
    *,
    quantile: float | None = REGION_QUANTILE,
    opacity: float = 0.55,
    size: int = 224,
) -> bytes:
    """PNG bytes of a unit's patch map (upsampled, Inferno colours) blended over the image.

    The region above ``quantile`` is outlined in cyan (the paper's 0.95-quantile mask).
    """
    rgb = np.asarray(to_rgb_image(image).resize((size, size)), dtype=np.float32)
    heat = patch_map(activations, grid_size, (size, size))
    lo, hi = float(heat.min()), float(heat.max())
    scaled = ((heat - lo) / (hi - lo if hi > lo else 1.0) * 255).round().long().numpy()
    colour = _lut()[scaled].astype(np.float32)
    out = (1 - opacity) * rgb + opacity * colour
    if quantile is not None:
        mask = quantile_mask(heat, quantile).numpy()
        edge = mask & ~(
            np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        )
        out[edge] = (0, 255, 255)
    buf = io.BytesIO()
    # fast zlib level: a map is a few kB either way, and a report draws dozens of them
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def visible_token(token: str) -> str:
    """A decoded token as a reader can see it: control characters escaped (``\\n``, ``\\r``),
    a space at either end shown as ``␣``, the replacement character of a lone byte of a
    multi-byte character as ``<byte>``, the empty string as ``∅``.

    Example:
        >>> visible_token(" dog"), visible_token("\\ufffd"), visible_token("\\r"), visible_token("")
        ('␣dog', '<byte>', '\\\\r', '∅')
    """
    if token == "":
        return "\u2205"
    shown = repr(token)[1:-1].replace("\ufffd", "<byte>")
    core = shown.strip(" ")
    lead = len(shown) - len(shown.lstrip(" "))
    trail = len(shown) - len(shown.rstrip(" "))
    return "\u2423" * lead + core + "\u2423" * trail if core else "\u2423" * len(shown)


def _token_title(token: str) -> str:
    if "\ufffd" in token:
        return ' title="a byte of a character split over several tokens"'
    return ""


@dataclass
class UnitCard:
    """One unit: its decoded tokens and its patch maps over some images."""

    layer: int
    unit: int
    tokens: Sequence[str]  # decoded tokens (W_U @ W_out), best first
    maps: Sequence[tuple[bytes, str]] = ()  # (PNG, caption) per image
    facts: dict[str, str] = field(default_factory=dict)  # extra key -> value lines
    highlight: Sequence[str] = ()  # tokens to highlight (e.g. the target concept)
    badge: str = ""  # a one-word verdict shown beside the name (e.g. "generic", "specific")

    def to_html(self) -> str:
        marks = {h.strip().lower() for h in self.highlight}
        toks = "".join(
            f'<span class="tok{" hit" if t.strip().lower() in marks else ""}"'
            f"{_token_title(t)}>{html.escape(visible_token(t))}</span>"
            for t in self.tokens
        )
        facts = "".join(
            f"<div><b>{html.escape(k)}</b>: {html.escape(v)}</div>" for k, v in self.facts.items()
        )
        imgs = "".join(img_tag(png, cap) for png, cap in self.maps)
        badge = (
            f' <span class="badge {html.escape(self.badge)}">{html.escape(self.badge)}</span>'
            if self.badge
            else ""
        )
        return (
            f'<div class="card"><div><b>L{self.layer} U{self.unit}</b>{badge} '
            f"<code>blocks.{self.layer}.mlp.hook_post[{self.unit}]</code></div>"
            f"<div>{toks}</div>{facts}<div>{imgs}</div></div>"
        )


def card_units(units: pd.DataFrame, *, n_cards: int = 12) -> pd.DataFrame:
    """The units a report shows cards for, best first.

    Units are ranked by how many images' top-k decode to that image's target through them
    (``decodes_to_target``, when the table has it), then by the number of images whose top-k
    they are in, then by their summed score.

    Returns:
        ``layer``, ``unit``, ``sign``, ``images``, ``score``, ``target_hits`` per card (a unit
        read with both signs, :mod:`~transformer_lens_mm.tools.readout`, has one per sign).

    Example:
        >>> table = pd.DataFrame({"item": [0, 1, 1], "layer": [2, 2, 0], "unit": [5, 5, 1],
        ...                       "score": [1.0, 2.0, 9.0]})
        >>> card_units(table, n_cards=1)[["layer", "unit", "images"]].values.tolist()
        [[2, 5, 2]]
    """
    if not len(units) or n_cards < 1:
        return pd.DataFrame(columns=["layer", "unit", "sign", "images", "score", "target_hits"])
    table = units.reset_index(drop=True)
    if "sign" not in table:
        table = table.assign(sign=1)
    hits = (
        table["decodes_to_target"].astype(int)
        if "decodes_to_target" in table
        else pd.Series(0, index=table.index)
    )
    # a gated unit that writes with both signs gets a card per sign (one decoding each)
    return (
        table.assign(_hits=hits)
        .groupby(["layer", "unit", "sign"])
        .agg(images=("item", "nunique"), score=("score", "sum"), target_hits=("_hits", "sum"))
        .reset_index()
        .sort_values(["target_hits", "images", "score"], ascending=False, kind="stable")
        .head(n_cards)
        .reset_index(drop=True)
    )


def card_groups(units: pd.DataFrame, n_cards: int) -> list[tuple[str, pd.DataFrame, int]]:
    """The report's groups of unit cards: (title, their rows of ``units``, how many cards):
    concept-specific units first (the paper's multimodal-neuron candidates: top for two or more
    images, more than half of them of one concept), then units top across several concepts, then
    a few generic ones (top for the images of most concepts), each ranked by
    :func:`~transformer_lens_mm.report.cards.card_units`."""
    breadth = units["breadth"] if "breadth" in units else pd.Series("broad", units.index)
    return [
        ("Concept-specific units", units[breadth == "specific"], n_cards),
        ("Units top across several concepts", units[breadth == "broad"], max(1, n_cards // 3)),
        ("Generic units", units[breadth == "generic"], max(1, n_cards // 3)),
    ]


def card_pairs(units: pd.DataFrame, n_cards: int) -> dict[Hashable, list[tuple[int, int]]]:
    """Item -> the card units (:func:`card_groups`) among its top rows, ``(layer, unit)`` in the
    units table's order: what a report's single-unit effects test on each image.

    Example:
        >>> units = pd.DataFrame({"item": ["a", "a", "b"], "layer": [0, 1, 0], "unit": [5, 6, 5],
        ...     "score": [3.0, 2.0, 1.0], "breadth": "specific"})
        >>> card_pairs(units, 4)
        {'a': [(0, 5), (1, 6)], 'b': [(0, 5)]}
    """
    if not len(units):
        return {}
    groups = [card_units(rows, n_cards=n) for _, rows, n in card_groups(units, n_cards)]
    cards = pd.concat(groups)
    tested = {(int(a), int(b)) for a, b in zip(cards.layer, cards.unit)}
    hit = units[[(int(a), int(b)) in tested for a, b in zip(units.layer, units.unit)]]
    hit = hit.drop_duplicates(["item", "layer", "unit"])
    pairs: dict[Hashable, list[tuple[int, int]]] = {}
    for item, layer, unit in zip(hit["item"], hit["layer"], hit["unit"]):
        pairs.setdefault(item, []).append((int(layer), int(unit)))
    return pairs


def unit_cards(
    units: pd.DataFrame,
    maps: Float[Tensor, "rows n_image_tokens"] | None = None,
    *,
    image_of: Callable[[Hashable], ImageLike | None] | None = None,
    grid_size: tuple[int, int] | None = None,
    caption_of: Callable[[Hashable], str] | None = None,
    n_cards: int = 12,
    n_images: int = 3,
    quantile: float | None = REGION_QUANTILE,
    highlight: Sequence[str] = (),
    facts_of: Callable[[int, int], dict[str, str]] | None = None,
) -> list[UnitCard]:
    """Cards of the units most often in the images' top-k (:func:`card_units`), with their
    patch maps.

    Each card shows the unit's ``n_images`` best images (by score), each with the unit's patch
    map ``maps[row]`` of that image. When the table has a ``breadth`` (or ``generic``) column
    (from :func:`~transformer_lens_mm.tools.specificity.generic_units`) the card says whether
    the unit is generic, concept-specific or broad.

    Args:
        units: A units table (``item``, ``layer``, ``unit``, ``score``, ``tokens``, ``target``;
            optionally ``interpretable``, ``decodes_to_target`` and ``generic``), e.g. a run's
            ``units.parquet`` or a search's ``units``.
        maps: ``maps[i]`` = the unit of ``units.iloc[i]`` over the image patches of its item
            (``None``: cards without maps).
        image_of: ``item -> image`` (``None``, or returning ``None``: no map for that item).
        grid_size: The patch grid of the maps (default: square).
        caption_of: ``item -> text`` under each map (default: ``"item: target"``).
        n_cards: Cards made.
        n_images: Maps per card.
        quantile: Region outlined on each map.
        highlight: Tokens highlighted on every card besides each card's targets.
        facts_of: ``(layer, unit) -> {name: text}``: more lines per card (e.g. its ablation
            effect or specificity).

    Returns:
        The cards, best first.
    """
    per_unit = card_units(units, n_cards=n_cards)
    if not len(per_unit):
        return []
    table = units.reset_index(drop=True)
    if "sign" not in table:
        table = table.assign(sign=1)
    if maps is not None and grid_size is None:
        n_img = int(maps.shape[1]) if maps.ndim == 2 else 0
        side = round(n_img**0.5)
        grid_size = (side, side) if n_img and side * side == n_img else None
    cards = []
    for row in per_unit.itertuples():
        same_unit = table[(table["layer"] == row.layer) & (table["unit"] == row.unit)]
        rows = same_unit[same_unit["sign"] == row.sign]
        other_sign = same_unit[same_unit["sign"] != row.sign]["item"].nunique()
        best = rows.sort_values("score", ascending=False).drop_duplicates("item").head(n_images)
        pngs = []
        if maps is not None and grid_size is not None and image_of is not None:
            for r in best.itertuples():
                image = image_of(r.item)
                if image is None:
                    continue
                png = unit_map_png(image, maps[r.Index].float(), grid_size, quantile=quantile)
                text = caption_of(r.item) if caption_of is not None else str(r.target)
                pngs.append((png, f"{r.item}: {text}"))
        targets = sorted({str(t) for t in rows["target"]})
        counts = rows.drop_duplicates("item")["target"].astype(str).str.strip().value_counts()
        named = ", ".join(f"{t} ({n})" for t, n in counts.head(6).items())
        if len(counts) > 6:
            named += f" and {len(counts) - 6} more"
        facts = {
            "top-k of": f"{int(row.images)} images",
            "concepts": named,
            "summed attribution": f"{row.score:.3g}",
        }
        if "interpretable" in rows:
            facts["interpretable"] = "yes" if bool(rows["interpretable"].iloc[0]) else "no"
        if "decodes_to_target" in rows:
            facts["decodes to the target in"] = f"{int(row.target_hits)} images"
        if other_sign:
            facts["writes with the opposite sign"] = (
                f"in {other_sign} images (its other card decodes that direction)"
            )
        if facts_of is not None:
            facts |= facts_of(int(row.layer), int(row.unit))
        badge = ""
        if "breadth" in rows:
            badge = str(rows["breadth"].iloc[0])
        elif "generic" in rows:
            badge = "generic" if bool(rows["generic"].iloc[0]) else "not generic"
        cards.append(
            UnitCard(
                int(row.layer),
                int(row.unit),
                list(rows.iloc[0]["tokens"]),
                pngs,
                facts,
                [t.strip() for t in targets] + list(highlight),
                badge,
            )
        )
    return cards
