"""Ablation steps: the sweep (the paper's Figure 6, sec. 3.3), captions under ablation, same-
vs cross-concept ablation, and single-unit effects.

Random draws are seeded by the caller (``tlmm analyze``: by the data-set index of the batch's
first item), so a resumed or sharded run draws the same units. The steps of one batch share
their forwards through ``found.ablations``: a forward one step ran (the same image, ``c`` and
set of zeroed units, e.g. each image's unablated reference, or its own top-k in the sweep and
in the cross-concept ablation) is not run again by the next.

Example:
    >>> found = search_batch(model, indices=[0, 1], images=images)  # doctest: +SKIP
    >>> ablation_step(model, found, ks=[0, 25, 100], seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pandas as pd

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.errors import ArgumentError
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.pipelines.steps.registry import (
    Step,
    StepContext,
    register_step,
    require_usable,
)
from transformer_lens_mm.report.cards import card_pairs
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.specificity import (
    concept_of,
    cross_concept_ablation,
    with_breadth,
)
from transformer_lens_mm.tools.units import Unit, per_row_masks, random_units_like
from transformer_lens_mm.tools.words import same_word

__all__ = ["ablation_captions_step", "ablation_step", "cross_concept_step", "unit_effect_step"]


def ablation_step(
    model: MultimodalModel,
    found: BatchSearch,
    *,
    ks: Sequence[int],
    n_random: int = 1,
    seed: int = 0,
    chunk_size: int = 32,
) -> pd.DataFrame:
    """The ablation sweep of one searched batch (top-k by each unit's best position).

    Args:
        model: The model the batch was searched on.
        found: The batch's search (with ``rank_units`` >= ``max(ks)``).
        ks: Numbers of units zeroed (0 is the unablated reference).
        n_random: Random same-layer draws per k.
        seed: Seed of the random draws.
        chunk_size: Rows (image x condition) per no-grad forward.

    Returns:
        :func:`~transformer_lens_mm.tools.ablation.ablation_sweep`'s table, tagged.
    """
    require_usable(found)
    assert found.attribution is not None and found.inputs is not None
    ranked = found.attribution.ranked_units("max", limit=max(ks))
    table = ablation_sweep(
        model,
        found.inputs,
        [t.token_id for t in found.targets],
        ranked,
        ks=ks,
        n_random=n_random,
        seed=seed,
        chunk_size=chunk_size,
        memo=found.ablations,
    )
    return tag_rows(table, found.rows)


def cross_concept_step(
    model: MultimodalModel,
    found: BatchSearch,
    *,
    ks: Sequence[int],
    n_random: int = 1,
    seed: int = 0,
    max_others: int | None = None,
    chunk_size: int = 32,
) -> pd.DataFrame:
    """Same-concept vs cross-concept ablation within one searched batch.

    Each usable image's top-k units (by their best position) are zeroed on the image itself
    and on the batch's images whose concept (the caption's first noun) differs; p of each
    evaluated image's own ``c`` is read. As many random same-layer units are the control.

    Args:
        model: The model the batch was searched on.
        found: The batch's search (with ``rank_units`` >= ``max(ks)``).
        ks: Numbers of units zeroed (0 is the unablated reference).
        n_random: Random same-layer draws per k.
        seed: Seed of the random draws.
        max_others: At most this many other-concept images per source image.
        chunk_size: Rows per no-grad forward.

    Returns:
        :func:`~transformer_lens_mm.tools.specificity.cross_concept_ablation`'s table with the
        evaluated image tagged (``item``, ``index``, ``target``) and the source image's
        ``source_item`` and ``source_target``; :func:`~transformer_lens_mm.tools.specificity.
        specificity_ratio` reads it.
    """
    require_usable(found)
    assert found.attribution is not None and found.inputs is not None
    ks = sorted({0, *map(int, ks)})  # k = 0: the reference each rel_p is taken against
    ranked = found.attribution.ranked_units("max", limit=max(ks))
    concepts = [concept_of(t) for t in found.targets]
    table = cross_concept_ablation(
        model,
        found.inputs,
        [t.token_id for t in found.targets],
        concepts,
        ranked,
        ks=ks,
        n_random=n_random,
        seed=seed,
        max_others=max_others,
        chunk_size=chunk_size,
        memo=found.ablations,
    )
    source = table.pop("source").tolist()
    table = tag_rows(table, found.rows)
    table.insert(3, "source_item", [found.rows[i][0] for i in source])
    table.insert(4, "source_target", [found.rows[i][2] for i in source])
    return table


def unit_effect_step(
    model: MultimodalModel,
    found: BatchSearch,
    units: Mapping[Hashable, Sequence[Unit]],
    *,
    seed: int = 0,
    chunk_size: int = 32,
) -> pd.DataFrame:
    """The effect of zeroing single units: for each usable image and each unit of
    ``units[item]``, p of the image's ``c`` with that one unit zeroed at every image position,
    relative to the unablated p, and the same for one random unit of the same layer.

    Args:
        model: The model the batch was searched on.
        found: The batch's search.
        units: Item -> the units to test on it (items of other batches are ignored).
        seed: Seed of the random units.
        chunk_size: Rows per no-grad forward.

    Returns:
        One row per (image, unit, kind): ``item``, ``index``, ``target``, ``layer``, ``unit``,
        ``kind`` (``top``: the unit itself, ``random``), ``p_c``, ``rel_p``.
    """
    require_usable(found, attributed=False)
    assert found.inputs is not None
    pairs = [
        (j, (int(layer), int(unit)))
        for j, (item, _, _) in enumerate(found.rows)
        for layer, unit in units.get(item, ())
    ]
    if not pairs:
        return pd.DataFrame()
    rows = [j for j, _ in pairs]
    table = ablation_sweep(
        model,
        found.inputs.select(rows),
        [found.targets[j].token_id for j in rows],
        [[u] for _, u in pairs],
        ks=[0, 1],
        n_random=1,
        seed=seed,
        chunk_size=chunk_size,
        image_ids=rows,
        memo=found.ablations,
    )
    table = table[table["k"] == 1].reset_index(drop=True)
    pair = table.pop("image").to_numpy()
    table.insert(0, "layer", [pairs[i][1][0] for i in pair])
    table.insert(1, "unit", [pairs[i][1][1] for i in pair])
    table.insert(0, "image", [pairs[i][0] for i in pair])
    table = tag_rows(table, found.rows)
    return table[["item", "index", "target", "layer", "unit", "kind", "p_c", "rel_p"]]


def ablation_captions_step(
    model: MultimodalModel,
    found: BatchSearch,
    *,
    k: int,
    seeds: Sequence[int],
    max_new_tokens: int = 20,
    only: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Captions regenerated with each image's top-k units zeroed at the image positions, and
    with k random units of the same layers (one seed per usable item).

    Args:
        model: The model the batch was searched on.
        found: The batch's search (with ``rank_units`` >= ``k``).
        k: Units zeroed.
        seeds: Seed of each usable item's random draw.
        max_new_tokens: Caption length limit.
        only: Usable items (batch rows) to regenerate (default all).

    Returns:
        One row per (item, kind): ``kind`` (``none``: the original caption, ``top``,
        ``random``), ``k``, ``caption``, ``keeps_target`` (the caption still names c).
    """
    require_usable(found)
    assert found.attribution is not None and found.base is not None
    if len(seeds) != len(found):
        raise ArgumentError(f"got {len(seeds)} seeds for {len(found)} usable items: one each")
    chosen = list(range(len(found))) if only is None else [int(i) for i in only]
    top_all = found.attribution.ranked_units("max", limit=k)
    top = [top_all[i] for i in chosen]
    rnd = [random_units_like(model, top_all[i], seed=int(seeds[i])) for i in chosen]
    base = found.base if only is None else found.base.select(chosen)
    out = [(i, "none", 0, found.captions[i]) for i in chosen]
    for kind, units in (("top", top), ("random", rnd)):
        caps = captions_under_ablation(
            model, None, per_row_masks(model, units), batch=base, max_new_tokens=max_new_tokens
        )
        out += [(i, kind, k, text) for i, text in zip(chosen, caps.texts)]
    table = pd.DataFrame(out, columns=["image", "kind", "k", "caption"])
    table = tag_rows(table.sort_values(["image"], kind="stable").reset_index(drop=True), found.rows)
    table["keeps_target"] = [
        any(same_word(w, t) for w in cap.replace(".", " ").split())
        for cap, t in zip(table["caption"], table["target"])
    ]
    return table


