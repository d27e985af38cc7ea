"""Controls that tell concept-specific units from generic ones (beyond the paper).

The paper's control (as many random units from the same layers) cannot tell a unit that writes
*this image's concept* from a generic "read the image tokens" unit: zeroing either lowers p(c).
These can:

* :func:`generic_units`: a unit among the top-k of images of most concepts is *generic*;
  flagged and reported apart.
* :func:`concept_specificity`: per concept, units ranked by how much more often they are top
  for that concept's images than for other concepts' images.
* :func:`cross_concept_ablation`: zero image A's top-k units and measure ``p(c_A)`` on A
  (same concept) and ``p(c_B)`` on images B of other concepts (cross concept), each against as
  many random same-layer units; :func:`specificity_ratio` per k: the same-concept drop over the
  cross-concept drop. A concept-specific mechanism gives a ratio far above 1; generic image
  machinery gives about 1.

The two table functions read a units table in the search's schema (``item``, ``target``,
``layer``, ``unit``, ...: ``tlmm analyze``'s ``units.parquet``, ``find_multimodal_neurons``,
``tlmm demo``); the concept of an item is its target word unless ``concepts=`` says otherwise.

Example:
    >>> units = pd.DataFrame({"item": [0, 0, 1, 1, 2], "target": ["dog", "dog", "cat", "cat",
    ...     "sun"], "layer": [0, 0, 0, 1, 0], "unit": [3, 7, 3, 9, 3]})
    >>> generic_units(units, min_share=0.6)[["layer", "unit", "n_concepts", "generic"]]
       layer  unit  n_concepts  generic
    0      0     3           3     True
    1      0     7           1    False
    2      1     9           1    False
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, TableError
from transformer_lens_mm.tools.ablation import ablation_sweep
from transformer_lens_mm.tools.units import Unit

__all__ = [
    "concept_of",
    "concept_specificity",
    "cross_concept_ablation",
    "generic_units",
    "selectivity_by_class",
    "specificity_ratio",
    "with_breadth",
]


def concept_of(target: Any) -> str:
    """An item's concept: its target's word (else its token), stripped and lower-cased.

    Example:
        >>> from types import SimpleNamespace
        >>> concept_of(SimpleNamespace(word=None, token=" Dog"))
        'dog'
    """
    return str(target.word or target.token).strip().lower()


def _with_concepts(
    units: pd.DataFrame, concepts: Mapping[Hashable, str] | None, item_col: str
) -> pd.DataFrame:
    table = units.copy()
    if concepts is not None:
        table["concept"] = table[item_col].map(concepts)
    elif "target" in table:
        table["concept"] = table["target"].astype(str).str.strip().str.lower()
    else:
        raise TableError("the units table has no 'target' column: pass concepts={item: concept}")
    if table["concept"].isna().any():
        missing = table.loc[table["concept"].isna(), item_col].unique()[:5].tolist()
        raise ArgumentError(f"no concept for items {missing}: complete the concepts mapping")
    return table


def generic_units(
    units: pd.DataFrame,
    *,
    min_share: float = 0.5,
    concepts: Mapping[Hashable, str] | None = None,
    item_col: str = "item",
) -> pd.DataFrame:
    """Units by the share of concepts whose images have them among their top units.

    Args:
        units: Top units per item (one row per (item, layer, unit, position) entry).
        min_share: A unit is generic when it is top for images of more than this share of the
            concepts (and of at least two concepts).
        concepts: Item -> concept (default: each row's ``target``).
        item_col: The column naming the item.

    Returns:
        One row per ``(layer, unit)``: ``n_items`` (images it is top for), ``n_concepts``,
        ``share`` (of all concepts), ``generic``, ``top_concept_share`` (the share of its images
        that show its most frequent concept) and ``breadth``: ``"generic"``, ``"specific"`` (top
        for at least two images, more than half of them of one concept), ``"broad"`` (the rest of
        the units top for several images) or ``"single image"``; most widespread first.
    """
    if not 0 < min_share < 1:
        raise ArgumentError(f"min_share must be in (0, 1), got {min_share}")
    table = _with_concepts(units, concepts, item_col)
    n_concepts = table["concept"].nunique()
    per_unit = (
        table.drop_duplicates([item_col, "layer", "unit"])
        .groupby(["layer", "unit"])
        .agg(n_items=(item_col, "nunique"), n_concepts=("concept", "nunique"))
        .reset_index()
    )
    per_unit["share"] = per_unit["n_concepts"] / max(n_concepts, 1)
    per_unit["generic"] = (per_unit["share"] > min_share) & (per_unit["n_concepts"] >= 2)
    most = (
        table.drop_duplicates([item_col, "layer", "unit"])
        .groupby(["layer", "unit", "concept"])[item_col]
        .nunique()
        .groupby(["layer", "unit"])
        .max()
        .rename("_most")
    )
    per_unit = per_unit.join(most, on=["layer", "unit"])
    per_unit["top_concept_share"] = per_unit.pop("_most") / per_unit["n_items"]
    per_unit["breadth"] = np.select(
        [
            per_unit["generic"],
            (per_unit["n_items"] >= 2) & (per_unit["top_concept_share"] > 0.5),
            per_unit["n_items"] >= 2,
        ],
        ["generic", "specific", "broad"],
        default="single image",
    )
    return per_unit.sort_values(
        ["n_concepts", "n_items", "layer", "unit"], ascending=[False, False, True, True]
    ).reset_index(drop=True)


def with_breadth(units: pd.DataFrame, generic: pd.DataFrame) -> pd.DataFrame:
    """``units`` with each row's unit's ``generic`` and ``breadth`` from :func:`generic_units`'s
    table (``generic``), e.g. to pick a report's concept-specific cards.

    Example:
        >>> units = pd.DataFrame({"item": ["a", "b"], "layer": [0, 0], "unit": [1, 1],
        ...                       "target": [" dog", " cat"]})
        >>> with_breadth(units, generic_units(units))["breadth"].tolist()
        ['generic', 'generic']
    """
    per_unit = generic.set_index(["layer", "unit"])
    key = list(zip(units.layer, units.unit))
    return units.assign(
        generic=per_unit["generic"].reindex(key).to_numpy(dtype=bool),
        breadth=per_unit["breadth"].reindex(key).to_numpy(),
    )


def concept_specificity(
    units: pd.DataFrame,
    *,
    concepts: Mapping[Hashable, str] | None = None,
    item_col: str = "item",
    smoothing: float = 1.0,
) -> pd.DataFrame:
    """Per concept, its units ranked by specificity.

    ``rate_in`` is the share of the concept's images that have the unit among their top units,
    ``rate_out`` the same share over the other concepts' images; ``specificity`` is
    ``(hits_in + s) / (n_in + 2s)`` over ``(hits_out + s) / (n_out + 2s)`` (``s``: ``smoothing``,
    so a unit seen only in one concept is finite). A concept with no images of its own is
    reported with ``n_in = 0`` and NaN rates, never divided by.

    Returns:
        Columns ``concept, layer, unit, n_in, hits_in, rate_in, n_out, hits_out, rate_out,
        specificity, rank`` (rank 0: the most specific unit of that concept).
    """
    table = _with_concepts(units, concepts, item_col)
    items = table.drop_duplicates(item_col)[[item_col, "concept"]]
    n_per = items.groupby("concept")[item_col].nunique()
    n_total = int(items[item_col].nunique())
    hits = (
        table.drop_duplicates([item_col, "layer", "unit"])
        .groupby(["concept", "layer", "unit"])[item_col]
        .nunique()
        .rename("hits_in")
        .reset_index()
    )
    total = hits.groupby(["layer", "unit"])["hits_in"].sum().rename("hits_all")
    hits = hits.join(total, on=["layer", "unit"])
    hits["n_in"] = hits["concept"].map(n_per).astype(int)
    hits["n_out"] = n_total - hits["n_in"]
    hits["hits_out"] = hits["hits_all"] - hits["hits_in"]
    with np.errstate(invalid="ignore", divide="ignore"):
        hits["rate_in"] = np.where(hits["n_in"] > 0, hits["hits_in"] / hits["n_in"], np.nan)
        hits["rate_out"] = np.where(hits["n_out"] > 0, hits["hits_out"] / hits["n_out"], np.nan)
    s = float(smoothing)
    hits["specificity"] = ((hits["hits_in"] + s) / (hits["n_in"] + 2 * s)) / (
        (hits["hits_out"] + s) / (hits["n_out"] + 2 * s)
    )
    hits = hits.sort_values(["concept", "specificity", "hits_in"], ascending=[True, False, False])
    hits["rank"] = hits.groupby("concept").cumcount()
    cols = ["concept", "layer", "unit", "n_in", "hits_in", "rate_in", "n_out", "hits_out",
            "rate_out", "specificity", "rank"]  # fmt: skip
    return hits[cols].reset_index(drop=True)


def cross_concept_ablation(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Sequence[int] | Int[Tensor, " batch"],
    concepts: Sequence[str],
    ranked_units: Sequence[Sequence[Unit]],
    *,
    ks: Sequence[int] = (0, 25, 100, 400),
    n_random: int = 1,
    seed: int = 0,
    max_others: int | None = None,
    chunk_size: int = 32,
    memo: MutableMapping[Hashable, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """Zero each image's top-k units on itself and on images of other concepts.

    Every evaluated image's unablated forward runs once (not once per source image), and with
    ``memo`` the forwards an :func:`~transformer_lens_mm.tools.ablation.ablation_sweep` of the
    same ``batch`` already ran (its top-k on the image itself, its references) are not rerun.

    Args:
        model: A multimodal model.
        batch: The images' input (``c`` of each is predicted at its last position).
        target_ids: ``c`` per image.
        concepts: The concept of each image (images of the same concept are not "other").
        ranked_units: Per image, its units ranked best first (``Attribution.ranked_units``).
        ks: Numbers of units zeroed (0: the reference).
        n_random: Random same-layer draws per k (the control of both conditions).
        seed: Seed of the random draws.
        max_others: At most this many other-concept images per source image (the first ones).
        chunk_size: Rows per forward.
        memo: Forwards already run on ``batch`` (``ablation_sweep``'s ``memo``), read and
            filled.

    Returns:
        One row per (source image, evaluated image, kind, k, draw): ``source``, ``image``,
        ``same`` (evaluated on the source itself), ``kind`` (``top``/``random``), ``k``,
        ``draw``, ``p_c`` (of the evaluated image's own ``c``) and ``rel_p`` (over its
        unablated ``p_c``).
    """
    n = len(batch)
    tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1)
    if not (tids.shape[0] == len(concepts) == len(ranked_units) == n):
        raise ArgumentError(f"need one target, concept and ranked unit list per image ({n} images)")
    pairs: list[tuple[int, int]] = []
    for a in range(n):
        others = [b for b in range(n) if concepts[b] != concepts[a]]
        if max_others is not None:
            others = others[:max_others]
        pairs += [(a, a)] + [(a, b) for b in others]
    rows = [b for _, b in pairs]
    sweep = ablation_sweep(
        model,
        batch.select(rows),
        tids[rows],
        [ranked_units[a] for a, _ in pairs],
        ks=ks,
        n_random=n_random,
        seed=seed,
        chunk_size=chunk_size,
        image_ids=rows,
        memo=memo,
    )
    source = np.array([a for a, _ in pairs])
    evaluated = np.array(rows)
    pair = sweep["image"].to_numpy()
    sweep.insert(0, "source", source[pair])
    sweep["image"] = evaluated[pair]
    sweep.insert(2, "same", sweep["source"] == sweep["image"])
    return sweep.drop(columns=["logit_c", "delta_p", "delta_logit"], errors="ignore")


def specificity_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """Per k: the mean drop of p(c) (``1 - rel_p``) with each image's top-k units zeroed, on
    the image itself (``same_drop``) and on other-concept images (``cross_drop``), the same for
    random units, and ``ratio = same_drop / cross_drop`` (NaN, not infinity, when the
    cross-concept drop is <= 0 or there are no other-concept images; ``n_cross`` says how many
    pairs there were)."""
    out = []
    for k, rows in table.groupby("k"):
        top, rnd = rows[rows["kind"] == "top"], rows[rows["kind"] == "random"]

        def drop(part: pd.DataFrame) -> float:
            return float((1 - part["rel_p"]).mean()) if len(part) else float("nan")

        same, cross = drop(top[top["same"]]), drop(top[~top["same"]])
        out.append(
            {
                "k": int(k),
                "same_drop": same,
                "cross_drop": cross,
                "random_same_drop": drop(rnd[rnd["same"]]),
                "random_cross_drop": drop(rnd[~rnd["same"]]),
                "n_same": int(top["same"].sum()),
                "n_cross": int((~top["same"]).sum()),
                "ratio": same / cross if cross > 0 else float("nan"),
            }
        )
    return pd.DataFrame(out)


def selectivity_by_class(selectivity: pd.DataFrame) -> pd.DataFrame:
    """The paper's Figure S.2(a) matrix: per unit class (rows) the mean activation of its units
    on each image class (columns), divided by the row's maximum (1 = the class its units are
    most active on; a row whose maximum is not positive is left undefined, NaN).

    Example:
        >>> t = pd.DataFrame({"unit_class": ["a", "a", "b", "b"], "image_class": ["a", "b"] * 2,
        ...                   "mean_activation": [2.0, 1.0, 0.5, 1.0]})
        >>> selectivity_by_class(t).values.tolist()
        [[1.0, 0.5], [0.5, 1.0]]
    """
    if selectivity.empty:
        return pd.DataFrame()
    table = selectivity.pivot_table(
        index="unit_class", columns="image_class", values="mean_activation", aggfunc="mean"
    )
    peak = table.max(axis=1)
    return table.div(peak.where(peak > 0), axis=0)
