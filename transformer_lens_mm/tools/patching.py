"""Activation patching from a clean image into a corrupted one, on any hook point.

In the spirit of TransformerLens's ``patching`` module, adapted to multimodal inputs: the clean
run is cached once; then, for every (layer, position) -- or (layer, unit) for MLP units -- the
corrupted input is run with that one activation replaced by its clean value, and a metric is
read. Patches are stacked along the batch dimension (``chunk_size`` patched copies per forward).

Example:
    >>> effects = patch_by_position(model, clean, corrupted, logit_metric(c))  # doctest: +SKIP
    >>> effects.values.shape  # [n_layers, n_positions]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, OutOfRangeError
from transformer_lens_mm.tools.attribution import target_metric

__all__ = ["PatchingResult", "logit_metric", "patch_by_position", "patch_by_unit"]

Metric = Callable[[Tensor, MultimodalInput], Tensor]


def logit_metric(target_id: int, *, kind: str = "logit") -> Metric:
    """Metric: the logit (or log-probability) of ``target_id`` at each row's last position."""

    def metric(logits: Tensor, batch: MultimodalInput) -> Tensor:
        tids = torch.full((logits.shape[0],), int(target_id), dtype=torch.long)
        return target_metric(logits, batch.last_positions, tids, kind)  # type: ignore[arg-type]

    return metric


@dataclass
class PatchingResult:
    """Metric values of patched runs, with the clean and corrupted references."""

    values: Float[Tensor, "n_layer n_item"]  # metric after patching (layer x position or unit)
    layers: list[int]  # layer of each row
    items: list[int]  # position or unit of each column
    clean: float  # metric of the clean run
    corrupted: float  # metric of the corrupted run

    @property
    def normalized(self) -> Float[Tensor, "n_layer n_item"]:
        """0 = no effect (corrupted), 1 = fully restored (clean)."""
        denom = self.clean - self.corrupted
        if abs(denom) < 1e-12:
            raise ArgumentError("clean and corrupted runs give the same metric: nothing to restore")
        return (self.values - self.corrupted) / denom


def _check_pair(clean: MultimodalInput, corrupted: MultimodalInput) -> None:
    if len(clean) != 1 or len(corrupted) != 1:
        raise ArgumentError("patching compares one clean and one corrupted item: pass batches of 1")
    if clean.tokens.shape != corrupted.tokens.shape or not torch.equal(
        clean.image_mask, corrupted.image_mask
    ):
        raise ArgumentError(
            "clean and corrupted inputs must have the same layout (same prompt length and image "
            "positions): prepare them with the same prompt"
        )


def _run_patches(
    model: MultimodalModel,
    corrupted: MultimodalInput,
    patches: list[tuple[str, Callable[[Tensor, int], Tensor]]],
    metric: Metric,
    chunk_size: int,
    verbose: bool,
) -> Tensor:
    """Run ``patches`` (hook name, fn(act, row) -> act) stacked in chunks; one metric each."""
    out = []
    for start in tqdm(range(0, len(patches), chunk_size), disable=not verbose, desc="patching"):
        chunk = patches[start : start + chunk_size]
        stacked = corrupted.select([0] * len(chunk))
        by_name: dict[str, list[tuple[int, Callable]]] = {}
        for row, (name, fn) in enumerate(chunk):
            by_name.setdefault(name, []).append((row, fn))

        def make(entries):
            def hook(act: Tensor, hook: Any) -> Tensor:
                act = act.clone()
                for row, fn in entries:
                    act[row] = fn(act[row], row)
                return act

            return hook

        with torch.no_grad():
            logits = model.run_with_hooks(
                stacked, fwd_hooks=[(n, make(e)) for n, e in by_name.items()]
            )
            out.append(metric(logits, stacked).float().cpu())
    return torch.cat(out)


