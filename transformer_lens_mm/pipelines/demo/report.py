"""The demo's ``report.html``, built for reading: a headline panel (each key number beside its
baseline, one sentence on what it means, the issue's targets marked met or not), the unit cards
as the main body, the figures, and every long table folded away.

Example:
    >>> write_report("runs/demo/report.html", model, config, summary, tables=...)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.natural_scenes import NATURAL_BACKGROUNDS, NOUNS
from transformer_lens_mm.data.scenes import SHAPES
from transformer_lens_mm.pipelines.demo.config import DemoConfig
from transformer_lens_mm.pipelines.demo.summary import percent, target_checks
from transformer_lens_mm.pipelines.demo.tables import DemoTables
from transformer_lens_mm.pipelines.experiments import paper_comparison_table
from transformer_lens_mm.report.cards import card_groups, unit_cards, visible_token
from transformer_lens_mm.report.html import Report, Tile
from transformer_lens_mm.report.plotting import (
    plot_ablation_curves,
    plot_category_selectivity,
    plot_cross_concept,
    plot_iou_by_category,
    plot_knockout,
    plot_lens_by_layer,
    plot_lens_shares,
    plot_top_units_per_layer,
)
from transformer_lens_mm.tools.readout import signed_view

__all__ = ["headline_tiles", "write_report"]


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or pd.isna(x) else fmt.format(float(x))


def headline_tiles(summary: dict[str, Any], config: DemoConfig) -> list[Tile]:
    """The headline panel of a demo summary: each number beside its baseline."""
    cap, top = summary["captions"], summary["top_units"]
    controls = summary.get("controls", {})
    checks = {c["name"]: c for c in target_checks(summary)}
    names = list(checks)
    n_classes = len(NOUNS) if config.scene_set == "natural" else len(SHAPES)
    tiles = [
        Tile(
            "Captions name the object",
            percent(cap["scenes_object_right"]),
            f"chance: 1 in {n_classes} ({percent(1 / n_classes)}); "
            f"{summary['n_scenes']} held-out scenes",
            "How often the greedy caption names the first object: the model sees the images.",
        )
    ]
    ranks = summary.get("target_in_decoding", {})
    share = top.get("scenes_with_an_interpretable_unit_decoding_to_target")
    tiles.append(
        Tile(
            "Scenes with a unit that writes c",
            percent(share),
            "c's median percentile in top units' decodings "
            f"{_num(ranks.get('top', {}).get('median_percentile_of_c'), '{:.1f}')} vs random "
            f"units {_num(ranks.get('random', {}).get('median_percentile_of_c'), '{:.1f}')}",
            f"Share of scenes where one of the top {top['k']} interpretable units has the "
            "caption's noun c among its 10 decoded tokens (W_U W_out): multimodal neurons.",
            checks[names[0]]["met"],
        )
    )
    abl = summary.get("ablation_rel_p", {})
    k = "100" if "100" in abl.get("top", {}) else next(iter(abl.get("top", {"0": 0})), "0")
    tiles.append(
        Tile(
            f"p(c) kept, top {k} units zeroed",
            _num(abl.get("top", {}).get(k)),
            f"{k} random same-layer units: {_num(abl.get('random', {}).get(k))}",
            "The paper's causal test: the units found matter for c far more than random ones.",
        )
    )
    ratio = controls.get("specificity_ratio", {})
    at = ratio.get("100") or (next(iter(ratio.values())) if ratio else {})
    tiles.append(
        Tile(
            "Same- vs cross-concept drop (k = 100)",
            f"{_num(at.get('ratio'), '{:.1f}')}x",
            f"drop of p(c) on the image {_num(at.get('same_drop'))} vs on other-concept images "
            f"{_num(at.get('cross_drop'))}; random units {_num(at.get('random_same_drop'))} / "
            f"{_num(at.get('random_cross_drop'))}",
            "Concept-specific units lower p(c) of their own image, not of other concepts' "
            "images; generic image machinery lowers both (ratio near 1).",
            checks[names[2]]["met"],
        )
    )
    iou = summary.get("spatial_iou", {})
    tiles.append(
        Tile(
            "Spatial IoU with the named object",
            _num(iou.get("top", {}).get("mean"), "{:.3f}"),
            f"random units {_num(iou.get('random', {}).get('mean'), '{:.3f}')}; top > random in "
            f"{controls.get('concepts_iou_top_above_random', 'n/a')} concepts; the best a map "
            f"on the patch grid reaches: {_num(iou.get('ceiling', {}).get('map'), '{:.3f}')}",
            f"Overlap of each top unit's {config.quantile}-quantile patch region with the mask "
            "of what c names (objects and background regions).",
            checks[names[1]]["met"],
        )
    )
    generic = controls.get("generic", {})
    tiles.append(
        Tile(
            "Top entries from generic units",
            percent(generic.get("share_of_top_entries_generic")),
            f"{generic.get('n_generic_units', 'n/a')} of {generic.get('n_units', 'n/a')} units "
            f"are top for more than {config.generic_share:.0%} of the concepts",
            "Units among the top of most concepts read image tokens in general; they are "
            "reported apart from concept-specific ones.",
        )
    )
    sel = controls.get("category_selectivity", {})
    tiles.append(
        Tile(
            "Concept units most active on their concept",
            percent(sel.get("share_of_units_most_active_on_own_class")),
            f"chance {percent(sel.get('chance'))}; {sel.get('units', 0)} units on held-out "
            "one-object images; concepts whose units peak on their own: "
            f"{sel.get('classes_whose_units_peak_on_own_class', 'n/a')}",
            "Each concept's 20 most frequent interpretable units (supplement S.4): is their mean "
            "activation over the patches highest on held-out images of that concept?",
        )
    )
    soft = summary.get("soft_prompts", {})
    tiles.append(
        Tile(
            "Soft prompts near c",
            percent(soft.get("image_images_with_target_nearby")),
            f"norm-matched random vectors: {percent(soft.get('random_images_with_target_nearby'))}",
            "The paper's other reading: the image tokens themselves decode (nearest tokens) to "
            "c only rarely; the translation happens inside the LM.",
        )
    )
    return tiles


def _effect_facts(effects: pd.DataFrame, specificity: pd.DataFrame) -> Callable:
    effect = (
        effects.groupby(["layer", "unit", "kind"])["rel_p"].mean().unstack("kind")
        if len(effects)
        else pd.DataFrame()
    )
    best = (
        specificity[specificity["hits_in"] > 0]
        .sort_values("specificity", ascending=False)
        .drop_duplicates(["layer", "unit"])
        .set_index(["layer", "unit"])
        if len(specificity)
        else pd.DataFrame()
    )

    def facts(layer: int, unit: int) -> dict[str, str]:
        out = {}
        if (layer, unit) in effect.index:
            row = effect.loc[(layer, unit)]
            out["ablation effect"] = (
                f"p(c) x {_num(row.get('top'))} with this unit zeroed on its images "
                f"(a random same-layer unit: x {_num(row.get('random'))})"
            )
        if (layer, unit) in best.index:
            row = best.loc[(layer, unit)]
            out["most specific to"] = (
                f"{row['concept']}: top in {int(row['hits_in'])}/{int(row['n_in'])} of its images "
                f"vs {int(row['hits_out'])}/{int(row['n_out'])} of the others"
            )
        return out

    return facts


def write_report(
    path: str | Path,
    model: MultimodalModel,
    config: DemoConfig,
    summary: dict[str, Any],
    *,
    tables: DemoTables,
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
        tables: The demo's tables (:class:`~transformer_lens_mm.pipelines.demo.tables.
            DemoTables`).
        maps: ``maps[i]``: the patch map of ``tables.units.iloc[i]``.
        image_of: ``item -> image`` for the unit cards.
        caption_of: ``item -> caption`` under each card's maps.
    """
    about = summary["model"]
    units, lens, spatial = tables.units, tables.logit_lens, tables.spatial
    sweep, cross = tables.ablation, tables.cross_concept
    selectivity = tables.category_selectivity
    grid = about["grid"] or [0, 0]
    report = Report(f"Multimodal neurons in {about['lm']} (tlmm demo)")
    report.text(
        f"A frozen text-only LM ({about['lm']}, {about['n_layers']} layers, "
        f"{about['d_mlp']} MLP units each, {about['api']}) given sight by a frozen image encoder "
        f"({about['encoder']}, {grid[0]}x{grid[1]} = {about['n_image_tokens']} patch tokens) and "
        f"one linear projection, prompted with {about['prompt']!r}; "
        f"{summary['n_scenes']} held-out {config.scene_set} scenes"
        + (" and scikit-image's photos" if config.photos else "")
        + ". The analysis follows Schwettmann et al. (2023), 'Multimodal Neurons in Pretrained "
        "Text-Only Transformers', plus controls that tell concept-specific units from generic "
        "ones."
    )
    report.section("Headline")
    report.tiles(headline_tiles(summary, config))
    checks = pd.DataFrame(target_checks(summary))
    checks["met"] = checks["met"].map({True: "met", False: "NOT met"})
    checks = checks.drop(columns="value").rename(columns={"shown": "value"})
    report.table(checks)
    caption_spatial = (  # the paper's Figure 5: objects named by the caption, not backgrounds
        spatial[spatial["target_from"] == "caption"] if "target_from" in spatial else spatial
    )
    comparison = paper_comparison_table(units, {"spatial": caption_spatial, "ablation": sweep})
    if len(comparison):
        report.section(
            "The paper vs this run",
            "Each result the paper reports for GPT-J-6B + LiMBeR-BEiT on COCO (arXiv "
            "2308.01544v2; where in the paper) beside the same quantity in this run, a much "
            "smaller LM on generated scenes: a reading aid, not a replication.",
        )
        report.table(comparison)

    report.section(
        "Unit cards",
        "The units most often among the images' top units (those whose decoding contains the "
        "image's c first): decoded tokens (c highlighted), the patch map over their best images "
        "(the 0.95-quantile region outlined), the concepts whose images they are top for, "
        "generic or specific, and the effect of zeroing the unit alone.",
    )
    specificity = tables.concept_specificity
    effects = tables.unit_effects
    highlight = list(NOUNS) + list(NATURAL_BACKGROUNDS) + list(SHAPES)
    for title, rows, n in card_groups(units, config.n_cards):
        report.text(f"{title}:", note=True)
        if not len(rows):
            report.text("none in this run.", note=True)
            continue
        report.cards(
            unit_cards(
                rows,
                maps[torch.as_tensor(rows.index.to_numpy().copy())] if maps is not None else None,
                image_of=image_of,
                grid_size=tuple(about["grid"]) if about["grid"] else None,
                caption_of=caption_of,
                n_cards=n,
                quantile=config.quantile,
                highlight=highlight,
                facts_of=_effect_facts(effects, specificity),
            )
        )

    report.section("Where the top units are", "Top entries per layer over every image.")
    report.figure(plot_top_units_per_layer(units, n_layers=int(model.cfg.n_layers)))
    report.section(
        "Ablation",
        "p(c) relative to the unablated run when each image's top-k units (ranked by their best "
        "position) are zeroed at all image positions, against k random units of the same layers.",
    )
    report.figure(plot_ablation_curves(sweep, by="item"))
    if len(cross):
        report.text(
            "Each image's top-k zeroed on the image itself and on images of other concepts (p of "
            "their own c): a concept-specific mechanism hurts only its own concept."
        )
        report.figure(plot_cross_concept(cross))
    if len(spatial) and "category" in spatial:
        report.section(
            "Spatial selectivity by concept",
            f"Mean IoU of each top unit's {config.quantile}-quantile region with the mask of the "
            "object or background region c names, against random same-layer units.",
        )
        report.figure(plot_iou_by_category(spatial, title="IoU per concept"))
    if len(selectivity):
        report.section(
            "Category selectivity",
            "Supplement S.4: each concept's 20 most frequent interpretable top units (rows) and "
            "their mean signed activation over all patches of held-out one-object images of "
            "every concept (columns), divided by the row's maximum; the row's own concept is "
            "boxed.",
        )
        report.figure(plot_category_selectivity(selectivity))
    report.section("Logit lens", "p(c) read from the residual stream with the final norm + W_U.")
    report.figure(plot_lens_by_layer(lens))
    knockout = tables.knockout
    if len(knockout):
        report.section(
            "Attention knockout",
            "Where the text reads the image: p(c) when the position that predicts c may not "
            "attend to the image positions in a window of layers, over p(c) without the cut "
            "(1 = no effect); below, the control: the same position cut off from random other "
            "positions, as many as the image has where the text is long enough (here the text "
            "is shorter than the image, so the control cuts it from the rest of the text).",
        )
        report.figure(plot_knockout(knockout))
    shares = tables.lens_shares
    if len(shares):
        corpus = summary.get("contextual_lens", {}).get("corpus", "")
        report.section(
            "Contextual lens",
            "The share of image tokens whose 5 nearest tokens name c, after each block: by "
            f"contextual text representations at that layer ({corpus}), by the logit lens and "
            "by the input embeddings; dotted: random vectors with the image tokens' mean and "
            "spread.",
        )
        report.figure(plot_lens_shares(shares))

    report.section("Tables", "Every table is also a CSV file beside this page.")
    report.table(tables.captions, max_rows=100, collapsed="Captions")
    shown = signed_view(units)
    shown["tokens"] = [" ".join(visible_token(t) for t in toks) for toks in shown["tokens"]]
    report.table(
        shown.sort_values(["index", "rank"]).groupby("item").head(5),
        max_rows=200,
        collapsed="Top 5 units per image",
    )
    report.table(tables.generic_units, collapsed="Units by spread")
    if len(specificity):
        report.table(
            specificity[specificity["rank"] < 3], collapsed="The 3 most specific units per concept"
        )
    soft = tables.soft_prompts
    report.table(
        soft[(soft.kind == "image") & (soft["rank"] == 0)], collapsed="Soft prompts (nearest token)"
    )
    report.table(tables.ablation_captions, collapsed="Captions under ablation")
    if len(effects):
        report.table(effects, collapsed="Single-unit ablation of the card units")
    report.section("Run")
    seconds = pd.DataFrame(list(summary["seconds"].items()), columns=["step", "seconds"])
    report.table(seconds, collapsed="Time per step")
    report.table(
        pd.DataFrame(list(about.items()), columns=["model", "value"]).astype(str),
        collapsed="Model",
    )
    report.table(
        pd.DataFrame(list(summary["config"].items()), columns=["setting", "value"]).astype(str),
        collapsed="Settings",
    )
    return report.write(path)
