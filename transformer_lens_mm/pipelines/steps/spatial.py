"""Spatial and category selectivity: IoU of each image's top units' patch regions with the
mask of the object ``c`` names, against random same-layer units (the paper's Figure 5, sec.
3.2), and the supplement's category selectivity (S.4, Figure S.2).

Example:
    >>> from transformer_lens_mm.pipelines.steps import STEPS
    >>> STEPS["spatial"].needs, STEPS["category_selectivity"].needs
    (('masks',), ('categories',))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.paper import REGION_QUANTILE, TOP_K
from transformer_lens_mm.data.datasets import Item
from transformer_lens_mm.data.natural_scenes import BACKGROUND_REGIONS
from transformer_lens_mm.pipelines.experiments import category_selectivity, spatial_iou_by_category
from transformer_lens_mm.pipelines.search import BatchSearch, SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps.registry import (
    Step,
    StepContext,
    insert_index,
    register_step,
    require_usable,
)

__all__ = ["background_spatial"]


def _spatial(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    require_usable(found)
    config = ctx.config
    table = spatial_iou_by_category(
        ctx.model,
        ctx.items_of(found),
        found.items,
        found.units,
        q=config.quantile,
        n_random=max(config.ablation_random, 1),
        batch_size=config.batch_size,
        seed=seed,
    )
    return {"spatial": insert_index(table, found)}


def background_spatial(
    model: MultimodalModel,
    items: Sequence[Item],
    *,
    k: int = TOP_K,
    q: float = REGION_QUANTILE,
    n_random: int = 1,
    batch_size: int = 8,
    seed: int = 10_000,
    verbose: bool = False,
) -> pd.DataFrame:
    """Spatial selectivity for background concepts: each image's largest background region
    (sky, grass, water, wall, floor: :data:`~transformer_lens_mm.data.natural_scenes.
    BACKGROUND_REGIONS`) is given as the explicit target c (captions name objects, never the
    background), its top units are found by the search step, and their IoU with the region's
    mask is measured against random same-layer units
    (:func:`~transformer_lens_mm.pipelines.experiments.spatial_iou_by_category`).

    Returns:
        ``spatial_iou_by_category``'s table (empty when no image has a background region).

    Example:
        >>> background_spatial(model, NaturalSceneSet(8).items(), k=20)  # doctest: +SKIP
    """
    chosen = []
    for it in items:
        regions = {r: m for r, m in it.masks().items() if r in BACKGROUND_REGIONS and m.any()}
        if regions:
            chosen.append((it, max(regions, key=lambda r: int(regions[r].sum()))))
    if not chosen:
        return pd.DataFrame()
    settings = SearchSettings(k=k, maps=False)
    tables, rows = [], []
    for start in range(0, len(chosen), batch_size):
        chunk = chosen[start : start + batch_size]
        found = search_batch(
            model,
            indices=range(start, start + len(chunk)),
            ids=[it.id for it, _ in chunk],
            images=[it.image() for it, _ in chunk],
            targets=[region for _, region in chunk],
            settings=settings,
        )
        tables.append(found.units)
        rows.append(found.items.assign(noun=[region for _, region in chunk]))
    return spatial_iou_by_category(
        model,
        [it for it, _ in chosen],
        pd.concat(rows, ignore_index=True),
        pd.concat(tables, ignore_index=True),
        q=q,
        n_random=n_random,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )


def _background(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    config = ctx.config
    table = background_spatial(
        ctx.model,
        ctx.items_of(found),
        k=config.k,
        q=config.quantile,
        n_random=max(config.ablation_random, 1),
        batch_size=config.batch_size,
        seed=10_000 + seed,
    )
    return {"background": insert_index(table, found)}


def _selectivity(ctx: StepContext, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Held-out images per class: items of the data set beyond the run's searched items when
    there are any (the paper's held-out images), else the run's own items (in-sample; noted in
    the table's ``held_out`` column)."""
    config, data = ctx.config, ctx.data
    n_run = len(data) if ctx.n_run is None else min(ctx.n_run, len(data))
    pool = range(n_run, len(data)) if n_run < len(data) else range(len(data))
    per_class: dict[str, list] = {}
    for i in pool:
        item = data[i]
        if item.categories and len(per_class.setdefault(item.categories[0], [])) < (
            config.category_selectivity
        ):
            per_class[item.categories[0]].append(item)
    held = [item for items in per_class.values() for item in items]
    table = category_selectivity(
        ctx.model,
        tables["units"],
        tables["items"],
        held,
        batch_size=config.batch_size,
        verbose=ctx.verbose,
    )
    table["held_out"] = n_run < len(data)
    return {"category_selectivity": table}


register_step(
    Step(
        "spatial",
        "IoU of each top unit's 0.95-quantile patch region with the mask of the object c "
        "names, vs random same-layer units",
        order=3,
        on=lambda c: bool(c.spatial),
        tables=("spatial",),
        batch=_spatial,
        needs=("masks",),
        forwards=lambda c, n_layers: 1,
        paper="Figure 5, sec. 3.2",
    )
)
register_step(
    Step(
        "background",
        "IoU of the top units for each image's largest background region (sky, grass, water, "
        "wall, floor; given as c) with its mask, vs random same-layer units",
        on=lambda c: bool(c.background),
        order=18,
        tables=("background",),
        batch=_background,
        needs=("masks",),
        forwards=lambda c, n_layers: 3,
    )
)
register_step(
    Step(
        "category_selectivity",
        "each class's most frequent interpretable units, their mean activation over images "
        "of every class",
        order=4,
        on=lambda c: c.category_selectivity > 0,
        run_tables=("category_selectivity",),
        run=_selectivity,
        needs=("categories",),
        forwards=lambda c, n_layers: 0,
        paper="supplement S.4, Figure S.2",
    )
)
