"""The steps after the search, written once and used by ``tlmm analyze`` and ``tlmm demo``.

Each takes the :class:`~transformer_lens_mm.pipelines.search.BatchSearch` of a batch and
returns a table in the search's schema (``item``, ``index``, ``target`` in front):

* :func:`ablation_step`: p(c) with each image's top-k units zeroed at the image positions vs
  as many random units of the same layers, for every k
  (:func:`~transformer_lens_mm.tools.ablation.ablation_sweep`);
* :func:`ablation_captions_step`: captions regenerated with each image's top-k units zeroed,
  and with k random same-layer units;
* :func:`soft_prompt_step`: the nearest vocabulary tokens of every soft-prompt vector and of
  as many norm-matched random vectors;
* :func:`cross_concept_step`: each image's top-k units zeroed on the image itself and on the
  batch's images of other concepts (p of *their* ``c``), against random same-layer units
  (:func:`~transformer_lens_mm.tools.specificity.cross_concept_ablation`);
* :func:`unit_effect_step`: p(c) with one unit zeroed at the image positions, per (image,
  unit) pair asked for (a unit card's "ablation effect"), against one random same-layer unit;
* :func:`direct_score_step`: the gradient-free (MM_Neurons-style) score next to the paper's:
  each top unit's direct score, each image's top-k by the direct score, and how the two
  rankings agree (:mod:`~transformer_lens_mm.tools.direct`);
* :func:`knockout_step`: p(c) with the position that predicts it cut off from the image
  positions in windows of layers, against random position groups
  (:mod:`~transformer_lens_mm.tools.knockout`);
* :func:`contextual_lens_step`: per layer and lens, whether each image token's nearest tokens
  name ``c`` (:mod:`~transformer_lens_mm.tools.contextual_lens`).

Random draws are seeded by the caller (``tlmm analyze`` by the batch index), so a resumed or
sharded run draws the same units.

Example:
    >>> found = search_batch(model, indices=[0, 1], images=images)  # doctest: +SKIP
    >>> ablation_step(model, found, ks=[0, 25, 100], seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import pandas as pd
import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.paper import SOFT_PROMPT_TOKENS
from transformer_lens_mm.errors import ArgumentError, NoUsableItemError
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.contextual_lens import ContextualIndex, contextual_lens
from transformer_lens_mm.tools.decoding import soft_prompt_table
from transformer_lens_mm.tools.direct import (
    compare_rankings,
    direct_effect,
    direct_effect_weights,
    spearman,
)
from transformer_lens_mm.tools.knockout import knockout_table
from transformer_lens_mm.tools.specificity import concept_of, cross_concept_ablation
from transformer_lens_mm.tools.units import Unit, per_row_masks, random_units_like
from transformer_lens_mm.tools.words import same_word

__all__ = [
    "ablation_captions_step",
    "ablation_step",
    "contextual_lens_step",
    "cross_concept_step",
    "direct_score_step",
    "knockout_step",
    "soft_prompt_step",
    "unit_effect_step",
]


def _require(found: BatchSearch) -> None:
    if not len(found) or found.attribution is None:
        raise NoUsableItemError(
            "the batch has no usable item (every item failed): nothing to ablate"
        )


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
    _require(found)
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
    _require(found)
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
    _require(found)
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
    )
    table = table[table["k"] == 1]
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
    _require(found)
    assert found.attribution is not None and found.base is not None
    if len(seeds) != len(found):
        raise NoUsableItemError(f"got {len(seeds)} seeds for {len(found)} usable items: one each")
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


def soft_prompt_step(
    model: MultimodalModel,
    searches: Sequence[BatchSearch],
    *,
    seed: int = 0,
    k: int = SOFT_PROMPT_TOKENS,
) -> pd.DataFrame:
    """Nearest tokens of the usable items' soft prompts and of as many norm-matched random
    vectors (the paper's soft-prompt decoding and its baseline), over one or more batches.

    Args:
        model: The model the batches were searched on.
        searches: Batches whose items are decoded together (their random baseline is drawn
            from all their soft-prompt norms at once).
        seed: Seed of the random vectors.
        k: Nearest tokens per vector (the paper: 5).

    Returns:
        :func:`~transformer_lens_mm.tools.decoding.soft_prompt_table`'s table, tagged, with
        ``is_target`` (the token is c).
    """
    usable = [s for s in searches if len(s)]
    if not usable:
        raise NoUsableItemError("no usable item in these batches: nothing to decode")
    with torch.no_grad():
        embeds = torch.cat([model.embed_images(s.base).cpu() for s in usable])  # type: ignore[arg-type]
    rows = [row for s in usable for row in s.rows]
    targets = [t for s in usable for t in s.targets]
    table = soft_prompt_table(model, embeds, k=k, seed=seed)
    table["is_target"] = [
        same_word(tok, targets[i].token) for tok, i in zip(table["token"], table["image"])
    ]
    return tag_rows(table, rows)


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
    _require(found)
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


def knockout_step(
    model: MultimodalModel,
    found: BatchSearch,
    *,
    window: int = 5,
    pairs: Sequence[tuple[str, str]] = (("image", "last"),),
    n_controls: int = 1,
    seed: int = 0,
    chunk_size: int = 8,
) -> pd.DataFrame:
    """Attention knockout of each image's flows in windows of ``window`` layers (clipped to the
    model), with ``n_controls`` random same-size position groups; the search's schema in front
    (:func:`~transformer_lens_mm.tools.knockout.knockout_table`'s columns after it)."""
    _require(found)
    n_layers = int(model.cfg.n_layers)
    table = knockout_table(
        model,
        found.inputs,
        [t.token_id for t in found.targets],
        pairs=pairs,
        window=min(window, n_layers),
        stride=min(window, n_layers),
        n_controls=n_controls,
        seed=seed,
        chunk_size=chunk_size,
    )
    attrs = dict(table.attrs)
    out = tag_rows(table.rename(columns={"item": "image"}), found.rows)
    out.attrs.update(attrs)
    return out


def contextual_lens_step(
    model: MultimodalModel, found: BatchSearch, index: ContextualIndex, *, k: int = 5
) -> pd.DataFrame:
    """Per image token, layer, lens and kind (image / random vectors): whether its ``k``
    nearest tokens name ``c`` and its first one (:func:`~transformer_lens_mm.tools.
    contextual_lens.contextual_lens`); the search's schema in front. ``lens_shares`` of it
    gives the per-layer shares."""
    _require(found)
    table = contextual_lens(
        model, found.inputs, index, target_ids=[t.token_id for t in found.targets], k=k
    )
    table["token"] = [tokens[0] for tokens in table.pop("tokens")]
    table = table.drop(columns=["token_ids"])
    table = table.rename(columns={"index": "image_token"})
    return tag_rows(table.rename(columns={"item": "image"}), found.rows)
