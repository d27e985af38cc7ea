"""Per-patch maps over the image: a unit's activations on the patch grid, upsampled.

The paper's spatial-selectivity check turns a unit's activations at the image positions into a
``h x w`` map (14x14 for BEIT), upsamples it bilinearly to the image size and thresholds it at
its 0.95 quantile.

Example:
    >>> m = patch_map(torch.arange(4.0), grid_size=(2, 2), size=(4, 4))
    >>> m.shape
    torch.Size([4, 4])
    >>> quantile_mask(m, 0.75).sum().item()
    4
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["patch_map", "quantile_mask"]


def patch_map(
    activations: Float[Tensor, " n_image_tokens"],
    grid_size: tuple[int, int],
    size: tuple[int, int] | None = None,
) -> Float[Tensor, "height width"]:
    """Reshape per-patch values to the grid (row-major) and upsample bilinearly to ``size``.

    Args:
        activations: One value per image token, in the encoder's row-major patch order.
        grid_size: ``(h, w)`` of the patch grid (``model.image_encoder.grid_size``).
        size: ``(height, width)`` to upsample to (default: the grid itself).
    """
    h, w = grid_size
    if activations.numel() != h * w:
        raise ValueError(f"{activations.numel()} values do not fill a {h}x{w} patch grid")
    grid = activations.detach().float().reshape(1, 1, h, w)
    if size is not None and tuple(size) != (h, w):
        grid = torch.nn.functional.interpolate(
            grid, size=tuple(size), mode="bilinear", align_corners=False
        )
    return grid[0, 0]


def quantile_mask(
    values: Float[Tensor, "height width"], q: float = 0.95
) -> Bool[Tensor, "height width"]:
    """``values >= quantile(values, q)``: the unit's most active region."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    return values >= torch.quantile(values.float().flatten(), q)
