"""The gradient-free (MM_Neurons-style) score beside the paper's attribution
(:mod:`~transformer_lens_mm.tools.direct`).

Example:
    >>> direct, units_direct, agreement = direct_score_step(model, found)  # doctest: +SKIP
"""

from __future__ import annotations

import pandas as pd
import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.errors import ArgumentError
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.pipelines.steps.registry import (
    Step,
    StepContext,
    register_step,
    require_usable,
)
from transformer_lens_mm.tools.direct import (
    compare_rankings,
    direct_effect,
    direct_effect_weights,
    spearman,
)

__all__ = ["direct_score_step"]


def direct_score_step(
    model: MultimodalModel, found: BatchSearch
) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """The gradient-free score next to the paper's attribution, for one searched batch.

    One no-grad forward of the attribution's inputs (the same layers and image positions).

    Args:
        model: The model the batch was searched on.
        found: The batch's search (its attribution in top-k mode).

    Returns:
        ``(direct_score, units_direct, agreement)``: the direct score of each row of
        ``found.units`` (same order); each image's top-k entries by the direct score (``rank``,
        ``layer``, ``unit``, ``position``, ``direct_score``, ``activation``); one row per image
        with ``overlap`` and ``unit_overlap`` of the two top-k sets, ``top_same``, and
        ``spearman_top``: the rank correlation of the two scores over the attribution's top-k
        entries.
    """
    require_usable(found)
    attr = found.attribution
    assert attr is not None and attr.best_scores is not None and found.inputs is not None
    k = int(attr.best_scores.shape[1])
    top = attr.top_k(k)
    if "activation" not in top or len(top) != len(found.units):
        raise ArgumentError("the search kept no activations: run it with the default settings")
    coef = direct_effect_weights(model, attr.layers, attr.target_ids).cpu()  # [L, n, d_mlp]
    slot = {layer: i for i, layer in enumerate(attr.layers)}
    c = coef[
        torch.tensor([slot[int(x)] for x in top["layer"]]),
        torch.as_tensor(top["image"].to_numpy()),
        torch.as_tensor(top["unit"].to_numpy()),
    ]
    score = torch.as_tensor(top["activation"].to_numpy()) * c.double()
    direct_score = pd.Series(score.numpy(), index=found.units.index, name="direct_score")
    direct = direct_effect(
        model,
        found.inputs,
        attr.target_ids,
        layers=attr.layers,
        positions=attr.positions,
        top_k=k,
    )
    units_direct = direct.top_k(k).rename(columns={"score": "direct_score"})
    agreement = compare_rankings(attr, direct, k=k).drop(columns=["spearman"])
    agreement["spearman_top"] = [
        spearman(
            torch.as_tensor(top["score"].to_numpy()[top["image"].to_numpy() == i]),
            score[torch.as_tensor(top["image"].to_numpy() == i)],
        )
        if k > 1
        else float("nan")
        for i in range(len(found))
    ]
    return direct_score, tag_rows(units_direct, found.rows), tag_rows(agreement, found.rows)


def _direct(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    """The step's batch work; adds the ``direct_score`` column to the batch's units."""
    direct, units_direct, agreement = direct_score_step(ctx.model, found)
    found.units["direct_score"] = direct
    return {"units_direct": units_direct, "ranking_agreement": agreement}


register_step(
    Step(
        "direct_scores",
        "the gradient-free direct score beside the attribution (units.direct_score), each "
        "image's top-k by it, and how the two rankings agree",
        order=14,
        on=lambda c: bool(c.direct_scores),
        tables=("units_direct", "ranking_agreement"),
        batch=_direct,
        forwards=lambda c, n_layers: 1,
    )
)
