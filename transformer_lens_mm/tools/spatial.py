"""Spatial selectivity: a unit's activations on the patch grid, upsampled, against object masks.

The paper's spatial-selectivity check turns a unit's activations at the image positions into a
``h x w`` map (14x14 for BEIT), upsamples it bilinearly to the image size, thresholds it at its
0.95 quantile and compares that region with the object's segmentation mask by IoU, against
random units drawn from the same layers (:func:`spatial_selectivity`). On gated MLPs the maps
are signed activations ``sign * Z`` (:mod:`~transformer_lens_mm.tools.readout`).
:func:`spatial_ceiling` says how high the IoU can go on given masks and grid.

Example:
    >>> m = patch_map(torch.arange(4.0), grid_size=(2, 2), size=(4, 4))
    >>> m.shape
    torch.Size([4, 4])
    >>> quantile_mask(m, 0.75).sum().item()  # the map's top quarter (ties included)
    5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.paper import REGION_QUANTILE
from transformer_lens_mm.errors import ArgumentError, InputShapeError
from transformer_lens_mm.fast.host import to_host
from transformer_lens_mm.tools.readout import SignRule, dominant_signs, readout_for
from transformer_lens_mm.tools.units import random_units_like

__all__ = [
    "image_mlp_activations",
    "mask_iou",
    "patch_map",
    "quantile_mask",
    "spatial_ceiling",
    "spatial_selectivity",
]


def patch_map(
    activations: Float[Tensor, "*batch n_image_tokens"],
    grid_size: tuple[int, int],
    size: tuple[int, int] | None = None,
) -> Float[Tensor, "*batch height width"]:
    """Reshape per-patch values to the grid (row-major) and upsample bilinearly to ``size``.

    Args:
        activations: One value per image token, in the encoder's row-major patch order (any
            leading dimensions: one map each).
        grid_size: ``(h, w)`` of the patch grid (``model.image_encoder.grid_size``).
        size: ``(height, width)`` to upsample to (default: the grid itself).
    """
    h, w = grid_size
    if activations.shape[-1] != h * w:
        raise InputShapeError(f"{activations.shape[-1]} values do not fill a {h}x{w} patch grid")
    lead = activations.shape[:-1]
    grid = activations.detach().float().reshape(-1, 1, h, w)
    if size is not None and tuple(size) != (h, w):
        grid = torch.nn.functional.interpolate(
            grid, size=tuple(size), mode="bilinear", align_corners=False
        )
    return grid.reshape(*lead, *grid.shape[-2:])


def quantile_mask(
    values: Float[Tensor, "*batch height width"], q: float = REGION_QUANTILE
) -> Bool[Tensor, "*batch height width"]:
    """``values >= quantile(values, q)`` per map: the unit's most active region."""
    if not 0.0 <= q <= 1.0:
        raise ArgumentError(f"q must be in [0, 1], got {q}")
    flat = values.float().reshape(*values.shape[:-2], -1)
    return values >= torch.quantile(flat, q, dim=-1)[..., None, None]


def mask_iou(a: Bool[Tensor, "*a h w"], b: Bool[Tensor, "*b h w"]) -> Float[Tensor, "..."]:
    """Intersection over union of boolean masks over the last two dimensions (broadcasting).

    An empty union gives 0 (as torchmetrics' ``binary_jaccard_index``).

    Example:
        >>> a = torch.tensor([[True, True], [False, False]])
        >>> mask_iou(a, torch.tensor([[True, False], [True, False]])).item()
        0.3333333432674408
    """
    if a.shape[-2:] != b.shape[-2:]:
        raise InputShapeError(
            f"masks of different sizes: {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}; "
            "upsample the patch map to the mask's size (patch_map(..., size=mask.shape))"
        )
    a, b = a.bool(), b.bool()
    inter = (a & b).sum((-2, -1)).float()
    union = (a | b).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


@torch.no_grad()
def image_mlp_activations(
    model: MultimodalModel, batch: MultimodalInput, layers: Sequence[int] | None = None
) -> Float[Tensor, "batch n_layer n_image_tokens d_mlp"]:
    """MLP activations ``Z`` of ``layers`` at the image positions (one forward, fp32, CPU).

    Only the image positions are kept (hooks gather them during the forward), so memory is
    ``batch x layers x n_image_tokens x d_mlp``, not the whole cache.
    """
    layer_list = hook_names.resolve_layers(layers, int(model.cfg.n_layers))
    batch = batch.to(model.lm_device)
    pos = batch.image_positions
    rows = torch.arange(len(batch), device=pos.device)[:, None]
    store: dict[int, Tensor] = {}

    def grab(layer: int):
        def hook(act: Tensor, hook: Any) -> None:
            store[layer] = act[rows, pos].float()  # on the device: no sync per layer

        return hook

    hooks = [(hook_names.mlp_post(layer), grab(layer)) for layer in layer_list]
    model.run_with_hooks(batch, fwd_hooks=hooks)
    return to_host(torch.stack([store[layer] for layer in layer_list], 1))


