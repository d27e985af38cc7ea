"""``report.html`` of a dataset run: summary, items, layers, unit cards, and every experiment.

Example:
    >>> iou = spatial_iou_by_category(model, data, items, units)  # doctest: +SKIP
    >>> analysis_report("runs/coco-gptj", data, iou=iou)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from transformer_lens_mm.data.datasets import Item
from transformer_lens_mm.pipelines.analyze.store import load_results, load_table
from transformer_lens_mm.pipelines.experiments import (
    ablation_caption_summary,
    paper_comparison_table,
    soft_prompt_summary,
)
from transformer_lens_mm.report.cards import unit_cards
from transformer_lens_mm.report.html import Report
from transformer_lens_mm.report.plotting import (
    plot_ablation_curves,
    plot_category_selectivity,
    plot_cross_concept,
    plot_iou_by_category,
    plot_knockout,
    plot_lens_by_layer,
    plot_lens_shares,
    plot_soft_prompts,
    plot_top_units_per_layer,
)
from transformer_lens_mm.tools.ablation import ablation_curve
from transformer_lens_mm.tools.knockout import knockout_curve
from transformer_lens_mm.tools.specificity import specificity_ratio

__all__ = ["analysis_report", "paper_comparison"]


def _made_table(out: Path, name: str) -> pd.DataFrame | None:
    """A run's optional table when the run made it and it has rows, else ``None``."""
    if not (out / f"{name}.parquet").is_file():
        return None
    table = load_table(out, name)
    return table if len(table) else None


def paper_comparison(out: str | Path) -> pd.DataFrame:
    """The paper's reported results beside this run's (see
    :func:`~transformer_lens_mm.pipelines.experiments.paper_comparison_table`), from the run
    folder's tables.

    Example:
        >>> paper_comparison("runs/coco-gptj")  # doctest: +SKIP
    """
    out = Path(out)
    return _comparison(out, load_results(out)[1])


def _comparison(out: Path, units: pd.DataFrame) -> pd.DataFrame:
    names = ("decoding_scores", "soft_prompt_scores", "soft_prompt_ks", "spatial", "ablation")
    tables = {name: table for name in names if (table := _made_table(out, name)) is not None}
    return paper_comparison_table(units, tables)


