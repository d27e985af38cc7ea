"""Ablating MLP units: hook builders, a context manager, the top-vs-random sweep, captions.

Units are ``(layer, unit)`` pairs; ablation acts on ``blocks.{layer}.mlp.hook_post`` at chosen
positions (the image positions of the current input by default). Modes:

* ``"zero"``: ``Z = 0`` (the paper's choice; GELU(0) = 0),
* ``"mean"``: ``Z`` = the unit's mean activation over a reference set (:func:`unit_means`),
* ``"resample"``: ``Z`` = the unit's activation on another input at the same position.

:func:`ablation_sweep` compares ablating each image's top-k units with ablating the same number
of random units drawn from the same layers, for every k, by stacking all conditions along the
batch dimension (one forward per chunk of conditions, not one per condition).

Example:
    >>> with ablated(model, [(12, 9058), (7, 12)]):  # doctest: +SKIP
    ...     logits = model(batch)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Iterator, MutableMapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import LanguageModel, MultimodalModel
from transformer_lens_mm.core.generation import Captions, generate_captions
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.paper import ABLATION_KS
from transformer_lens_mm.errors import (
    ArgumentError,
    InputShapeError,
    ModelSetupError,
    TableError,
)
from transformer_lens_mm.tools.attribution import last_position_logits
from transformer_lens_mm.tools.stats import ci_half_width
from transformer_lens_mm.tools.units import (
    Unit,
    as_unit_tensor,
    group_by_layer,
    per_row_masks,
    random_like,
)

__all__ = [
    "DEFAULT_KS",
    "ablated",
    "ablation_curve",
    "ablation_hooks",
    "ablation_sweep",
    "captions_under_ablation",
    "unit_means",
]

#: The paper's numbers of ablated units (``core.paper.ABLATION_KS``).
DEFAULT_KS = ABLATION_KS
Mode = Literal["zero", "mean", "resample"]


def _position_mask(
    model: LanguageModel, act: Tensor, positions: Bool[Tensor, "batch pos"] | None
) -> Tensor | None:
    mask = positions
    if mask is None:  # interactive use: the image positions of the input being run
        last = getattr(model, "last_input", None)
        if last is None:
            raise ModelSetupError(
                "no positions given and the model has no last_input to take image positions "
                "from: pass positions=batch.image_mask"
            )
        mask = last.image_mask
    if act.shape[1] < mask.shape[-1]:
        return None  # an incremental KV-cache step: the ablated positions are already cached
    if act.shape[1] > mask.shape[-1]:  # the sequence grew at the end (generation, no cache)
        mask = torch.nn.functional.pad(mask, (0, act.shape[1] - mask.shape[-1]), value=False)
    if mask.ndim == 1:
        mask = mask.expand(act.shape[0], -1)
    if mask.shape[0] != act.shape[0]:
        raise InputShapeError(
            f"positions cover {mask.shape[0]} items but the batch has {act.shape[0]}"
        )
    return mask.to(act.device)


def _shared_span(positions: Tensor | None) -> tuple[int, int] | None:
    """``(start, stop)`` when every row of a position mask is the same contiguous run."""
    if positions is None or positions.ndim != 2 or not bool(positions.any()):
        return None
    first = positions[0]
    where = first.nonzero().flatten()
    start, stop = int(where[0]), int(where[-1]) + 1
    if stop - start != len(where) or not bool((positions == first).all()):
        return None
    return start, stop


def ablation_hooks(
    model: LanguageModel,
    units: Sequence[Unit] | dict[int, Bool[Tensor, "... d_mlp"]],
    *,
    mode: Mode = "zero",
    positions: Bool[Tensor, "batch pos"] | None = None,
    means: dict[int, Float[Tensor, " d_mlp"]] | None = None,
    source: dict[int, Float[Tensor, "batch pos d_mlp"]] | None = None,
    in_place: bool = False,
) -> list[tuple[str, Any]]:
    """Hooks that ablate ``units`` (for ``run_with_hooks``, ``hooks()``, captioning).

    Args:
        model: A multimodal model.
        units: ``(layer, unit)`` pairs, or per layer a boolean unit mask ``[d_mlp]`` or
            ``[batch, d_mlp]`` (one set per batch row, as the sweep uses).
        mode: ``"zero"``, ``"mean"`` (needs ``means``) or ``"resample"`` (needs ``source``).
        positions: Boolean ``[batch, pos]``/``[pos]`` mask of positions to ablate, e.g.
            ``batch.image_mask``. ``None`` (interactive use): the image positions of the input
            being run (``model.last_input``, which the model sets before its forward).
        means: Per layer, the mean activation of every unit (:func:`unit_means`).
        source: Per layer, activations ``[batch, pos, d_mlp]`` of the resampled input
            (e.g. ``cache[mlp_post(l)]`` of another image).
        in_place: Zero the activation tensor itself where it needs no gradient (a hook that
            saved it earlier, e.g. a cache, then sees the ablated values too); the sweep's
            forwards use it. Default: a new tensor.

    Returns:
        A list of ``(hook name, hook function)``.
    """
    if mode not in ("zero", "mean", "resample"):
        raise ArgumentError(f"mode must be 'zero', 'mean' or 'resample', got {mode!r}")
    d_mlp = int(model.cfg.d_mlp)
    if isinstance(units, dict):
        masks = {
            hook_names.resolve_layer(int(k), int(model.cfg.n_layers)): v.bool()
            for k, v in units.items()
        }
    else:
        masks = {}
        for layer, idx in group_by_layer(model, units).items():
            m = torch.zeros(d_mlp, dtype=torch.bool)
            m[idx] = True
            masks[layer] = m
    for layer in masks:
        if mode == "mean" and (means is None or layer not in means):
            raise ArgumentError(f"mode='mean' needs means[{layer}]: compute them with unit_means()")
        if mode == "resample" and (source is None or layer not in source):
            raise ArgumentError(
                f"mode='resample' needs source[{layer}] activations of another input"
            )

    span = _shared_span(positions) if in_place and mode == "zero" else None

    def make(layer: int, unit_mask: Tensor):
        def hook(act: Tensor, hook: Any) -> Tensor:
            pos = _position_mask(model, act, positions)
            if pos is None:
                return act
            um = unit_mask.to(act.device)
            um = um[:, None, :] if um.ndim == 2 else um[None, None, :]
            if span is not None and not act.requires_grad and act.shape[1] == pos.shape[1]:
                # every row ablates the same contiguous positions: one pass over them
                act[:, span[0] : span[1]].mul_((~um).to(act.dtype))
                return act
            sel = pos[:, :, None] & um
            if mode == "zero":
                value = torch.zeros((), dtype=act.dtype, device=act.device)
            elif mode == "mean":
                value = means[layer].to(act.device, act.dtype)  # type: ignore[index]
            else:
                value = source[layer].to(act.device, act.dtype)  # type: ignore[index]
                if value.shape != act.shape:
                    raise InputShapeError(
                        f"resample source of layer {layer} has shape "
                        f"{tuple(value.shape)}, the activation {tuple(act.shape)}"
                    )
            return torch.where(sel, value, act)

        return hook

    return [(hook_names.mlp_post(layer), make(layer, m)) for layer, m in sorted(masks.items())]


@contextlib.contextmanager
def ablated(model: LanguageModel, units: Sequence[Unit], **kwargs: Any) -> Iterator[Any]:
    """Context manager: every forward inside runs with ``units`` ablated (see
    :func:`ablation_hooks` for the keyword arguments)."""
    with model.hooks(fwd_hooks=ablation_hooks(model, units, **kwargs)):
        yield model


@torch.no_grad()
def unit_means(
    model: MultimodalModel,
    batches: Sequence[MultimodalInput],
    layers: Sequence[int],
    *,
    positions: Literal["image", "all"] = "image",
) -> dict[int, Tensor]:
    """Mean activation of every unit of ``layers`` over the image (or all real) positions."""
    names = [hook_names.mlp_post(int(layer), int(model.cfg.n_layers)) for layer in layers]
    sums = {n: torch.zeros(int(model.cfg.d_mlp), dtype=torch.float64) for n in names}
    count = 0
    for batch in batches:
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        mask = (batch.image_mask if positions == "image" else batch.attention_mask.bool()).cpu()
        for n in names:
            sums[n] += cache[n].cpu()[mask].double().sum(0)
        count += int(mask.sum())
    if count == 0:
        raise ArgumentError("no positions to average over: pass at least one non-empty batch")
    return {
        hook_names.resolve_layer(int(layer), int(model.cfg.n_layers)): (sums[n] / count).float()
        for layer, n in zip(layers, names)
    }


def ablation_sweep(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Sequence[int] | Tensor,
    ranked_units: Sequence[Sequence[Unit]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_random: int = 1,
    seed: int = 0,
    mode: Mode = "zero",
    means: dict[int, Tensor] | None = None,
    chunk_size: int = 32,
    verbose: bool = False,
    image_ids: Sequence[Hashable] | None = None,
    memo: MutableMapping[Hashable, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """p(c) and logit(c) when ablating each image's top-k units vs k random units, for each k.

    Random units are drawn from the same layers in the same numbers as the top-k set (seeded,
    ``n_random`` draws). All conditions are stacked along the batch dimension and run in
    chunks of ``chunk_size`` rows. Conditions that are the same forward (the same image, ``c``
    and set of ablated units: k = 0 of top and of every random draw, or a row repeated with
    ``image_ids``) run once; with ``memo``, so do those an earlier sweep on the same images ran.

    Args:
        model: A multimodal model.
        batch: The images' input; ``c`` is predicted at ``batch.last_positions``.
        target_ids: ``c`` per image.
        ranked_units: Per image, units ranked best first (e.g. from
            :meth:`Attribution.ranked_units`).
        ks: Numbers of units to ablate (0 is the unablated reference).
        n_random: Random draws per k.
        seed: Seed of the random draws.
        mode: ``"zero"`` or ``"mean"`` (with ``means``).
        chunk_size: Rows per forward.
        verbose: Progress bar over chunks.
        image_ids: Which image each row of ``batch`` is (default: every row its own): rows of
            one image (the same input row repeated, e.g. ``batch.select([0, 0, 1])``) share
            their forwards where the same units are ablated.
        memo: Results of forwards already run, read and filled (``(image, c, mode, units) ->
            (p_c, logit_c)``; ``mode="zero"`` only): pass the same dict to sweeps on the same
            images (their ``image_ids`` naming rows of one input) to run each forward once.

    Returns:
        One row per (image, kind, k, draw): ``p_c``, ``logit_c``, ``delta_p``, ``delta_logit``
        and ``rel_p`` (p_c over the unablated p_c).
    """
    n = len(batch)
    tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1)
    if tids.shape[0] != n or len(ranked_units) != n:
        raise ArgumentError(f"need one target and one ranked unit list per image ({n} images)")
    if mode == "resample":
        raise ArgumentError("ablation_sweep supports mode='zero' or 'mean'")
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    ks = sorted({int(k) for k in ks})
    if ks and ks[0] < 0:
        raise ArgumentError(f"k must be >= 0, got {ks[0]}")
    if ks and ks[-1] > n_layers * d_mlp:
        raise ArgumentError(f"k={ks[-1]} is more than the model's {n_layers * d_mlp} MLP units")
    for i, ranked in enumerate(ranked_units):
        if ks and ks[-1] > len(ranked):
            raise ArgumentError(
                f"image {i} has {len(ranked)} ranked units but k={ks[-1]} was asked for: rank "
                "more units (attribution over more layers/positions) or use smaller ks"
            )

    # conditions: (image, kind, k, draw, units [k, 2]); all index work is vectorised
    ranked_t = [as_unit_tensor(model, r) for r in ranked_units]
    conditions: list[tuple[int, str, int, int, Tensor]] = []
    for i, ranked in enumerate(ranked_t):
        for k in ks:
            top = ranked[:k]
            conditions.append((i, "top", k, 0, top))
            for d in range(n_random):
                rnd = random_like(top, n_layers, d_mlp, seed * 1_000_003 + i * 10_007 + k * 31 + d)
                conditions.append((i, "random", k, d, rnd))

    # conditions that are the same forward (image, c, mode, set of units) run once; the memo
    # holds those run before
    if image_ids is not None and len(image_ids) != n:
        raise ArgumentError(f"image_ids names {len(image_ids)} rows but the batch has {n}")
    ids = list(range(n)) if image_ids is None else list(image_ids)
    shared = memo if memo is not None and mode == "zero" else {}
    keys = [
        (ids[i], int(tids[i]), mode, _units_key(units, d_mlp)) for i, _, _, _, units in conditions
    ]
    runs: list[tuple[int, Tensor]] = []
    todo: dict[Hashable, int] = {}
    for key, (i, _, _, _, units) in zip(keys, conditions):
        if key not in shared and key not in todo:
            todo[key] = len(runs)
            runs.append((i, units))

    batch = batch.to(model.lm_device)
    values: list[list[float]] = []
    n_chunks = math.ceil(len(runs) / chunk_size)
    for c in tqdm(range(n_chunks), disable=not verbose, desc="ablation sweep"):
        chunk = runs[c * chunk_size : (c + 1) * chunk_size]
        rows = [i for i, _ in chunk]
        stacked = batch.select(rows)
        used = {
            layer: mask.to(stacked.tokens.device)
            for layer, mask in per_row_masks(model, [units for _, units in chunk]).items()
        }
        hooks = ablation_hooks(
            model, used, mode=mode, positions=stacked.image_mask, means=means, in_place=True
        )
        with torch.no_grad():
            logits = last_position_logits(model, stacked, hooks)
            logit_c = logits[torch.arange(len(chunk)), tids[rows].to(logits.device)]
            logp_c = logit_c.float() - logits.float().logsumexp(-1)
        values += torch.stack([logp_c.exp(), logit_c.float()], 1).cpu().tolist()
    found: MutableMapping[Hashable, tuple[float, float]] = {
        key: (values[j][0], values[j][1]) for key, j in todo.items()
    }
    if memo is not None and mode == "zero":
        memo.update(found)
        found = memo
    results = [
        (cond[0], cond[1], cond[2], cond[3], *found[key]) for key, cond in zip(keys, conditions)
    ]
    table = pd.DataFrame(results, columns=["image", "kind", "k", "draw", "p_c", "logit_c"])
    base = table[table.k == 0].groupby("image")[["p_c", "logit_c"]].first()
    if len(base):
        table["delta_p"] = table["p_c"] - table["image"].map(base["p_c"])
        table["delta_logit"] = table["logit_c"] - table["image"].map(base["logit_c"])
        table["rel_p"] = table["p_c"] / table["image"].map(base["p_c"]).clip(
            lower=np.finfo(float).tiny
        )
    return table


def _units_key(units: Tensor, d_mlp: int) -> bytes:
    """A set of ``(layer, unit)`` rows as hashable bytes (order and repeats do not matter)."""
    if not len(units):
        return b""
    flat = units[:, 0].long() * d_mlp + units[:, 1].long()
    return torch.unique(flat).cpu().numpy().tobytes()


def ablation_curve(
    sweep: pd.DataFrame, *, value: str = "rel_p", ci: float = 0.95, by: str = "image"
) -> pd.DataFrame:
    """Mean of ``value`` per (kind, k) over images, with a normal ``ci`` confidence interval.

    Random draws of one image are averaged first, so each image counts once.

    Args:
        sweep: :func:`ablation_sweep`'s table, or a run's / the demo's ``ablation`` table.
        value: ``rel_p`` (p(c) kept), ``p_c``, ``delta_p``, ``logit_c`` or ``delta_logit``.
        ci: Confidence level.
        by: The column naming an image: ``"image"`` (the batch row, in ``ablation_sweep``'s
            table) or ``"item"`` (in run and demo tables).

    Returns:
        Columns ``kind, k, mean, std, n, ci_low, ci_high``.

    Example:
        >>> t = pd.DataFrame({"image": [0, 1], "kind": "top", "k": 50, "rel_p": [0.2, 0.4]})
        >>> ablation_curve(t)[["kind", "k", "mean", "n"]].to_dict("records")
        [{'kind': 'top', 'k': 50, 'mean': 0.30000000000000004, 'n': 2}]
    """
    for column in (value, by):
        if column not in sweep:
            raise TableError(
                f"the sweep has no column {column!r}: choose from {list(sweep.columns)}"
            )
    per_image = sweep.groupby(["kind", "k", by])[value].mean().reset_index()
    stats = (
        per_image.groupby(["kind", "k"])[value].agg(mean="mean", std="std", n="count").reset_index()
    )
    half = ci_half_width(stats["std"].fillna(0.0), stats["n"], ci)
    stats["ci_low"], stats["ci_high"] = stats["mean"] - half, stats["mean"] + half
    return stats


def captions_under_ablation(
    model: MultimodalModel,
    images: Any,
    units: Sequence[Unit] | dict[int, Bool[Tensor, "... d_mlp"]],
    *,
    mode: Mode = "zero",
    means: dict[int, Tensor] | None = None,
    batch: MultimodalInput | None = None,
    **generate_kwargs: Any,
) -> Captions:
    """Regenerate captions with ``units`` ablated at the image positions (``units`` as for
    :func:`ablation_hooks`: pairs, or per layer a ``[batch, d_mlp]`` mask, one set per image).

    Args:
        model: A multimodal model.
        images: Raw images (or ``None`` with ``batch``).
        units: What to ablate.
        mode: ``"zero"`` or ``"mean"`` (with ``means``).
        means: Per layer, mean activations (:func:`unit_means`).
        batch: A prepared input instead of ``images`` (left-padded for captioning).
        **generate_kwargs: For :func:`~transformer_lens_mm.core.generation.generate_captions`
            (``max_new_tokens``, ``fwd_hooks``, ...).

    Example:
        >>> caps = captions_under_ablation(model, images, [(12, 9058)])  # doctest: +SKIP
    """
    if batch is None:
        batch = model.prepare_inputs(
            images,
            prompts=generate_kwargs.pop("prompts", None),
            pixel_values=generate_kwargs.pop("pixel_values", None),
            image_features=generate_kwargs.pop("image_features", None),
            padding_side="left",
        )
    hooks = ablation_hooks(model, units, mode=mode, means=means, positions=batch.image_mask)
    # the ablation acts at the image positions: with the KV cache, on the first step only
    extra = list(generate_kwargs.pop("prompt_hooks", ()))
    return generate_captions(model, batch=batch, prompt_hooks=hooks + extra, **generate_kwargs)
