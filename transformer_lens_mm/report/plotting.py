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
from transformer_lens_mm.tools.spatial import patch_map, quantile_mask

__all__ = [
    "plot_ablation_curves",
    "plot_logit_lens",
    "plot_top_units_per_layer",
    "plot_unit_map",
]


def plot_unit_map(
    image: ImageLike,
    activations: Tensor,
    grid_size: tuple[int, int],
    *,
    title: str = "",
    quantile: float | None = 0.95,
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
        raise ValueError("the table needs a 'layer' column (Attribution.top_k(...))")
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
    title: str = "Ablating top vs random units",
) -> go.Figure:
    """Mean of ``value`` per k for top and random units, with a normal confidence band
    (:func:`~transformer_lens_mm.tools.ablation.ablation_curve`)."""
    from transformer_lens_mm.tools.ablation import ablation_curve

    curve = ablation_curve(sweep, value=value, ci=ci)
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
    fig.update_layout(title=title, xaxis_title="units ablated (k)", yaxis_title=value)
    return fig


def plot_logit_lens(table: pd.DataFrame, *, image: int = 0, title: str = "Logit lens") -> go.Figure:
    """Heat map of the top-1 token's probability per component and position, labelled."""
    top = table[(table["image"] == image) & (table["rank"] == 0)]
    if top.empty:
        raise ValueError(f"the table has no rows for image {image}")
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
