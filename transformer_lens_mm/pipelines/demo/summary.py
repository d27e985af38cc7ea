"""The demo's headline numbers (``summary.json``) and their printed form.

Example:
    >>> summary_text(json.load(open("runs/demo/summary.json")))  # doctest: +SKIP
"""

from __future__ import annotations

import json  # noqa: F401 (the example)
from dataclasses import asdict
from typing import Any

import pandas as pd

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.pipelines.demo.config import DemoConfig
from transformer_lens_mm.pipelines.demo.tables import DemoTables
from transformer_lens_mm.pipelines.experiments import controls_summary, soft_prompt_summary
from transformer_lens_mm.tools.knockout import knockout_curve
from transformer_lens_mm.tools.stats import mean_ci

__all__ = [
    "describe_model",
    "percent",
    "summarise",
    "summary_text",
    "target_checks",
    "where_translation",
]

#: the issue's targets for a run that shows concept-specific multimodal neurons (never moved)
TARGETS = {
    "images_with_concept_decoding_unit": 0.5,  # share of held-out scenes
    "specificity_ratio_at_100": 3.0,  # same-concept drop / cross-concept drop at k = 100
}


def describe_model(model: MultimodalModel) -> dict[str, Any]:
    """What the demo ran: the LM, the encoder, the token layout (for the summary and report)."""
    encoder = model.image_encoder
    return {
        "api": type(model).__name__,
        "lm": model.lm_name,
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
        "d_mlp": int(model.cfg.d_mlp),
        "encoder": None if encoder is None else str(encoder.name),
        "n_image_tokens": None if encoder is None else int(encoder.n_tokens),
        "grid": None if encoder is None else list(encoder.grid_size),
        "prompt": model.prompt,
    }


def summarise(config: DemoConfig, tables: DemoTables) -> dict[str, Any]:
    """The headline numbers of a demo run, from its tables (the controls': see
    :func:`controls_summary`)."""
    captions, units, target_ranks = tables.captions, tables.units, tables.target_ranks
    soft, lens, spatial, sweep = (
        tables.soft_prompts,
        tables.logit_lens,
        tables.spatial,
        tables.ablation,
    )
    generic, cross, selectivity = (
        tables.generic_units if len(tables.generic_units) else None,
        tables.cross_concept if len(tables.cross_concept) else None,
        tables.category_selectivity if len(tables.category_selectivity) else None,
    )
    scenes = captions[captions.truth.notna()]
    top = units[units["rank"] < config.k]
    per_image_hit = top.groupby("item")["decodes_to_target"].any()
    scene_hits = per_image_hit[per_image_hit.index.isin(set(scenes["item"]))]
    interpretable_hit = (
        top.assign(_hit=top["decodes_to_target"] & top["interpretable"])
        .groupby("item")["_hit"]
        .any()
    )
    scene_interpretable = interpretable_hit[interpretable_hit.index.isin(set(scenes["item"]))]
    ablation: dict[str, dict[str, float]] = {}
    for kind, group in sweep.groupby("kind"):
        per_k = group.groupby(["k", "item"])["rel_p"].mean().groupby("k").mean()
        ablation[str(kind)] = {str(int(k)): round(float(v), 4) for k, v in per_k.items()}
    iou = {}
    from_caption = (
        spatial[spatial["target_from"] == "caption"] if "target_from" in spatial else spatial
    )  # the overall IoU is the paper's: c from the caption; backgrounds count per concept
    if len(from_caption):
        for kind, group in from_caption.groupby("kind"):
            per_image = group.groupby("item")["iou"].mean()
            mean, half = mean_ci(per_image.tolist())
            iou[str(kind)] = {
                "mean": round(mean, 4),
                "ci95": round(half, 4),
                "n_images": len(per_image),
            }
        if "map_ceiling" in from_caption:  # the best a patch map on the grid reaches
            per_item = from_caption.drop_duplicates("item")
            iou["ceiling"] = {
                "map": round(float(per_item["map_ceiling"].mean()), 4),
                "size": round(float(per_item["size_ceiling"].mean()), 4),
                "n_images": len(per_item),
            }
    final = lens[(lens["rank"] == 0) & (lens["layer"] == lens["layer"].max())]
    first_top1 = (
        lens[(lens["rank"] == 0) & (lens["target_rank"] == 0)].groupby("item")["layer"].min()
    )
    soft_stats = {}
    for row in soft_prompt_summary(soft).itertuples():
        soft_stats[f"{row.kind}_top1_cosine"] = round(float(row.top1_cosine), 4)
        soft_stats[f"{row.kind}_images_with_target_nearby"] = round(
            float(row.images_with_target_nearby), 4
        )
    failures = captions[captions["failure"].notna()]
    return {
        "n_images": len(captions),
        "n_scenes": len(scenes),
        "failures": dict(zip(failures["item"], failures["failure"])),
        "captions": {
            "scenes_colour_and_object_right": float(
                (scenes.colour_right.astype(bool) & scenes.object_right.astype(bool)).mean()
            )
            if len(scenes)
            else None,
            "scenes_object_right": float(scenes.object_right.astype(bool).mean())
            if len(scenes)
            else None,
            "scenes_target_is_the_shape": float(
                (scenes.noun.fillna("") == scenes.truth.str.split().str[-1]).mean()
            )
            if len(scenes)
            else None,
        },
        "top_units": {
            "k": config.k,
            "interpretable_share": round(float(units["interpretable"].mean()), 4),
            "share_of_units_decoding_to_target": round(float(units["decodes_to_target"].mean()), 4),
            "scenes_with_a_top_unit_decoding_to_target": round(float(scene_hits.mean()), 4)
            if len(scene_hits)
            else None,
            "images_with_a_top_unit_decoding_to_target": round(float(per_image_hit.mean()), 4),
            # the measure: an *interpretable* top unit whose top-10 decoding holds c
            "scenes_with_an_interpretable_unit_decoding_to_target": round(
                float(scene_interpretable.mean()), 4
            )
            if len(scene_interpretable)
            else None,
            "layer_histogram": {
                str(k): int(v) for k, v in units["layer"].value_counts().sort_index().items()
            },
        },
        "target_in_decoding": {
            str(kind): {
                "median_percentile_of_c": round(float(g["target_percentile"].median()), 2),
                "share_with_c_in_top_1_percent": round(
                    float((g["target_percentile"] >= 99).mean()), 4
                ),
                "n_units": len(g),
            }
            for kind, g in target_ranks.groupby("kind")
        },
        "soft_prompts": soft_stats,
        "logit_lens": {
            "median_final_p_c": round(float(final["target_prob"].median()), 4),
            "median_first_layer_c_is_top1": float(first_top1.median()) if len(first_top1) else None,
        },
        "spatial_iou": iou,
        "ablation_rel_p": ablation,
        "controls": controls_summary(units, spatial, generic, cross, selectivity),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    }


