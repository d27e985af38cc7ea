"""Decodings and soft prompts scored against captions and images: the paper's Table 1 (each
image's best unit decoding vs its captions, BERTScore, and vs its image, CLIPScore, against a
random re-pairing of images and units, sec. 2.2) and Table 2 (soft prompts' nearest tokens vs
random vectors, with the KS test, sec. 3.1).

A per-run step: the metric models load once (``bert_model``, ``clip_model``: a hub name or a
local folder; :mod:`~transformer_lens_mm.tools.metrics`).

Example:
    >>> from transformer_lens_mm.pipelines.steps import STEPS
    >>> STEPS["text_scores"].run_tables
    ('decoding_scores', 'soft_prompt_scores', 'soft_prompt_ks')
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from transformer_lens_mm.pipelines.experiments import (
    soft_prompt_ks,
    soft_prompt_scores,
    unit_decoding_scores,
)
from transformer_lens_mm.pipelines.steps.registry import Step, StepContext, register_step

__all__: list[str] = []


def _scorers(ctx: StepContext) -> tuple:
    from transformer_lens_mm.tools.metrics import bert_scorer, clip_scorer

    config = ctx.config
    if "scorers" not in ctx.state:
        bert = bert_scorer(config.bert_model) if config.bert_model else None
        clip = clip_scorer(config.clip_model) if config.clip_model else None
        ctx.state["scorers"] = (bert, clip)
    return ctx.state["scorers"]


def _text_scores(ctx: StepContext, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    bert, clip = _scorers(ctx)
    out = {
        "decoding_scores": unit_decoding_scores(
            tables["units"], ctx.data, bert=bert, clip=clip, items=tables["items"]
        )
    }
    soft = tables.get("soft_prompts")
    if soft is not None and len(soft):
        scores = soft_prompt_scores(soft, ctx.data, bert=bert, clip=clip, items=tables["items"])
        out["soft_prompt_scores"] = scores
        metrics = [m for m, on in (("clipscore", clip), ("bertscore", bert)) if on is not None]
        out["soft_prompt_ks"] = pd.DataFrame(
            [{"metric": m, **soft_prompt_ks(scores, metric=m)} for m in metrics]
        )
    return out


register_step(
    Step(
        "text_scores",
        "each image's best unit decoding and its soft prompts scored against its captions "
        "(BERTScore) and image (CLIPScore), vs random re-pairings / random vectors (KS test)",
        order=1,
        on=lambda c: bool(c.bert_model or c.clip_model),
        run_tables=("decoding_scores", "soft_prompt_scores", "soft_prompt_ks"),
        run=_text_scores,
        paper="Table 1, sec. 2.2; Table 2, sec. 3.1",
    )
)
