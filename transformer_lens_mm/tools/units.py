"""MLP units as ``(layer, unit)`` pairs: checking, grouping, random same-layer controls, masks.

The paper's controls compare each image's top units with as many random units drawn from the
same layers; :func:`random_units_like` draws them (seeded), and :func:`per_row_masks` turns a
unit set per batch row into the boolean masks the ablation hooks take.

Example:
    >>> units_of(pd.DataFrame({"item": ["a"] * 3, "rank": [1, 0, 2], "layer": [3, 1, 1],
    ...                        "unit": [7, 5, 5]}), "a")
    [(1, 5), (3, 7)]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import LanguageModel
from transformer_lens_mm.errors import UnitIndexError, UnknownNameError

__all__ = [
    "Unit",
    "as_unit_tensor",
    "group_by_layer",
    "per_row_masks",
    "random_units_like",
    "units_of",
]

#: One MLP unit: ``(layer, index in d_mlp)``.
Unit = tuple[int, int]


def as_unit_tensor(model: LanguageModel, units: Sequence[Unit]) -> Int[Tensor, "n 2"]:
    """``units`` as a ``[n, 2]`` tensor with layers resolved (negative allowed) and checked."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    t = torch.as_tensor(list(units), dtype=torch.long).reshape(-1, 2)
    if len(t):
        if int(t[:, 0].min()) < -n_layers or int(t[:, 0].max()) >= n_layers:
            raise UnitIndexError(f"a layer is out of range for a model with {n_layers} layers")
        if int(t[:, 1].min()) < 0 or int(t[:, 1].max()) >= d_mlp:
            raise UnitIndexError(f"a unit is out of range: layers have d_mlp={d_mlp} units")
        t[:, 0] = t[:, 0] % n_layers
    return t


def group_by_layer(model: LanguageModel, units: Sequence[Unit]) -> dict[int, Tensor]:
    """Per layer, the sorted distinct units of ``units`` on it."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    groups: dict[int, list[int]] = {}
    for layer, unit in units:
        layer = hook_names.resolve_layer(int(layer), n_layers)
        if not 0 <= int(unit) < d_mlp:
            raise UnitIndexError(f"unit {unit} is out of range: layers have d_mlp={d_mlp} units")
        groups.setdefault(layer, []).append(int(unit))
    return {layer: torch.tensor(sorted(set(us)), dtype=torch.long) for layer, us in groups.items()}


def random_like(top: Int[Tensor, "k 2"], n_layers: int, d_mlp: int, seed: int) -> Tensor:
    """Random ``[k, 2]`` (layer, unit) rows with ``top``'s per-layer counts (ascending layers)."""
    gen = torch.Generator().manual_seed(seed)
    counts = (
        torch.bincount(top[:, 0], minlength=n_layers)
        if len(top)
        else torch.zeros(n_layers, dtype=torch.long)
    )
    parts = []
    for layer in torch.nonzero(counts).flatten().tolist():
        pick = torch.randperm(d_mlp, generator=gen)[: int(counts[layer])].sort().values
        parts.append(torch.stack([torch.full_like(pick, layer), pick], 1))
    return torch.cat(parts) if parts else torch.zeros(0, 2, dtype=torch.long)


def random_units_like(model: LanguageModel, units: Sequence[Unit], *, seed: int = 0) -> list[Unit]:
    """As many random units per layer as ``units`` has there (uniform, without replacement).

    The paper's control: the same number of units, from the same layers.
    """
    top = as_unit_tensor(model, units)
    rnd = random_like(top, int(model.cfg.n_layers), int(model.cfg.d_mlp), seed)
    return [(int(layer), int(unit)) for layer, unit in rnd.tolist()]


def per_row_masks(
    model: LanguageModel, units_per_row: Sequence[Sequence[Unit] | Tensor]
) -> dict[int, Bool[Tensor, "rows d_mlp"]]:
    """Per layer, a ``[rows, d_mlp]`` mask of each row's units (for
    :func:`~transformer_lens_mm.tools.ablation.ablation_hooks`: a different unit set per batch
    row); unused layers left out.

    Example:
        >>> masks = per_row_masks(model, [[(0, 3)], [(0, 5), (2, 1)]])  # doctest: +SKIP
        >>> sorted(masks), masks[0].shape  # doctest: +SKIP
        ([0, 2], torch.Size([2, d_mlp]))
    """
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    masks = torch.zeros(n_layers, len(units_per_row), d_mlp, dtype=torch.bool)
    for r, units in enumerate(units_per_row):
        t = units if isinstance(units, Tensor) else as_unit_tensor(model, units)
        masks[t[:, 0], r, t[:, 1]] = True
    used = torch.nonzero(masks.flatten(1).any(1)).flatten().tolist()
    return {layer: masks[layer] for layer in used}


def units_of(
    units: pd.DataFrame, item: Hashable, *, column: str = "item", signed: bool = False
) -> list[Any]:
    """An item's distinct ``(layer, unit)`` pairs from a top-k table, best rank first (a unit
    scored at several positions appears once, at its best).

    Args:
        units: A units table (``rank``, ``layer``, ``unit`` and ``column``).
        item: The item's key.
        column: The key column: ``"item"`` in search and run tables, ``"image"`` (the batch
            row) in a table straight from ``Attribution.top_k``.
        signed: Distinct ``(layer, unit, sign)`` triples instead (the table's ``sign``, ``+1``
            where it has none): a unit that writes with both signs is listed once per sign.

    Example:
        >>> t = pd.DataFrame({"item": ["a"] * 3, "rank": [0, 1, 2], "layer": [1] * 3,
        ...                   "unit": [5, 5, 5], "sign": [1, -1, 1]})
        >>> units_of(t, "a"), units_of(t, "a", signed=True)
        ([(1, 5)], [(1, 5, 1), (1, 5, -1)])
    """
    if column not in units:
        raise UnknownNameError(f"the units table has no {column!r} column: {list(units.columns)}")
    rows = units[units[column] == item].sort_values("rank")
    if not signed:
        return list(dict.fromkeys(zip(rows["layer"].tolist(), rows["unit"].tolist())))
    signs = rows["sign"].astype(int).tolist() if "sign" in rows else [1] * len(rows)
    return list(dict.fromkeys(zip(rows["layer"].tolist(), rows["unit"].tolist(), signs)))
