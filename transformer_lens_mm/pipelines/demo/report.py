"""The demo's ``report.html``: what ran, the headline numbers, every table, figure and card.

Example:
    >>> write_report("runs/demo/report.html", model, config, summary, tables=...)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.scenes import SHAPES
from transformer_lens_mm.pipelines.demo.config import DemoConfig
from transformer_lens_mm.pipelines.demo.summary import summary_text
from transformer_lens_mm.report.cards import unit_cards
from transformer_lens_mm.report.html import Report
from transformer_lens_mm.report.plotting import (
    plot_ablation_curves,
    plot_iou_histogram,
    plot_lens_by_layer,
    plot_logit_lens,
    plot_top_units_per_layer,
)

__all__ = ["write_report"]


def write_report(
    path: str | Path,
    model: MultimodalModel,
    config: DemoConfig,
    summary: dict[str, Any],
    *,
    tables: dict[str, pd.DataFrame],
    maps: Tensor | None,
    image_of: Callable[[Hashable], Any],
    caption_of: Callable[[Hashable], str],
) -> Path:
    """Write the demo's page (atomically) and return its path.

    Args:
        path: Where to write it.
        model: The model the demo ran (named on the page).
        config: The demo's settings.
        summary: :func:`~transformer_lens_mm.pipelines.demo.summary.summarise`'s numbers.
        tables: The demo's tables by name (``captions``, ``units``, ``soft_prompts``,
            ``logit_lens``, ``spatial``, ``ablation``, ``ablation_captions``).
        maps: ``maps[i]``: the patch map of ``tables["units"].iloc[i]``.
        image_of: ``item -> image`` for the unit cards.
        caption_of: ``item -> caption`` under each card's maps.
    """
    about = summary["model"]
    units, lens, spatial = tables["units"], tables["logit_lens"], tables["spatial"]
    soft, sweep = tables["soft_prompts"], tables["ablation"]
    grid = about["grid"] or [0, 0]
    report = Report(f"Multimodal neurons in {about['lm']} (tlmm demo)")
    report.text(
        f"A frozen text-only LM ({about['lm']}, {about['n_layers']} layers, "
        f"{about['d_mlp']} MLP units each, {about['api']}) given sight by a frozen image encoder "
        f"({about['encoder']}, {grid[0]}x{grid[1]} = {about['n_image_tokens']} patch tokens) and "
        f"one linear projection, prompted with {about['prompt']!r}. The analysis follows "
        "Schwettmann et al. (2023), 'Multimodal Neurons in Pretrained Text-Only Transformers'. "
        "With the shipped demo model, scenes are held out from the projection's training and "
        "the photos are out of its training distribution (it only ever saw coloured shapes)."
    )
    report.key_values({"summary": summary_text(summary).replace("\n", " | ")})
    report.section("Captions", "Greedy captions; c is the first token of the first noun.")
    report.table(tables["captions"], max_rows=60)
    report.section(
        "Top units",
        f"Each image's top {config.k} (layer, unit, position) entries by Z * d logit_c / dZ, "
        "decoded through the unembedding (W_U W_out, top 10 tokens). Interpretable: >= 7 of 10 "
        "tokens are dictionary words.",
    )
    report.key_values(summary["top_units"] | {"layer_histogram": "see figure"})
    report.figure(plot_top_units_per_layer(units, n_layers=int(model.cfg.n_layers)))
    shown = units.copy()
    shown["tokens"] = [" ".join(repr(t) for t in toks) for toks in shown["tokens"]]
    report.table(shown.sort_values(["index", "rank"]).groupby("item").head(5), max_rows=60)
    report.text(
        "Where c ranks in each unit's decoding (percentile over the vocabulary; 100 = c is the "
        "unit's first token), for each image's top units and for as many random units of the "
        "same layers:"
    )
    report.key_values({k: str(v) for k, v in summary.get("target_in_decoding", {}).items()})
    report.section("Unit cards", "Units most often in the top-k (those decoding to c first).")
    report.cards(
        unit_cards(
            units,
            maps,
            image_of=image_of,
            grid_size=tuple(about["grid"]) if about["grid"] else None,
            caption_of=caption_of,
            n_cards=config.n_cards,
            quantile=config.quantile,
            highlight=SHAPES,
        )
    )
    report.section(
        "Soft prompts",
        f"Nearest vocabulary tokens (cosine with W_E) of the {about['n_image_tokens']} image "
        "tokens, against random vectors with the same norms.",
    )
    report.key_values(summary["soft_prompts"])
    report.table(soft[(soft.kind == "image") & (soft["rank"] == 0)], max_rows=20)
    report.section("Logit lens", "p(c) read from the residual stream with the final norm + W_U.")
    report.figure(plot_lens_by_layer(lens))
    first = lens["item"].iloc[0]
    report.figure(plot_logit_lens(lens[lens["item"] == first].assign(image=0)))
    report.section(
        "Spatial selectivity",
        f"IoU of each top unit's {config.quantile}-quantile patch region (upsampled) with the "
        "object mask, against the same number of random units from the same layers.",
    )
    if len(spatial):
        report.key_values({k: str(v) for k, v in summary["spatial_iou"].items()})
        report.figure(plot_iou_histogram(spatial, quantile=config.quantile))
    report.section(
        "Ablation",
        "p(c) relative to the unablated run when each image's top-k units (ranked by their best "
        "position) are zeroed at all image positions, against k random units of the same layers.",
    )
    report.figure(plot_ablation_curves(sweep, by="item"))
    report.key_values({k: str(v) for k, v in summary["ablation_rel_p"].items()})
    report.section("Captions under ablation")
    report.table(tables["ablation_captions"])
    report.section("Run")
    report.key_values(
        {"seconds": json.dumps(summary["seconds"]), "model": json.dumps(summary["model"])}
    )
    return report.write(path)