def _patch_grid(
    model: MultimodalModel,
    clean: MultimodalInput,
    corrupted: MultimodalInput,
    metric: Metric,
    names: list[str],
    layers: list[int],
    items: list[int],
    index: Callable[[int], Any],
    chunk_size: int,
    verbose: bool,
) -> PatchingResult:
    """Patch ``act[index(item)]`` from the clean run, for every (hook name, item)."""
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
        corrupted_logits = model(corrupted)
    patches = []
    for name in names:
        clean_act = cache[name][0]
        for item in items:
            where = index(item)

            def fn(act, row, where=where, clean_act=clean_act):
                act[where] = clean_act[where].to(act.dtype)
                return act

            patches.append((name, fn))
    values = _run_patches(model, corrupted, patches, metric, chunk_size, verbose)
    return PatchingResult(
        values=values.reshape(len(layers), len(items)),
        layers=layers,
        items=items,
        clean=float(metric(clean_logits, clean)[0]),
        corrupted=float(metric(corrupted_logits, corrupted)[0]),
    )


def patch_by_position(
    model: MultimodalModel,
    clean: MultimodalInput,
    corrupted: MultimodalInput,
    metric: Metric,
    *,
    hook: Callable[[int], str] = lambda layer: f"blocks.{layer}.hook_resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    chunk_size: int = 32,
    verbose: bool = False,
) -> PatchingResult:
    """Patch one (layer, position) of a hook point from the clean run into the corrupted run.

    Args:
        model: A multimodal model.
        clean: One clean item.
        corrupted: One corrupted item with the same layout (e.g. another image).
        metric: ``fn(logits, batch) -> [rows]`` (e.g. :func:`logit_metric`).
        hook: Hook name of a layer (default ``blocks.{l}.hook_resid_pre``; any
            ``[batch, pos, ...]`` hook point works, e.g. ``hook_names.mlp_post``).
        layers: Layers (default all).
        positions: Positions (default all of the sequence).
        chunk_size: Patched copies per forward.
        verbose: Progress bar.

    Returns:
        A :class:`PatchingResult` with ``values[layer, position]``.
    """
    _check_pair(clean, corrupted)
    n_layers = int(model.cfg.n_layers)
    layer_list = hook_names.resolve_layers(layers, n_layers)
    seq = clean.tokens.shape[1]
    pos_list = list(range(seq)) if positions is None else [int(p) for p in positions]
    if any(not 0 <= p < seq for p in pos_list):
        raise OutOfRangeError(f"positions must lie in 0..{seq - 1} (the sequence length is {seq})")
    names = [hook(layer) for layer in layer_list]
    return _patch_grid(
        model,
        clean,
        corrupted,
        metric,
        names,
        layer_list,
        pos_list,
        lambda p: p,
        chunk_size,
        verbose,
    )


def patch_by_unit(
    model: MultimodalModel,
    clean: MultimodalInput,
    corrupted: MultimodalInput,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    units: Sequence[int] | None = None,
    positions: str | Sequence[int] = "image",
    chunk_size: int = 64,
    verbose: bool = False,
) -> PatchingResult:
    """Patch one MLP unit (at all chosen positions at once) from clean into corrupted.

    Args:
        positions: ``"image"`` (default), ``"all"``, or explicit positions.
        units: Units to patch (default all ``d_mlp``: one forward row per (layer, unit)).

    Returns:
        A :class:`PatchingResult` with ``values[layer, unit]``.
    """
    _check_pair(clean, corrupted)
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    layer_list = hook_names.resolve_layers(layers, n_layers)
    unit_list = list(range(d_mlp)) if units is None else [int(u) for u in units]
    if any(not 0 <= u < d_mlp for u in unit_list):
        raise OutOfRangeError(f"units must lie in 0..{d_mlp - 1}")
    if positions == "image":
        pos = clean.image_positions[0]
    elif positions == "all":
        pos = torch.arange(clean.tokens.shape[1], device=clean.tokens.device)
    else:
        pos = torch.as_tensor(list(positions), dtype=torch.long, device=clean.tokens.device)
        seq = clean.tokens.shape[1]
        if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= seq:
            raise OutOfRangeError(
                f"positions must be a non-empty list in 0..{seq - 1} (the sequence length is {seq})"
            )
    names = [hook_names.mlp_post(layer) for layer in layer_list]
    return _patch_grid(
        model,
        clean,
        corrupted,
        metric,
        names,
        layer_list,
        unit_list,
        lambda u: (pos, u),
        chunk_size,
        verbose,
    )
