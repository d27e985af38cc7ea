"""Experiments over the results of a dataset-scale run (:mod:`transformer_lens_mm.analyze`).

* :func:`layer_distribution`: where the top units sit, per layer.
* :func:`spatial_iou_by_category`: each image's top units against the mask of the object its
  caption names (COCO category = the caption's noun), vs random units of the same layers.
* :func:`category_selectivity`: per class, its most frequent top units and their mean activation
  (max over image positions) on held-out images of every class.
* :func:`plot_category_selectivity`, :func:`plot_iou_by_category`: the figures.
* :func:`analysis_report`: ``report.html`` of a run (``run_analysis`` writes a first one).

Example:
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
    >>> iou = spatial_iou_by_category(model, data, items, units)  # doctest: +SKIP
    >>> iou.groupby(["category", "kind"]).iou.mean().unstack()  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from transformer_lens_mm.datasets import Item
from transformer_lens_mm.spatial import image_mlp_activations, spatial_selectivity
from transformer_lens_mm.word_filter import same_word

__all__ = [
    "analysis_report",
    "category_selectivity",
    "layer_distribution",
    "plot_category_selectivity",
    "plot_iou_by_category",
    "spatial_iou_by_category",
    "units_of",
]


def layer_distribution(units: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Count and share of top-k entries per layer (all images pooled)."""
    if "layer" not in units:
        raise ValueError("units needs a 'layer' column (a run's units.parquet)")
    counts = units["layer"].value_counts().sort_index()
    layers = range(n_layers) if n_layers is not None else counts.index
    table = pd.DataFrame({"layer": list(layers)})
    table["count"] = [int(counts.get(layer, 0)) for layer in table["layer"]]
    table["share"] = table["count"] / max(int(table["count"].sum()), 1)
    return table


def units_of(units: pd.DataFrame, item: Any, *, column: str = "item") -> list[tuple[int, int]]:
    """An item's distinct ``(layer, unit)`` pairs from a top-k table, best rank first (a unit
    scored at several positions appears once, at its best).

    Example:
        >>> t = pd.DataFrame({"item": ["a"] * 3, "rank": [1, 0, 2], "layer": [3, 1, 1],
        ...                   "unit": [7, 5, 5]})
        >>> units_of(t, "a")
        [(1, 5), (3, 7)]
    """
    rows = units[units[column] == item].sort_values("rank")
    return list(dict.fromkeys(zip(rows["layer"].tolist(), rows["unit"].tolist())))


def _matching_category(noun: str | None, categories: dict[str, np.ndarray]) -> str | None:
    if not noun:
        return None
    for name in categories:
        if same_word(noun, name) or same_word(noun, name.split()[-1]):
            return name
    return None


