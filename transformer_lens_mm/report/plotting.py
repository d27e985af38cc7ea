"""Plotly figures for the analyses. Every function returns a ``plotly.graph_objects.Figure``
(call ``.show()`` or ``.write_html()`` yourself).

Example:
    >>> fig = plot_ablation_curves(sweep)  # doctest: +SKIP
    >>> fig.write_html("ablation.html")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import Tensor

from transformer_lens_mm.core.images import ImageLike, to_rgb_image
from transformer_lens_mm.core.paper import REGION_QUANTILE
from transformer_lens_mm.errors import TableError
from transformer_lens_mm.tools.ablation import ablation_curve
from transformer_lens_mm.tools.knockout import knockout_curve
from transformer_lens_mm.tools.spatial import patch_map, quantile_mask
from transformer_lens_mm.tools.specificity import selectivity_by_class, specificity_ratio

__all__ = [
    "plot_ablation_curves",
    "plot_category_selectivity",
    "plot_cross_concept",
    "plot_iou_by_category",
    "plot_iou_histogram",
    "plot_knockout",
    "plot_lens_by_layer",
    "plot_lens_shares",
    "plot_logit_lens",
    "plot_soft_prompts",
    "plot_top_units_per_layer",
    "plot_unit_map",
]


def plot_unit_map(
    image: ImageLike,
    activations: Tensor,
    grid_size: tuple[int, int],
    *,
    title: str = "",
    quantile: float | None = REGION_QUANTILE,
    opacity: float = 0.55,
) -> go.Figure:
    """A unit's activations over the image patches, drawn over the image.

    Args:
        image: The image (any :data:`~transformer_lens_mm.core.images.ImageLike`).
        activations: The unit's activation at each image token ``[n_image_tokens]``.
        grid_size: Patch grid ``(h, w)``.
        title: Figure title.
        quantile: Outline the region above this quantile (``None``: no outline).
        opacity: Heat-map opacity.
    """
    rgb = np.asarray(to_rgb_image(image))
    height, width = rgb.shape[:2]
    heat = patch_map(activations, grid_size, (height, width)).numpy()
    fig = go.Figure(go.Image(z=rgb))
    fig.add_trace(
        go.Heatmap(
            z=heat,
            opacity=opacity,
            colorscale="Inferno",
            colorbar={"title": "activation"},
            hoverinfo="z",
        )
    )
    if quantile is not None:
        mask = quantile_mask(torch.from_numpy(heat), quantile).numpy().astype(float)
        fig.add_trace(
            go.Contour(
                z=mask,
                showscale=False,
                contours={"start": 0.5, "end": 0.5, "coloring": "lines"},
                line={"color": "cyan", "width": 2},
                hoverinfo="skip",
                name=f"q{quantile}",
            )
        )
    fig.update_layout(
        title=title,
        yaxis={"autorange": "reversed", "scaleanchor": "x"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def plot_top_units_per_layer(
    table: pd.DataFrame, *, n_layers: int | None = None, title: str = "Top units per layer"
) -> go.Figure:
    """How many of the top-scoring units sit in each layer (from ``Attribution.top_k``)."""
    if "layer" not in table:
        raise TableError("the table needs a 'layer' column (Attribution.top_k(...))")
    counts = table["layer"].value_counts().sort_index()
    layers = range(n_layers) if n_layers is not None else counts.index
    fig = go.Figure(go.Bar(x=list(layers), y=[int(counts.get(layer, 0)) for layer in layers]))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="units in the top-k")
    return fig


def plot_ablation_curves(
    sweep: pd.DataFrame,
    *,
    value: str = "rel_p",
    ci: float = 0.95,
    by: str = "image",
    title: str = "Ablating top vs random units",
) -> go.Figure:
    """Mean of ``value`` per k for top and random units, with a normal confidence band
    (:func:`~transformer_lens_mm.tools.ablation.ablation_curve`; ``by="item"`` for run and
    demo tables)."""
    curve = ablation_curve(sweep, value=value, ci=ci, by=by)
    fig = go.Figure()
    colours = {"top": "crimson", "random": "grey"}
    for kind, stats in curve.groupby("kind"):
        stats = stats.reset_index(drop=True)
        x = [str(k) for k in stats["k"]]
        colour = colours.get(str(kind), "steelblue")
        fig.add_trace(
            go.Scatter(
                x=x + x[::-1],
                y=list(stats["ci_high"]) + list(stats["ci_low"][::-1]),
                fill="toself",
                line={"width": 0},
                fillcolor=colour,
                opacity=0.2,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x, y=stats["mean"], mode="lines+markers", name=str(kind), line={"color": colour}
            )
        )
    axis = {
        "rel_p": "p(c) kept (ablated / unablated)",
        "p_c": "p(c)",
        "delta_p": "change of p(c)",
        "logit_c": "logit of c",
        "delta_logit": "change of the logit of c",
    }.get(value, value)
    fig.update_layout(title=title, xaxis_title="units ablated (k)", yaxis_title=axis)
    return fig


def plot_logit_lens(table: pd.DataFrame, *, image: int = 0, title: str = "Logit lens") -> go.Figure:
    """Heat map of the top-1 token's probability per component and position, labelled."""
    top = table[(table["image"] == image) & (table["rank"] == 0)]
    if top.empty:
        raise TableError(f"the table has no rows for image {image}")
    comps = list(dict.fromkeys(top["component"]))
    positions = sorted(top["position"].unique())
    prob = np.full((len(comps), len(positions)), np.nan)
    text = np.full((len(comps), len(positions)), "", dtype=object)
    for row in top.itertuples():
        i, j = comps.index(row.component), positions.index(row.position)
        prob[i, j], text[i, j] = row.prob, str(row.token)
    fig = go.Figure(
        go.Heatmap(
            z=prob,
            x=[str(p) for p in positions],
            y=comps,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "p(top-1)"},
        )
    )
    fig.update_layout(title=title, xaxis_title="position", yaxis_title="residual component")
    return fig