def _cross_random(config: Any) -> int:
    """Random draws per k of the cross-concept control (default: the sweep's, at least 1)."""
    given = config.cross_concept_random
    return max(config.ablation_random, 1) if given is None else int(given)


def _first_items(found: BatchSearch, n: int | None) -> list[int]:
    """The batch rows among the run's first ``n`` items (by data-set index; ``None``: all)."""
    return [j for j, (_, index, _) in enumerate(found.rows) if n is None or index < n]


def _ablation_captions(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    """Captions under ablation of the batch's items among the run's first
    ``ablation_captions_n`` (all by default); item ``j`` of the batch draws ``seed + j``."""
    only = _first_items(found, ctx.config.ablation_captions_n)
    if not only:
        return {"ablation_captions": pd.DataFrame()}
    table = ablation_captions_step(
        ctx.model,
        found,
        k=ctx.config.ablation_captions_k,
        seeds=[seed + i for i in range(len(found))],
        max_new_tokens=ctx.config.max_new_tokens,
        only=only,
    )
    return {"ablation_captions": table}


def _card_effects(
    ctx: StepContext, found: BatchSearch, seed: int, tables: Mapping[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Single-unit effects of the report's card units (chosen over the whole run, with each
    unit's breadth from the controls) on the images whose top units hold them."""
    if "card_pairs" not in ctx.state:
        units, generic = tables["units"], tables.get("generic_units")
        if generic is not None and len(generic) and len(units):
            units = with_breadth(units, generic)
        ctx.state["card_pairs"] = card_pairs(units, ctx.config.card_effects)
    return {
        "card_effects": unit_effect_step(
            ctx.model,
            found,
            ctx.state["card_pairs"],
            seed=seed,
            chunk_size=ctx.config.ablation_chunk,
        )
    }


def _top_units(found: BatchSearch, n: int) -> dict[Hashable, list[Unit]]:
    """Each usable item's ``n`` best distinct units (by their best score over the positions)."""
    assert found.attribution is not None
    ranked = found.attribution.ranked_units("max", limit=n)
    return {found.rows[j][0]: [tuple(map(int, u)) for u in ranked[j]] for j in range(len(found))}  # type: ignore[misc]


register_step(
    Step(
        "ablation",
        "p(c) with each image's top-k units zeroed at the image positions vs k random units "
        "of the same layers, for every k",
        order=5,
        on=lambda c: bool(c.ablation_ks),
        tables=("ablation",),
        batch=lambda ctx, found, seed: {
            "ablation": ablation_step(
                ctx.model,
                found,
                ks=ctx.config.ablation_ks,
                n_random=ctx.config.ablation_random,
                seed=seed,
                chunk_size=ctx.config.ablation_chunk,
            )
        },
        forwards=lambda c, n_layers: (
            1 + sum(k > 0 for k in c.ablation_ks) * (1 + c.ablation_random)
        ),
        paper="Figure 6, sec. 3.3",
    )
)
register_step(
    Step(
        "ablation_captions",
        "captions regenerated with each image's top-k units zeroed, and with k random units",
        order=6,
        on=lambda c: c.ablation_captions_k > 0,
        tables=("ablation_captions",),
        batch=_ablation_captions,
        forwards=lambda c, n_layers: 2 * c.max_new_tokens,  # an upper bound with _n
        paper="Figure 6 (captions), sec. 3.3",
    )
)
register_step(
    Step(
        "cross_concept",
        "each image's top-k units zeroed on the batch's images of other concepts vs random "
        "units (is a unit specific to its concept?)",
        order=11,
        on=lambda c: bool(c.cross_concept_ks),
        tables=("cross_concept",),
        batch=lambda ctx, found, seed: {
            "cross_concept": cross_concept_step(
                ctx.model,
                found,
                ks=ctx.config.cross_concept_ks,
                n_random=_cross_random(ctx.config),
                seed=seed,
                max_others=ctx.config.cross_concept_others,
                chunk_size=ctx.config.ablation_chunk,
            )
        },
        forwards=lambda c, n_layers: (
            len(c.cross_concept_ks)
            * (1 + _cross_random(c))
            * min(max(c.batch_size - 1, 1), c.cross_concept_others or c.batch_size)
        ),
    )
)
register_step(
    Step(
        "unit_effects",
        "p(c) with one of each image's best units zeroed (one at a time) vs one random unit "
        "of the same layer",
        order=12,
        on=lambda c: c.unit_effects > 0,
        tables=("unit_effects",),
        batch=lambda ctx, found, seed: {
            "unit_effects": unit_effect_step(
                ctx.model,
                found,
                _top_units(found, ctx.config.unit_effects),
                seed=seed,
                chunk_size=ctx.config.ablation_chunk,
            )
        },
        forwards=lambda c, n_layers: 1 + 2 * c.unit_effects,
    )
)
register_step(
    Step(
        "card_effects",
        "p(c) with one of the report's card units zeroed (chosen over the whole run; one at a "
        "time, on each image whose top units hold it) vs one random unit of the same layer "
        "(passes: an upper bound, every card unit on every image)",
        order=12,
        on=lambda c: c.card_effects > 0,
        tables=("card_effects",),
        revisit=_card_effects,
        # an upper bound: the reference and, per card unit among the image's top units, the
        # unit and one random unit
        forwards=lambda c, n_layers: 1 + 2 * (c.card_effects + 2 * max(1, c.card_effects // 3)),
    )
)