def spatial_iou_by_category(
    model: Any,
    data: Sequence[Item],
    items: pd.DataFrame,
    units: pd.DataFrame,
    *,
    q: float = 0.95,
    n_random: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """IoU of each image's top units with the mask of the category its caption's noun names.

    Images whose noun matches none of their annotated categories are left out (counted in the
    ``attrs["unmatched"]`` of the result). Random units: as many, from the same layers.

    Returns:
        :func:`~transformer_lens_mm.spatial.spatial_selectivity`'s columns + ``item`` and
        ``category``.
    """
    by_id = {data[i].id: i for i in range(len(data))}
    todo = []
    unmatched = 0
    for row in items[items["failure"].isna()].itertuples():
        item = data[by_id[row.item]]
        masks = item.masks()
        cat = _matching_category(row.noun, masks)
        if cat is None:
            unmatched += 1
            continue
        todo.append((item, cat, masks[cat], units_of(units, row.item)))
    tables = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = model.prepare_inputs([it.image() for it, _, _, _ in chunk])
        table = spatial_selectivity(
            model,
            batch,
            [top for *_, top in chunk],
            [mask for _, _, mask, _ in chunk],
            q=q,
            n_random=n_random,
            seed=seed + start,
        )
        table["item"] = [chunk[i][0].id for i in table["image"]]
        table["category"] = [chunk[i][1] for i in table["image"]]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.attrs["unmatched"] = unmatched
    return out


def category_selectivity(
    model: Any,
    units: pd.DataFrame,
    items: pd.DataFrame,
    held_out: Sequence[Item],
    *,
    n_units: int = 5,
    category_of: str = "noun",
    batch_size: int = 8,
) -> pd.DataFrame:
    """Mean activation of each class's most frequent top units on held-out images of each class.

    Args:
        model: The analysed model.
        units: A run's top-k table (``item``, ``layer``, ``unit``).
        items: A run's items table (maps an item to its class via ``category_of``).
        held_out: Images not in the run, with ``categories`` (their first one is the class).
        n_units: Units per class (the most frequent in that class's top-k lists).
        category_of: Column of ``items`` naming the class (``noun`` or ``target``).
        batch_size: Images per forward.

    Returns:
        One row per (unit class, unit, image class): ``mean_activation``, ``n_images``; a unit
        is selective when its own class's row is the largest.
    """
    classes = items.set_index("item")[category_of].dropna()
    tagged = units[units["item"].isin(classes.index)].copy()
    tagged["class"] = tagged["item"].map(classes)
    chosen: dict[str, list[tuple[int, int]]] = {}
    for cls, group in tagged.groupby("class"):
        freq = group.groupby(["layer", "unit"])["item"].nunique().sort_values(ascending=False)
        chosen[str(cls)] = [(int(a), int(b)) for a, b in freq.index[:n_units]]
    pairs = sorted({u for us in chosen.values() for u in us})
    if not pairs:
        return pd.DataFrame()
    layers = sorted({layer for layer, _ in pairs})
    slot = {layer: s for s, layer in enumerate(layers)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    usable = [it for it in held_out if it.categories]
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        batch = model.prepare_inputs([it.image() for it in chunk])
        acts = image_mlp_activations(model, batch, layers)  # [n, L, n_img, d_mlp]
        idx_l = torch.tensor([slot[layer] for layer, _ in pairs])
        idx_u = torch.tensor([u for _, u in pairs])
        # advanced indices split by a slice: the pair dimension comes first
        peak = acts[:, idx_l, :, idx_u].amax(-1).T  # [n, n_pairs]
        for j, it in enumerate(chunk):
            cls = it.categories[0]
            sums[cls] = sums.get(cls, torch.zeros(len(pairs))) + peak[j]
            counts[cls] = counts.get(cls, 0) + 1
    rows = []
    for unit_cls, us in chosen.items():
        for u in us:
            p = pairs.index(u)
            for img_cls, total in sums.items():
                rows.append(
                    (
                        unit_cls,
                        u[0],
                        u[1],
                        img_cls,
                        float(total[p] / counts[img_cls]),
                        counts[img_cls],
                    )
                )
    return pd.DataFrame(
        rows, columns=["unit_class", "layer", "unit", "image_class", "mean_activation", "n_images"]
    )


def plot_category_selectivity(
    table: pd.DataFrame, title: str = "Category selectivity"
) -> go.Figure:
    """Heat map: units (grouped by their class) x image classes, mean activation."""
    if table.empty:
        raise ValueError("empty table: run category_selectivity on a run with classes first")
    table = table.assign(
        unit_label=lambda t: t.unit_class + " L" + t.layer.astype(str) + "U" + t.unit.astype(str)
    )
    grid = table.pivot_table(index="unit_label", columns="image_class", values="mean_activation")
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), colorscale="Viridis"
        )
    )
    fig.update_layout(title=title, xaxis_title="held-out images of class", yaxis_title="unit")
    return fig