def plot_lens_by_layer(
    lens: pd.DataFrame,
    title: str = "Logit lens: median p(c) at the position that predicts c, by layer",
) -> go.Figure:
    """Median over images of p(c) per residual component (a ``logit_lens`` table with
    ``target_prob``)."""
    if "target_prob" not in lens:
        raise TableError("the lens table has no target_prob: run logit_lens(..., target_ids=...)")
    first = lens[lens["rank"] == 0]
    per_layer = first.groupby("layer")[["target_prob", "target_rank"]].median().reset_index()
    fig = go.Figure(
        go.Scatter(x=per_layer["layer"], y=per_layer["target_prob"], mode="lines+markers")
    )
    fig.update_layout(
        title=title,
        xaxis_title="residual stream before layer (n_layers: final)",
        yaxis_title="median p(c)",
    )
    return fig


def plot_iou_histogram(
    spatial: pd.DataFrame, *, quantile: float = REGION_QUANTILE, title: str | None = None
) -> go.Figure:
    """Histogram of each unit's IoU with the object mask, top vs random units (a
    ``spatial_selectivity`` table)."""
    fig = go.Figure()
    for kind, colour in (("top", "crimson"), ("random", "grey")):
        values = spatial[spatial.kind == kind]["iou"]
        fig.add_trace(go.Histogram(x=values, name=kind, marker_color=colour, opacity=0.6))
    fig.update_layout(
        barmode="overlay",
        title=title or f"IoU of each unit's {quantile}-quantile region with the object mask",
        xaxis_title="IoU",
        yaxis_title="units",
    )
    return fig