def _as_entries(units: Sequence[Any]) -> list[tuple[int, int, int]]:
    """``(layer, unit)`` or ``(layer, unit, sign)`` items as ``(layer, unit, sign)``; a missing
    or zero sign is 0 (oriented later by the unit's dominant sign on the image)."""
    out = []
    for entry in units:
        if len(entry) not in (2, 3):
            raise ArgumentError(f"a unit is (layer, unit) or (layer, unit, sign), got {entry!r}")
        sign = int(np.sign(float(entry[2]))) if len(entry) == 3 else 0
        out.append((int(entry[0]), int(entry[1]), sign))
    return out


def spatial_selectivity(
    model: MultimodalModel,
    batch: MultimodalInput,
    units: Sequence[Sequence[Any]],
    masks: Sequence[np.ndarray | Tensor],
    *,
    q: float = REGION_QUANTILE,
    n_random: int = 1,
    seed: int = 0,
    grid_size: tuple[int, int] | None = None,
    sign: SignRule = "auto",
) -> pd.DataFrame:
    """IoU of each unit's ``q``-quantile patch region with the object mask, vs random units.

    For image ``i``, every unit of ``units[i]`` and ``n_random`` draws of as many random units
    from the same layers (:func:`~transformer_lens_mm.tools.units.random_units_like`) get a map
    (signed activations ``sign * Z`` at the image positions, upsampled bilinearly to the mask's
    size), a ``q``-quantile region and its IoU with ``masks[i]``.

    On a gated MLP a unit has no sign of its own (:mod:`~transformer_lens_mm.tools.readout`), so
    its map is read as ``sign * Z``: with the sign of its entry when ``units[i]`` gives one
    (``(layer, unit, sign)``, e.g. the search table's ``sign``), else (and for the random
    units, which have no entry) the sign of its strongest activation on that image. Either way
    the map is unchanged when the weights flip the unit's sign. On ungated MLPs the map is ``Z``
    (the paper's).

    Args:
        model: A multimodal model with an image encoder (or pass ``grid_size``).
        batch: The images' input (``model.prepare_inputs(images)``).
        units: Per image, the ``(layer, unit)`` or ``(layer, unit, sign)`` entries to test.
        masks: Per image, a boolean object mask ``[height, width]`` in the image's pixels.
        q: Quantile of the region (the paper: 0.95).
        n_random: Random draws per image.
        seed: Seed of the random draws.
        grid_size: Patch grid ``(h, w)`` (default: ``batch.grid_size``, the grid of the image
            positions, else ``model.image_encoder.grid_size``).
        sign: :data:`~transformer_lens_mm.tools.readout.SignRule` (``"weights"``: raw ``Z``).

    Returns:
        One row per (image, kind, draw, rank): ``layer``, ``unit``, ``sign`` (the map's
        orientation), ``iou``, ``region`` (share of pixels in the unit's region) and ``object``
        (share of pixels in the mask).

    Example:
        >>> table = spatial_selectivity(model, batch, top_units, masks)  # doctest: +SKIP
        >>> table.groupby("kind").iou.mean()  # doctest: +SKIP
    """
    columns = ["image", "kind", "draw", "rank", "layer", "unit", "sign", "iou", "region", "object"]
    n = len(batch)
    if len(units) != n or len(masks) != n:
        raise ArgumentError(
            f"need one unit list and one mask per image: {n} images, {len(units)} unit lists, "
            f"{len(masks)} masks"
        )
    if grid_size is None and batch.grid_size is not None:
        grid_size = tuple(batch.grid_size)  # the grid of the image positions
    if grid_size is None:
        encoder = getattr(model, "image_encoder", None)
        if encoder is None:
            raise ArgumentError("the model has no image encoder: pass grid_size=(h, w)")
        grid_size = tuple(encoder.grid_size)
    readout = readout_for(model, sign=sign)
    kinds: list[list[tuple[str, int, list[tuple[int, int, int]]]]] = []
    for i in range(n):
        top = _as_entries(units[i])
        todo = [("top", 0, top)]
        pairs = [(la, u) for la, u, _ in top]
        for d in range(n_random):
            rnd = random_units_like(model, pairs, seed=seed + 7919 * i + d)
            todo.append(("random", d, [(la, u, 0) for la, u in rnd]))
        kinds.append(todo)
    layers = sorted({layer for todo in kinds for _, _, us in todo for layer, _, _ in us})
    if not layers:
        return pd.DataFrame(columns=columns)
    slot = {layer: j for j, layer in enumerate(layers)}
    acts = image_mlp_activations(model, batch, layers)  # [batch, n_layer, n_img, d_mlp]
    rows = []
    for i, todo in enumerate(kinds):
        mask = torch.as_tensor(np.asarray(masks[i])).bool()
        if mask.ndim != 2:
            raise InputShapeError(
                f"mask {i} must be 2-D [height, width], got shape {tuple(mask.shape)}"
            )
        size = tuple(mask.shape)
        for kind, draw, us in todo:
            if not us:
                continue
            idx = torch.tensor([(la, u) for la, u, _ in us])
            values = acts[i, [slot[layer] for layer in idx[:, 0].tolist()], :, idx[:, 1]]
            given = torch.tensor([s for *_, s in us])
            signs = (
                torch.where(given != 0, given, dominant_signs(readout, values))
                if readout.signed
                else torch.ones(len(us), dtype=torch.long)
            )
            values = values * signs[:, None].to(values.dtype)
            regions = quantile_mask(patch_map(values, grid_size, size), q)
            ious = mask_iou(regions, mask)
            for r, (layer, unit, _) in enumerate(us):
                rows.append(
                    (
                        i,
                        kind,
                        draw,
                        r,
                        layer,
                        unit,
                        int(signs[r]),
                        float(ious[r]),
                        float(regions[r].float().mean()),
                        float(mask.float().mean()),
                    )
                )
    return pd.DataFrame(rows, columns=columns)


