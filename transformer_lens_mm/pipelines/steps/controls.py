"""The controls that tell concept-specific units from generic ones, and where ``c`` ranks in
the top units' decodings (vs random units of the same layers).

Example:
    >>> from transformer_lens_mm.pipelines.steps import STEPS
    >>> STEPS["controls"].run_tables
    ('generic_units', 'concept_specificity')
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from transformer_lens_mm.pipelines.experiments import decoding_target_ranks
from transformer_lens_mm.pipelines.search import BatchSearch
from transformer_lens_mm.pipelines.steps.registry import (
    Step,
    StepContext,
    insert_index,
    register_step,
)
from transformer_lens_mm.tools.specificity import concept_specificity, generic_units

__all__: list[str] = []


def _controls(ctx: StepContext, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    units = tables["units"]
    if not len(units):
        return {}
    return {
        "generic_units": generic_units(units, min_share=ctx.config.generic_share),
        "concept_specificity": concept_specificity(units),
    }


def _target_ranks(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    if not len(found):
        return {}
    targets = {row[0]: t.token_id for row, t in zip(found.rows, found.targets)}
    table = decoding_target_ranks(ctx.model, found.units, targets, seed=seed)
    return {"target_ranks": insert_index(table, found)}


register_step(
    Step(
        "controls",
        "generic units (top for the images of most concepts) and per-concept specificity",
        order=10,
        on=lambda c: True,
        run_tables=("generic_units", "concept_specificity"),
        run=_controls,
        always=True,
    )
)
register_step(
    Step(
        "target_ranks",
        "where c ranks in the decodings of each image's top units vs random same-layer units",
        order=13,
        on=lambda c: bool(c.target_ranks),
        tables=("target_ranks",),
        batch=_target_ranks,
    )
)