def plot_category_selectivity(
    table: pd.DataFrame, title: str = "Category selectivity (supplement S.4)"
) -> go.Figure:
    """The paper's Figure S.2(a): unit classes (rows) x held-out image classes (columns), the
    mean signed activation of each class's units normalised by the row's maximum
    (:func:`~transformer_lens_mm.pipelines.experiments.selectivity_by_class` of a
    ``category_selectivity`` table). One row per class, every row labelled, however many units;
    a box marks each row's own class."""
    if table.empty:
        raise TableError("empty table: run category_selectivity on a run with classes first")
    grid = selectivity_by_class(table)
    order = [c for c in grid.index if c in grid.columns] + [
        c for c in grid.index if c not in grid.columns
    ]
    cols = [c for c in order if c in grid.columns] + [c for c in grid.columns if c not in order]
    grid = grid.loc[order, cols]
    n_units = table.drop_duplicates(["unit_class", "layer", "unit", "sign"]).groupby("unit_class")
    counts = n_units.size() if "sign" in table else table.groupby("unit_class").size()
    labels = [f"{c} ({int(counts.get(c, 0))} units)" for c in grid.index]
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=list(grid.columns),
            y=labels,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": "activation / row max"},
            hovertemplate="units of %{y}<br>images of %{x}<br>%{z:.2f} of the row max"
            "<extra></extra>",
        )
    )
    for i, cls in enumerate(grid.index):
        if cls in grid.columns:
            j = list(grid.columns).index(cls)
            fig.add_shape(
                type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                line={"color": "white", "width": 2},
            )  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis_title="held-out images of class",
        yaxis_title="units chosen on images of class",
        height=max(320, 22 * len(grid.index) + 160),
        yaxis={"autorange": "reversed", "dtick": 1},
        xaxis={"dtick": 1},
    )
    return fig


def plot_iou_by_category(
    table: pd.DataFrame, title: str = "Spatial selectivity by category"
) -> go.Figure:
    """Mean IoU per category, top units vs random units of the same layers (a
    ``spatial_iou_by_category`` table)."""
    if table.empty:
        raise TableError("empty table: no image's noun matched an annotated category")
    per = table.groupby(["category", "kind"])["iou"].mean().unstack()
    fig = go.Figure()
    for kind, colour in (("top", "crimson"), ("random", "grey")):
        if kind in per:
            fig.add_trace(
                go.Bar(x=list(per.index), y=per[kind].tolist(), name=kind, marker_color=colour)
            )
    fig.update_layout(title=title, barmode="group", yaxis_title="mean IoU")
    return fig


def plot_soft_prompts(
    soft: pd.DataFrame, title: str = "Soft prompts vs random vectors"
) -> go.Figure:
    """Histogram of each vector's top-1 cosine with the vocabulary, soft prompts vs random (a
    ``soft_prompts`` table)."""
    fig = go.Figure()
    for kind, colour in (("image", "crimson"), ("random", "grey")):
        values = soft[(soft["kind"] == kind) & (soft["rank"] == 0)]["cosine"]
        fig.add_trace(go.Histogram(x=values, name=kind, marker_color=colour, opacity=0.6))
    fig.update_layout(
        title=title, barmode="overlay", xaxis_title="top-1 cosine", yaxis_title="vectors"
    )
    return fig


def plot_cross_concept(
    table: pd.DataFrame, title: str = "Same-concept vs cross-concept ablation"
) -> go.Figure:
    """Mean drop of p(c) per k with each image's top-k units zeroed on the image itself (same
    concept) and on images of other concepts (cross concept), and the same for random
    same-layer units (a ``cross_concept_ablation`` table; the ratio is in the hover text)."""
    if table.empty:
        raise TableError("empty table: run cross_concept_ablation first")
    ratio = specificity_ratio(table)
    ratio = ratio[ratio["k"] > 0]
    x = [str(k) for k in ratio["k"]]
    fig = go.Figure()
    for column, name, colour, dash in (
        ("same_drop", "top units, same image", "crimson", "solid"),
        ("cross_drop", "top units, other-concept images", "darkorange", "solid"),
        ("random_same_drop", "random units, same image", "grey", "dot"),
        ("random_cross_drop", "random units, other-concept images", "silver", "dot"),
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=ratio[column],
                mode="lines+markers",
                name=name,
                line={"color": colour, "dash": dash},
                customdata=ratio["ratio"],
                hovertemplate="k=%{x}: drop %{y:.3f} (same/cross ratio %{customdata:.2f})",
            )
        )
    fig.update_layout(
        title=title, xaxis_title="units ablated (k)", yaxis_title="mean drop of p(c) (1 - rel p)"
    )
    return fig