def spatial_ceiling(
    masks: Sequence[np.ndarray | Tensor],
    grid_size: tuple[int, int],
    *,
    q: float = REGION_QUANTILE,
) -> pd.DataFrame:
    """How high the spatial test's IoU can go on these masks with a ``grid_size`` patch map.

    Two ceilings per mask, to read measured IoUs against:

    * ``map_ceiling``: the IoU reached by the best-informed map there is, the mask itself
      averaged over each patch (what a unit firing exactly on the object would show), put
      through the same upsampling and ``q``-quantile region;
    * ``size_ceiling``: the bound a region of exactly ``1 - q`` of the pixels has whatever its
      shape, ``min(r, o) / max(r, o)`` with ``r = 1 - q`` and ``o`` the object's share of the
      pixels (a 5% region cannot match a 30% object better than 1/6). A map with a plateau at
      its top (ties, like the mask's own averages) gets a larger region and can exceed it.

    Args:
        masks: Boolean masks ``[height, width]`` (each image's object or region).
        grid_size: ``(h, w)`` of the patch grid (7x7 for EfficientNet-Lite0, 14x14 for BEIT).
        q: The region's quantile (the paper: 0.95).

    Returns:
        One row per mask: ``object`` (its share of pixels), ``map_ceiling``, ``size_ceiling``.

    Example:
        >>> m = torch.zeros(28, 28, dtype=torch.bool)
        >>> m[:14, :14] = True
        >>> spatial_ceiling([m], (2, 2), q=0.75).round(3).values.tolist()
        [[0.25, 0.867, 1.0]]
    """
    rows = []
    for i, mask in enumerate(masks):
        m = torch.as_tensor(np.asarray(mask)).bool()
        if m.ndim != 2:
            raise InputShapeError(
                f"mask {i} must be 2-D [height, width], got shape {tuple(m.shape)}"
            )
        coarse = torch.nn.functional.adaptive_avg_pool2d(m.float()[None, None], grid_size)[0, 0]
        region = quantile_mask(patch_map(coarse.reshape(-1), grid_size, tuple(m.shape)), q)
        share = float(m.float().mean())
        r = 1.0 - q
        size = min(r, share) / max(r, share) if max(r, share) > 0 else 0.0
        rows.append((share, float(mask_iou(region, m)), size))
    return pd.DataFrame(rows, columns=["object", "map_ceiling", "size_ceiling"])
