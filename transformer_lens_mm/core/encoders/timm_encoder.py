"""The timm family: any timm model as a frozen patch encoder (:class:`TimmEncoder`).

ViT/BEiT-like models give their final hidden state without the CLS/prefix tokens
(``[batch, h*w, d_image]``); CNNs give their final feature map flattened in row-major order (a
7x7 map gives 49 tokens), or one average-pooled token with ``pool="avg"`` (LiMBeR's ``nfrn50``).
``layer`` reads an intermediate block through timm's ``forward_intermediates``; pixels come
from timm's own eval transform (``resolve_model_data_config`` + ``create_transform``).

Example:
    >>> enc = TimmEncoder.from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    >>> enc.grid_size, enc.n_tokens, enc.d_image
    ((4, 4), 16, 192)
"""

from __future__ import annotations

import math
from typing import Any

import timm
from torch import Tensor, nn

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.errors import ConfigError, EncoderError

__all__ = ["TimmEncoder"]


class TimmEncoder(ImageEncoder):
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

    Raises:
        EncoderError: ``model`` is not a timm model, or cannot read ``layer``.
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
        if pool not in (None, "avg"):
            raise ConfigError(f"pool must be None or 'avg', got {pool!r}")
        self.pool = pool
        if not hasattr(model, "forward_features"):
            raise EncoderError(
                f"{type(model).__name__} is not a timm model (no forward_features): build the "
                "encoder with TimmEncoder.from_timm(name), or use the front end of its family "
                "(create_encoder(kind, name); kinds: encoder_kinds())"
            )
        if layer is not None and not hasattr(model, "forward_intermediates"):
            raise EncoderError(
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
        super().__init__(
            model,
            layer=layer,
            name=name or pretrained_cfg.get("architecture") or type(model).__name__,
            data_config=dict(data_config),
            transform=timm.data.create_transform(**data_config, is_training=False),
            fixed_size=getattr(patch_embed, "img_size", None) is not None
            and not getattr(patch_embed, "dynamic_img_size", False),
        )

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
    ) -> TimmEncoder:
        """Create a timm model by name and wrap it.

        Args:
            name: timm model name, e.g. ``"beit_large_patch16_224.in22k_ft_in22k"``.
            pretrained: Load timm's pretrained weights (needs the hub or a local cache).
            layer: See :class:`TimmEncoder`.
            pool: See :class:`TimmEncoder`.
            data_config: See :class:`TimmEncoder`.
            **kwargs: Passed to ``timm.create_model`` (e.g. ``img_size``).

        Example:
            >>> TimmEncoder.from_timm("resnet10t", num_classes=0).grid_size  # 176 px input
            (6, 6)
        """
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ConfigError(
                    f"timm has no model called {name!r}; list names with timm.list_models()"
                ) from err
            raise
        return cls(model, layer=layer, name=name, pool=pool, data_config=data_config)

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
            raise EncoderError(
                f"{self.name} gave features of shape {tuple(feats.shape)}: a patch encoder "
                "gives [batch, tokens, d] or a [batch, d, h, w] map"
            )
        if self.pool == "avg":
            raise ConfigError(
                f"pool='avg' is for feature maps; {self.name} gives tokens: use pool=None"
            )
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