def plot_knockout(
    table: pd.DataFrame,
    title: str = "Attention knockout: p(c) kept when a flow is cut in a window of layers",
) -> go.Figure:
    """Windows of layers (columns) x flows cut (rows): the mean over images of p(c) with the
    flow cut over p(c) without (1 = no effect), from
    :func:`~transformer_lens_mm.tools.knockout.knockout_table`. Each flow has a row for its
    random control group under it when the table has controls (not where the sequence left no
    position to draw one from: ``n_blocked`` 0).

    Example:
        >>> fig = plot_knockout(knockout_table(model, batch, window=3))  # doctest: +SKIP
    """
    if table.empty:
        raise TableError("empty table: run knockout_table first")
    if "n_blocked" in table:  # a control with no room for a single position cut nothing
        empty = table[table.kind == "control"].groupby(["from_group", "to_group"]).n_blocked.max()
        vacuous = {k for k, v in empty.items() if v == 0}
        keep = [
            not (kind == "control" and (a, b) in vacuous)
            for kind, a, b in zip(table.kind, table.from_group, table.to_group)
        ]
        table = table[keep]
    curve = knockout_curve(table)
    curve["flow"] = curve["from_group"] + " \u2192 " + curve["to_group"]
    curve.loc[curve.kind == "control", "flow"] += " (random positions)"
    curve["window"] = [
        f"{a}" if b == a + 1 else f"{a}\u2013{b - 1}" for a, b in zip(curve.start, curve.stop)
    ]
    flows = list(
        dict.fromkeys(
            curve.sort_values(
                ["from_group", "to_group", "kind"], ascending=[True, True, False]
            ).flow
        )
    )
    windows = list(dict.fromkeys(curve.sort_values("start").window))
    grid = curve.pivot_table(index="flow", columns="window", values="mean").loc[flows, windows]
    sem = curve.pivot_table(index="flow", columns="window", values="sem").loc[flows, windows]
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=windows,
            y=flows,
            customdata=sem.to_numpy(),
            colorscale="RdBu",
            zmid=1.0,
            colorbar={"title": "p(c) cut / p(c)"},
            hovertemplate="%{y}<br>layers %{x}<br>p(c) kept: %{z:.2f} \u00b1 %{customdata:.2f}"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="layers cut (window)",
        yaxis_title="flow cut",
        height=max(300, 28 * len(flows) + 160),
        yaxis={"autorange": "reversed", "dtick": 1},
    )
    return fig


def plot_lens_shares(
    shares: pd.DataFrame,
    title: str = "Image tokens whose top tokens name c, by layer and lens",
) -> go.Figure:
    """One line per lens (contextual, logit, embedding) over layers: the share of image tokens
    whose top-``k`` tokens name ``c`` (solid), and of the matched random vectors (dotted), from
    :func:`~transformer_lens_mm.tools.contextual_lens.lens_shares`.

    Example:
        >>> fig = plot_lens_shares(lens_shares(table))  # doctest: +SKIP
    """
    if shares.empty:
        raise TableError("empty table: run contextual_lens(..., target_ids=...) first")
    colours = {"contextual": "#1f77b4", "logit": "#d62728", "embedding": "#2ca02c"}
    fig = go.Figure()
    for (lens, kind), part in shares.sort_values("layer").groupby(["lens", "kind"], sort=False):
        name = lens if kind == "image" else f"{lens} (random vectors)"
        hover = f"{name}<br>after block %{{x}}<br>%{{y:.1%}} of tokens<extra></extra>"
        dash = "solid" if kind == "image" else "dot"
        fig.add_trace(
            go.Scatter(
                x=part["layer"],
                y=part["share"],
                mode="lines+markers",
                name=name,
                line={"color": colours.get(lens), "dash": dash},
                hovertemplate=hover,
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="after block",
        yaxis_title="share of image tokens",
        yaxis={"tickformat": ".0%", "rangemode": "tozero"},
    )
    return fig
