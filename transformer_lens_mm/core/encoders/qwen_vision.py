"""Qwen2.5-VL's vision tower and patch merger as a frozen patch encoder and a projector.

Qwen2.5-VL reads images at their own resolution, as flattened patches with window attention in
its tower and a 2x2 patch merger after it. :class:`QwenVisionEncoder` pins the resolution (every
image resized to one square size, so every image has the same number of tokens), undoes the
window order, and returns the tower's output as ``[batch, n_patches, d_vision]`` with each merge
block's vectors consecutive; :class:`QwenMerger` maps that to the image tokens the language
model reads. :class:`~transformer_lens_mm.core.native.NativeVLMBridge` puts the two at
``hook_image_features`` and ``hook_image_embed``.

Example:
    >>> enc = QwenVisionEncoder(visual, config, processor, 448, "qwen")  # doctest: +SKIP
    >>> enc.grid_size, enc.n_tokens  # 32 x 32 patches (2x2-merged: 256 tokens)  # doctest: +SKIP
    ((32, 32), 1024)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.core.images import ImageLike, to_rgb_images
from transformer_lens_mm.errors import ConfigError, InputShapeError

__all__ = ["FixedSizeTransform", "QwenMerger", "QwenVisionEncoder"]


class FixedSizeTransform:
    """One PIL image -> the processor's pixels at a fixed ``size x size`` (Qwen2.5-VL's
    variable resolution pinned, so that every image has the same number of tokens);
    picklable, as ``encoder.transform`` for data-loader workers."""

    def __init__(self, processor: Any, size: int) -> None:
        self.processor, self.size = processor, int(size)

    def __call__(self, image: Image.Image) -> Tensor:
        return self.many([image])[0]

    def many(self, images: Sequence[Image.Image]) -> Tensor:
        resized = [im.resize((self.size, self.size), Image.Resampling.BICUBIC) for im in images]
        out = self.processor(images=resized, return_tensors="pt")
        return out["pixel_values"].view(len(images), -1, out["pixel_values"].shape[-1])


class QwenVisionEncoder(ImageEncoder):
    """Qwen2.5-VL's vision tower up to its patch merger: ``[batch, n_patches, d_vision]`` in the
    image's row-major order of merge groups (each ``merge x merge`` patch block, the four
    vectors one image token is made of, consecutive), window attention undone.

    Pixels are the processor's flattened patches per image, ``[batch, n_patches, patch_dim]``
    at a fixed ``size x size`` (:class:`FixedSizeTransform`).
    """

    def __init__(
        self, visual: torch.nn.Module, config: Any, processor: Any, size: int, name: str
    ) -> None:
        self.pool = None
        self.patch_size = int(config.patch_size)
        self.merge = int(config.spatial_merge_size)
        self.window_size = int(config.window_size)
        factor = self.patch_size * self.merge
        if size % factor:
            raise ConfigError(
                f"image_size={size} is not a multiple of {factor} (patch {self.patch_size} x "
                f"merge {self.merge}): use e.g. {max(factor, size // factor * factor)}"
            )
        self.side = size // self.patch_size
        transform = FixedSizeTransform(processor, size)
        probe = transform(Image.new("RGB", (size, size)))
        super().__init__(
            visual,
            layer=None,
            name=name,
            data_config={"input_size": tuple(int(x) for x in probe.shape), "size": size},
            transform=transform,
            fixed_size=True,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def grid_thw(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Qwen's ``image_grid_thw`` of ``n`` images at the pinned size (one frame each)."""
        return torch.tensor([[1, self.side, self.side]] * n, device=device)

    def _features(self, pixel_values: Tensor) -> Tensor:
        from transformers.vision_utils import get_vision_window_index

        n, n_patches, dim = pixel_values.shape
        grid = self.grid_thw(n, pixel_values.device)
        out = self.model(pixel_values.reshape(n * n_patches, dim), grid_thw=grid)
        hidden = out.last_hidden_state  # merge groups in window-attention order
        window_index, _ = get_vision_window_index(
            grid, self.merge, self.window_size, self.patch_size
        )
        unit = self.merge * self.merge
        order = torch.argsort(window_index.to(hidden.device))
        self.grid_size = (self.side, self.side)
        return hidden.view(-1, unit, hidden.shape[-1])[order].view(n, n_patches, -1)

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Raw images -> ``[batch, n_patches, patch_dim]`` at the fixed size."""
        return self.transform.many(to_rgb_images(images)).to(self.device)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode preprocessed images (no gradient: the tower is frozen)."""
        expected = tuple(self.data_config["input_size"])
        if pixel_values.ndim != 3 or tuple(pixel_values.shape[1:]) != expected:
            raise InputShapeError(
                f"pixel_values must be [batch, {expected[0]}, {expected[1]}] (flattened patches "
                f"of {self.data_config['size']} px images), got {tuple(pixel_values.shape)}: "
                "pass raw images as images=..."
            )
        with torch.no_grad():
            param = next(self.model.parameters())
            return self._features(pixel_values.to(device=param.device, dtype=param.dtype))


class QwenMerger(torch.nn.Module):
    """Qwen2.5-VL's patch merger as a per-image projector: ``[batch, n_patches, d_vision]`` ->
    ``[batch, n_patches / merge^2, d_model]``."""

    def __init__(self, merger: torch.nn.Module, unit: int) -> None:
        super().__init__()
        self.merger, self.unit = merger, unit

    def forward(self, features: Tensor) -> Tensor:
        n = features.shape[0]
        return self.merger(features.reshape(-1, features.shape[-1])).view(n, -1, self.merger_out)

    @property
    def merger_out(self) -> int:
        return int(self.merger.mlp[-1].out_features)