def target_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three targets against a run's summary: name, value, shown (the value as
    the report and the printed summary write it), target, met."""
    top = summary["top_units"]
    controls = summary.get("controls", {})
    share = top.get("scenes_with_an_interpretable_unit_decoding_to_target")
    ratio = controls.get("specificity_ratio", {}).get("100", {}).get("ratio")
    iou = controls.get("iou_by_concept", {})
    below = controls.get("concepts_iou_top_not_above_random", [])
    return [
        {
            "name": "held-out scenes with an interpretable top-100 unit decoding to c",
            "value": share,
            "shown": percent(share),
            "target": f">= {TARGETS['images_with_concept_decoding_unit']:.0%}",
            "met": share is not None and share >= TARGETS["images_with_concept_decoding_unit"],
        },
        {
            "name": "concepts where spatial IoU of top units > random units",
            "value": controls.get("concepts_iou_top_above_random"),
            "shown": "n/a"
            if controls.get("concepts_iou_top_above_random") is None
            else str(controls.get("concepts_iou_top_above_random")),
            "target": "every concept",
            "met": bool(iou) and not below,
        },
        {
            "name": "same-concept / cross-concept drop of p(c) at k = 100",
            "value": ratio,
            "shown": "n/a" if ratio is None else f"{ratio:.2f}x",
            "target": f">= {TARGETS['specificity_ratio_at_100']:g}x",
            "met": ratio is not None and ratio >= TARGETS["specificity_ratio_at_100"],
        },
    ]


def percent(x: Any) -> str:
    """A share as the report and the printed summary write it: one decimal where it has one
    (``0.025`` -> ``2.5%``, ``0.75`` -> ``75%``), ``n/a`` for none.

    Example:
        >>> percent(0.025), percent(0.75), percent(None)
        ('2.5%', '75%', 'n/a')
    """
    if x is None:
        return "n/a"
    return f"{100 * float(x):.1f}".removesuffix(".0") + "%"


def summary_text(summary: dict[str, Any]) -> str:
    """The short printed summary of a demo run."""
    cap = summary["captions"]
    top = summary["top_units"]
    soft = summary["soft_prompts"]
    lines = [f"images: {summary['n_images']} ({summary['n_scenes']} scenes)"]
    if cap["scenes_colour_and_object_right"] is not None:
        lines.append(
            f"captions: colour+object right {percent(cap['scenes_colour_and_object_right'])}, "
            f"object right {percent(cap['scenes_object_right'])}"
        )
    lines.append(
        f"top-{top['k']} units: {percent(top['interpretable_share'])} interpretable; "
        "scenes with a top unit decoding to c: "
        f"{percent(top['scenes_with_a_top_unit_decoding_to_target'])}"
    )
    ranks = summary.get("target_in_decoding", {})
    if "top" in ranks and "random" in ranks:
        lines.append(
            "c in the unit's decoding (median percentile over the vocabulary): top units "
            f"{ranks['top']['median_percentile_of_c']:.1f} vs random "
            f"{ranks['random']['median_percentile_of_c']:.1f}"
        )
    real = soft.get("image_images_with_target_nearby", 0.0)
    rand = soft.get("random_images_with_target_nearby", 0.0)
    lines.append(
        f"soft prompts: images with c among nearest tokens {percent(real)} vs random "
        f"{percent(rand)}"
    )
    iou = summary["spatial_iou"]
    if iou:
        lines.append(
            f"spatial IoU: top {iou['top']['mean']:.3f} +- {iou['top']['ci95']:.3f} vs random "
            f"{iou['random']['mean']:.3f} +- {iou['random']['ci95']:.3f}"
            + (
                f" (ceiling of a map on the grid: {iou['ceiling']['map']:.3f})"
                if "ceiling" in iou
                else ""
            )
        )
    abl = summary["ablation_rel_p"]
    if "top" in abl:
        ks = [k for k in abl["top"] if k != "0"]
        lines.append(
            "p(c) kept after ablating k units (top / random): "
            + ", ".join(
                f"k={k}: {abl['top'][k]:.2f}/{abl['random'].get(k, float('nan')):.2f}" for k in ks
            )
        )
    ratios = summary.get("controls", {}).get("specificity_ratio", {})
    if ratios:
        lines.append(
            "same- / cross-concept drop of p(c): "
            + ", ".join(
                f"k={k}: {v['same_drop']:.2f}/{v['cross_drop']:.2f} (ratio "
                + (
                    "undefined: no cross-concept drop"
                    if v["ratio"] is None
                    else f"{v['ratio']:.2f}x"
                )
                + ")"
                for k, v in ratios.items()
            )
        )
    for check in target_checks(summary):
        lines.append(
            f"target {'met' if check['met'] else 'NOT met'}: {check['name']} = {check['shown']} "
            f"({check['target']})"
        )
    lines.append(f"time: {summary['seconds']['total']:.0f} s")
    return "\n".join(lines)


def where_translation(knockout: pd.DataFrame, shares: pd.DataFrame) -> dict[str, Any]:
    """The knockout's and the contextual lens's headline numbers (empty where not run).

    ``knockout``: per flow, the window whose cut keeps the least p(c) (mean over images of
    p_cut / p_clean) and what the random control keeps there. ``contextual_lens``: per lens, the
    layer where the most image tokens name c, that share, and the random vectors' share there.
    """
    out: dict[str, Any] = {}
    if len(knockout):
        curve = knockout_curve(knockout)
        flows = {}
        for (source, target), part in curve.groupby(["from_group", "to_group"], sort=False):
            cut = part[part.kind == "knockout"].sort_values("mean").iloc[0]
            ctrl = part[(part.kind == "control") & (part.start == cut.start)]
            flows[f"{source} -> {target}"] = {
                "layers": f"{int(cut.start)}-{int(cut.stop) - 1}",
                "p_kept": round(float(cut["mean"]), 4),
                "p_kept_random_positions": round(float(ctrl["mean"].iloc[0]), 4)
                if len(ctrl)
                else None,
            }
        out["knockout"] = flows
    if len(shares):
        lenses = {}
        for lens, part in shares.groupby("lens", sort=False):
            image = part[part.kind == "image"].sort_values("share", ascending=False).iloc[0]
            rand = part[(part.kind == "random") & (part.layer == image.layer)]
            lenses[lens] = {
                "layer": int(image.layer),
                "share": round(float(image.share), 4),
                "share_random_vectors": round(float(rand.share.iloc[0]), 4) if len(rand) else None,
            }
        out["contextual_lens"] = {"corpus": shares.attrs.get("corpus", ""), "peak": lenses}
    return out