def plot_iou_by_category(
    table: pd.DataFrame, title: str = "Spatial selectivity by category"
) -> go.Figure:
    """Mean IoU per category, top units vs random units of the same layers."""
    if table.empty:
        raise ValueError("empty table: no image's noun matched an annotated category")
    per = table.groupby(["category", "kind"])["iou"].mean().unstack()
    fig = go.Figure()
    for kind, colour in (("top", "crimson"), ("random", "grey")):
        if kind in per:
            fig.add_trace(
                go.Bar(x=list(per.index), y=per[kind].tolist(), name=kind, marker_color=colour)
            )
    fig.update_layout(title=title, barmode="group", yaxis_title="mean IoU")
    return fig


def analysis_report(
    out: str | Path,
    data: Sequence[Item] | None = None,
    *,
    iou: pd.DataFrame | None = None,
    selectivity: pd.DataFrame | None = None,
    n_cards: int = 12,
    grid_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``out/report.html`` for a finished run: summary, captions and failures, the layer
    distribution, the most frequent units (cards with their stored patch maps over the images
    where they score highest, when ``data`` is given), and the IoU-by-category and
    category-selectivity sections when their tables are given.

    Example:
        >>> iou = spatial_iou_by_category(model, data, items, units)  # doctest: +SKIP
        >>> analysis_report("runs/coco-gptj", data, iou=iou)  # doctest: +SKIP
    """
    from transformer_lens_mm.analyze import load_results
    from transformer_lens_mm.plotting import plot_top_units_per_layer
    from transformer_lens_mm.report import Report, UnitCard, unit_map_png

    out = Path(out)
    items, units, maps = load_results(out)
    summary = json.loads((out / "summary.json").read_text())
    report = Report(f"Multimodal-neuron analysis: {out.name}")
    report.key_values({k: v for k, v in summary.items() if k != "failures"})
    report.section("Items", "Caption, target token c (first noun) and failure of every item.")
    report.table(items, max_rows=100)
    if len(units):
        report.section("Top units by layer", "All images' top-k entries pooled.")
        report.figure(plot_top_units_per_layer(units))
        share = float(units["interpretable"].mean()) if "interpretable" in units else float("nan")
        report.key_values({"entries": len(units), "interpretable share": f"{share:.1%}"})
        freq = (
            units.assign(tokens=units["tokens"].map(lambda t: " ".join(map(repr, t))))
            .groupby(["layer", "unit"])
            .agg(images=("item", "nunique"), score=("score", "sum"), tokens=("tokens", "first"))
            .reset_index()
            .sort_values(["images", "score"], ascending=False)
        )
        report.table(freq, max_rows=30)
        cards = []
        by_id = {data[i].id: data[i] for i in range(len(data))} if data is not None else {}
        n_img = int(maps.shape[1]) if maps.ndim == 2 else 0
        side = round(n_img**0.5)
        grid = grid_size or ((side, side) if side * side == n_img and n_img else None)
        for row in freq.head(n_cards).itertuples():
            rows = units[(units["layer"] == row.layer) & (units["unit"] == row.unit)]
            best = rows.sort_values("score", ascending=False).drop_duplicates("item").head(3)
            pngs = []
            if grid is not None:
                for r in best.itertuples():
                    item = by_id.get(r.item)
                    if item is not None:
                        png = unit_map_png(item.image(), maps[r.Index].float(), grid)
                        pngs.append((png, f"{r.item}: {r.target}"))
            cards.append(
                UnitCard(
                    int(row.layer),
                    int(row.unit),
                    list(rows.iloc[0]["tokens"]),
                    pngs,
                    {"top-k of": f"{int(row.images)} images"},
                    list(rows["target"].astype(str).unique()),
                )
            )
        report.section("Most frequent units")
        report.cards(cards)
    if iou is not None and len(iou):
        report.section("Spatial selectivity by category", "Top units vs random same-layer units.")
        report.figure(plot_iou_by_category(iou))
        report.table(iou.groupby(["category", "kind"])["iou"].agg(["mean", "count"]).reset_index())
    if selectivity is not None and len(selectivity):
        report.section("Category selectivity")
        report.figure(plot_category_selectivity(selectivity))
    return report.write(out / "report.html")