def analysis_report(
    out: str | Path,
    data: Sequence[Item] | None = None,
    *,
    iou: pd.DataFrame | None = None,
    selectivity: pd.DataFrame | None = None,
    text_scores: dict[str, pd.DataFrame] | None = None,
    n_cards: int = 12,
    grid_size: tuple[int, int] | None = None,
) -> Path:
    """Write ``out/report.html`` for a finished run: summary, captions and failures, the layer
    distribution, the most frequent units (cards with their stored patch maps over the images
    where they score highest, when ``data`` is given), the ablation curves and the soft-prompt
    comparison when the run made them, and the IoU-by-category, category-selectivity and
    decodings-vs-captions sections when their tables are given.

    Args:
        out: The run's folder.
        data: The run's data set (images for the unit cards).
        iou: :func:`~transformer_lens_mm.pipelines.experiments.spatial_iou_by_category`'s table.
        selectivity: :func:`~transformer_lens_mm.pipelines.experiments.category_selectivity`'s
            table.
        text_scores: ``{label: score_texts(...) table}``, e.g. best unit decodings, soft
            prompts and random vectors.
        n_cards: Unit cards shown.
        grid_size: Patch grid of the maps (default: square).

    Example:
        >>> analysis_report("runs/coco-gptj", data)  # doctest: +SKIP
        PosixPath('runs/coco-gptj/report.html')
    """
    out = Path(out)
    items, units, maps = load_results(out)
    summary = json.loads((out / "summary.json").read_text())
    report = Report(f"Multimodal-neuron analysis: {out.name}")
    skip = ("failures", "controls", "step_seconds", "steps_skipped", "steps_failed")
    report.key_values({k: v for k, v in summary.items() if k not in skip})
    if summary.get("steps_skipped"):
        report.key_values({f"skipped: {k}": v for k, v in summary["steps_skipped"].items()})
    if summary.get("steps_failed"):
        report.key_values({f"failed: {k}": v for k, v in summary["steps_failed"].items()})
    comparison = _comparison(out, units)  # the units already read above
    if len(comparison):
        report.section(
            "The paper vs this run",
            "Each result the paper reports (GPT-J-6B + LiMBeR-BEiT on COCO val2017, arXiv "
            "2308.01544v2; where in the paper) beside the same quantity measured by this run.",
        )
        report.table(comparison)
    report.section("Items", "Caption, target token c (first noun) and failure of every item.")
    report.table(items, max_rows=100, collapsed="Items")
    if len(units):
        report.section("Top units by layer", "All images' top-k entries pooled.")
        report.figure(plot_top_units_per_layer(units))
        share = float(units["interpretable"].mean()) if "interpretable" in units else float("nan")
        report.key_values({"entries": len(units), "interpretable share": f"{share:.1%}"})
        # a gated unit that writes with both signs is two rows (one decoding per sign); the
        # sign itself depends on the weights' orientation and is not shown
        key = ["layer", "unit"] + (["sign"] if "sign" in units else [])
        freq = (
            units.assign(tokens=units["tokens"].map(lambda t: " ".join(map(repr, t))))
            .groupby(key)
            .agg(images=("item", "nunique"), score=("score", "sum"), tokens=("tokens", "first"))
            .reset_index()
            .sort_values(["images", "score", "tokens"], ascending=[False, False, True])
            .drop(columns=["sign"], errors="ignore")
        )
        report.table(freq, max_rows=30, collapsed="Units by the number of images")
        by_id = {data[i].id: data[i] for i in range(len(data))} if data is not None else {}

        @functools.cache  # an image shown on several cards is read once
        def image_of(item):
            return by_id[item].image() if item in by_id else None

        report.section("Most frequent units")
        report.cards(
            unit_cards(
                units,
                maps if maps.ndim == 2 and maps.shape[0] == len(units) else None,
                image_of=image_of,
                grid_size=grid_size,
                n_cards=n_cards,
            )
        )
    if text_scores is None:
        text_scores = {
            label: table
            for label, name in (("best unit decodings", "decoding_scores"),
                                ("soft prompts", "soft_prompt_scores"))
            if (table := _made_table(out, name)) is not None
        }  # fmt: skip
    if text_scores:
        report.section(
            "Decodings vs captions (Table 1, sec. 2.2; Table 2, sec. 3.1)",
            "BERTScore against the image's captions and CLIPScore against the image, vs random "
            "re-pairings of images and decodings (soft prompts: vs random vectors; KS test).",
        )
        rows = {}
        for label, table in text_scores.items():
            numbers = table.drop(columns=["item", "text", "caption", "patch"], errors="ignore")
            if "kind" in numbers:  # soft prompts: the image's vectors vs random vectors
                for kind, part in numbers.groupby("kind"):
                    rows[f"{label} ({kind})"] = part.mean(numeric_only=True)
            else:
                rows[label] = numbers.mean(numeric_only=True)
        report.table(pd.DataFrame(rows).T.round(4).reset_index(names="texts"))
        ks = _made_table(out, "soft_prompt_ks")
        if ks is not None:
            report.table(ks.round(4))
    soft = _made_table(out, "soft_prompts")
    if soft is not None:
        report.section(
            "Soft prompts (Table 2, sec. 3.1)",
            "Nearest vocabulary tokens (cosine) of every soft-prompt vector vs as many random "
            "vectors with the same norms.",
        )
        report.figure(plot_soft_prompts(soft))
        report.table(soft_prompt_summary(soft).round(4))
    iou = iou if iou is not None else _made_table(out, "spatial")
    selectivity = (
        selectivity if selectivity is not None else _made_table(out, "category_selectivity")
    )
    if iou is not None and len(iou):
        report.section(
            "Spatial selectivity by category (Figure 5, sec. 3.2)",
            "IoU of each top unit's 0.95-quantile region with the mask of c's object, vs random "
            "same-layer units.",
        )
        report.figure(plot_iou_by_category(iou))
        report.table(iou.groupby(["category", "kind"])["iou"].agg(["mean", "count"]).reset_index())
    if selectivity is not None and len(selectivity):
        report.section("Category selectivity (supplement S.4)")
        report.figure(plot_category_selectivity(selectivity))
    sweep = _made_table(out, "ablation")
    if sweep is not None:
        report.section(
            "Ablation (Figure 6, sec. 3.3)",
            "p(c) kept (over the unablated p(c)) when each image's top-k units are zeroed at "
            "the image positions, vs k random units of the same layers; 95% intervals over "
            "images.",
        )
        report.figure(plot_ablation_curves(sweep, by="item"))
        report.table(ablation_curve(sweep, by="item").round(4))
    caps = _made_table(out, "ablation_captions")
    if caps is not None:
        report.section(
            "Captions under ablation (Figure 6, sec. 3.3)",
            f"Greedy captions with each image's top-{int(caps['k'].max())} units zeroed at "
            "the image positions, vs as many random units of the same layers.",
        )
        report.table(ablation_caption_summary(caps).round(4))
        report.table(caps.drop(columns=["index"]), max_rows=30)
    generic = _made_table(out, "generic_units")
    cross = _made_table(out, "cross_concept")
    if generic is not None:
        report.section(
            "Generic vs concept-specific units",
            "A unit among the top units of images of more than the configured share of the "
            "concepts (the captions' first nouns) is generic; per concept, units ranked by how "
            "much more often they are top for it than for the other concepts.",
        )
        numbers = summary.get("controls", {}).get("generic", {})
        if numbers:
            report.key_values(
                {
                    "generic units": f"{numbers['n_generic_units']} of {numbers['n_units']}",
                    "share of top entries from generic units": numbers[
                        "share_of_top_entries_generic"
                    ],
                    "most widespread": ", ".join(numbers["most_widespread"]),
                }
            )
        report.table(generic, max_rows=50, collapsed="Units by spread over concepts")
        spec = _made_table(out, "concept_specificity")
        if spec is not None:
            report.table(spec[spec["rank"] < 3], max_rows=150, collapsed="Most specific units")
    if cross is not None:
        report.section(
            "Same- vs cross-concept ablation",
            "Each image's top-k units zeroed on the image itself and on the batch's images of "
            "other concepts (p of their own c), vs random same-layer units.",
        )
        report.figure(plot_cross_concept(cross))
        report.table(specificity_ratio(cross).round(4))
    for name, which in (
        ("unit_effects", "one of each image's best units"),
        ("card_effects", "one of the card units (on each image whose top units hold it)"),
    ):
        effects = _made_table(out, name)
        if effects is None or not len(effects):
            continue
        report.section(
            "Single-unit effects" + (" of the card units" if name == "card_effects" else ""),
            f"p(c) kept when {which} is zeroed at the image positions, vs one random unit of "
            "the same layer.",
        )
        report.table(
            effects.groupby("kind")["rel_p"].agg(["mean", "median", "count"]).round(4).reset_index()
        )
    ranks = _made_table(out, "target_ranks")
    if ranks is not None:
        report.section(
            "Where c ranks in the top units' decodings",
            "Percentile of c among each top unit's decoded tokens (100: first), vs random units "
            "of the same layers.",
        )
        report.table(
            ranks.groupby("kind")["target_percentile"]
            .agg(["mean", "median", "count"])
            .round(2)
            .reset_index()
        )
    shares = _made_table(out, "lens_shares")
    lens = _made_table(out, "logit_lens")
    if lens is not None or shares is not None:
        report.section(
            "Where c appears, layer by layer",
            "The logit lens of c at the position that predicts it (median probability of c "
            "after every block over images), and the share of image tokens whose 5 "
            "nearest tokens name c by the contextual, logit and embedding lenses, vs random "
            "vectors matched to the image tokens.",
        )
        if lens is not None:
            report.figure(plot_lens_by_layer(lens))
        if shares is not None:
            report.figure(plot_lens_shares(shares))
    knockout = _made_table(out, "knockout")
    if knockout is not None:
        report.section(
            "Attention knockout",
            "p(c) when the position that predicts c may not attend to the image positions in a "
            "window of layers, over p(c) without the cut (1 = no effect), vs the same cut from "
            "as many random positions.",
        )
        report.figure(plot_knockout(knockout))
        report.table(knockout_curve(knockout).round(4))
    return report.write(out / "report.html")
