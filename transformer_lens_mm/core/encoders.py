"""Frozen image encoders that return one feature vector per image patch.

:class:`ImageEncoder` is the one encoder interface (``preprocess``, ``forward``, ``transform``,
``grid_size``, ``n_tokens``, ``d_image``, ``name``, ``layer``) and wraps any timm model.
ViT/BEIT-like models give their final hidden state without the CLS/prefix tokens
(``[batch, h*w, d_image]``); CNNs give their final feature map flattened in row-major order (a
7x7 map gives 49 tokens), or one average-pooled token with ``pool="avg"``. ``grid_size`` keeps
``(h, w)`` so that later tools can draw per-patch maps over the image.

Other front ends are thin subclasses of it:
:class:`~transformer_lens_mm.core.hf_encoders.TransformersEncoder` (transformers vision models,
with their own image processors) and
:class:`~transformer_lens_mm.core.clip_encoders.CLIPResNetEncoder` (OpenAI CLIP's ResNet towers
without attention pooling, through open_clip).

Example:
    >>> enc = ImageEncoder.from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    >>> enc.grid_size, enc.n_tokens, enc.d_image
    ((4, 4), 16, 192)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from jaxtyping import Float
from torch import Tensor, nn

from transformer_lens_mm.core.images import ImageLike, to_rgb_images

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module):
    """A frozen timm image model that returns patch tokens ``[batch, n_tokens, d_image]``.

    Args:
        model: A timm model (anything with ``forward_features``; ``forward_intermediates`` for
            ``layer``).
        layer: ``None`` for the final hidden state / feature map, or the index of an
            intermediate block/stage (timm's ``forward_intermediates`` indices).
        name: A name recorded in saved configs (defaults to timm's architecture name).
        data_config: timm data config (input size, mean, std, interpolation, crop); resolved
            from the model when not given.
        pool: ``None`` (one token per cell of the feature map) or ``"avg"``: the map averaged
            into one token (LiMBeR's ``nfrn50`` encoders).

    Attributes:
        grid_size: ``(h, w)`` of the patch grid.
        n_tokens: ``h * w``.
        d_image: Feature dimension of each token.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: int | None = None,
        name: str | None = None,
        data_config: dict[str, Any] | None = None,
        pool: str | None = None,
    ) -> None:
        super().__init__()
        if pool not in (None, "avg"):
            raise ValueError(f"pool must be None or 'avg', got {pool!r}")
        self.pool = pool
        if not hasattr(model, "forward_features"):
            raise TypeError(
                f"{type(model).__name__} is not a timm model (no forward_features); build the "
                "encoder with ImageEncoder.from_timm(name) or pass a timm model"
            )
        if layer is not None and not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"{type(model).__name__} has no forward_intermediates, so layer={layer} cannot "
                "be read; use layer=None (final features)"
            )
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        if data_config is None:
            data_config = dict(timm.data.resolve_model_data_config(model))
            # A ViT built with another img_size keeps its pretrained cfg's input size: follow the
            # size the patch embedding actually accepts.
            fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
            if fixed is not None and not getattr(model.patch_embed, "dynamic_img_size", False):
                data_config["input_size"] = (data_config["input_size"][0], *map(int, fixed))
        patch_embed = getattr(model, "patch_embed", None)
        self._setup(
            model,
            layer=layer,
            name=name or pretrained_cfg.get("architecture") or type(model).__name__,
            data_config=dict(data_config),
            transform=timm.data.create_transform(**data_config, is_training=False),
            fixed_size=getattr(patch_embed, "img_size", None) is not None
            and not getattr(patch_embed, "dynamic_img_size", False),
        )

    def _setup(
        self,
        model: nn.Module,
        *,
        layer: int | None,
        name: str,
        data_config: dict[str, Any],
        transform: Any,
        fixed_size: bool,
    ) -> None:
        """What every front end shares: freeze ``model``, record how pixels are made
        (``data_config["input_size"]`` is ``(channels, height, width)``), and probe one zero
        image for ``d_image``, ``n_tokens`` and ``grid_size``."""
        self.model = model.eval().requires_grad_(False)
        self.layer = layer
        self.name = name
        self.data_config = data_config
        self.transform = transform
        self._fixed_size = fixed_size
        with torch.no_grad():
            probe = self._features(torch.zeros(1, *self.data_config["input_size"]))
        self.d_image: int = int(probe.shape[-1])
        self.n_tokens: int = int(probe.shape[1])
        # _features sets self.grid_size

    @classmethod
    def from_timm(
        cls,
        name: str,
        *,
        pretrained: bool = False,
        layer: int | None = None,
        pool: str | None = None,
        data_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ImageEncoder:
        """Create a timm model by name and wrap it.

        Args:
            name: timm model name, e.g. ``"beit_large_patch16_224.in22k_ft_in22k"``.
            pretrained: Load timm's pretrained weights (needs the hub or a local cache).
            layer: See :class:`ImageEncoder`.
            pool: See :class:`ImageEncoder`.
            data_config: See :class:`ImageEncoder`.
            **kwargs: Passed to ``timm.create_model`` (e.g. ``img_size``).

        Example:
            >>> ImageEncoder.from_timm("resnet10t", num_classes=0).grid_size  # 176 px input
            (6, 6)
        """
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ValueError(
                    f"timm has no model called {name!r}; list names with timm.list_models()"
                ) from err
            raise
        return cls(model, layer=layer, name=name, pool=pool, data_config=data_config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> ImageEncoder:
        """The encoder is frozen: it stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

    def _features(self, pixel_values: Tensor) -> Tensor:
        if self.layer is None:
            feats = self.model.forward_features(pixel_values)
        else:
            feats = self.model.forward_intermediates(
                pixel_values, indices=[self.layer], intermediates_only=True, output_fmt="NCHW"
            )[-1]
        if feats.ndim == 4:  # [batch, C, h, w] from CNNs and forward_intermediates
            return self._flatten_map(feats)
        if feats.ndim != 3:
            raise ValueError(f"unexpected encoder output of shape {tuple(feats.shape)}")
        if self.pool == "avg":
            raise ValueError(f"pool='avg' is for feature maps; {self.name} gives tokens")
        n_prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        feats = feats[:, n_prefix:]
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == feats.shape[1]:
            self.grid_size = (int(grid[0]), int(grid[1]))
        else:
            side = math.isqrt(feats.shape[1])
            self.grid_size = (
                (side, feats.shape[1] // side)
                if side * side == feats.shape[1]
                else (
                    1,
                    feats.shape[1],
                )
            )
        return feats

    def _flatten_map(
        self, feats: Float[Tensor, "batch channel h w"]
    ) -> Float[Tensor, "batch n_tokens channel"]:
        """A feature map as tokens in row-major order (``b d h w -> b (h w) d``), or averaged
        into one token with ``pool="avg"``."""
        if getattr(self, "pool", None) == "avg":
            self.grid_size = (1, 1)
            return feats.mean((2, 3))[:, None, :]
        self.grid_size = (int(feats.shape[2]), int(feats.shape[3]))
        return feats.flatten(2).transpose(1, 2)

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> Float[Tensor, "batch channel height width"]:
        """Apply the encoder's eval transform to raw images.

        Args:
            images: One image or a batch (see :data:`transformer_lens_mm.core.images.ImageLike`).

        Returns:
            ``pixel_values`` on the encoder's device.
        """
        pil = to_rgb_images(images)
        return torch.stack([self.transform(img) for img in pil]).to(self.device)

    def forward(
        self, pixel_values: Float[Tensor, "batch channel height width"]
    ) -> Float[Tensor, "batch n_image_tokens d_image"]:
        """Encode preprocessed images into patch tokens (no gradient: the encoder is frozen)."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be [batch, channel, height, width], got shape "
                f"{tuple(pixel_values.shape)}; raw images go through preprocess() first"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("the batch of images is empty: pass at least one image")
        expected = tuple(self.data_config["input_size"])
        if pixel_values.shape[1] != expected[0] or (
            self._fixed_size and tuple(pixel_values.shape[1:]) != expected
        ):
            raise ValueError(
                f"pixel_values have shape {tuple(pixel_values.shape[1:])} per image but the "
                f"encoder takes {expected}: preprocess raw images with encoder.preprocess(images) "
                "or pass them as images=..."
            )
        with torch.no_grad():
            param = next(self.model.parameters())
            return self._features(pixel_values.to(device=param.device, dtype=param.dtype))
