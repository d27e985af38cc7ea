"""The image-encoder contract: what a front end needs from a frozen image encoder.

:class:`ImageEncoder` is abstract: a family implements ``_features`` (pixels -> patch tokens,
setting ``grid_size``) and, where its pixels are not made by ``transform`` one image at a time,
``preprocess``. The base freezes the model, keeps it in eval mode, probes one blank image for
``d_image``, ``n_tokens`` and ``grid_size``, and checks pixels before a forward. The families
(one module each in this folder): :class:`~transformer_lens_mm.core.encoders.timm_encoder.
TimmEncoder`, :class:`~transformer_lens_mm.core.encoders.transformers_encoder.
TransformersEncoder`, :class:`~transformer_lens_mm.core.encoders.clip_resnet.CLIPResNetEncoder`,
:class:`~transformer_lens_mm.core.encoders.qwen_vision.QwenVisionEncoder`; pick one by kind with
:func:`~transformer_lens_mm.core.encoders.registry.create_encoder`, add one with
:func:`~transformer_lens_mm.core.encoders.registry.register_encoder`.

Example:
    >>> from transformer_lens_mm.core.encoders import create_encoder
    >>> enc = create_encoder("timm", "resnet10t", pretrained=False, num_classes=0)
    >>> isinstance(enc, ImageEncoder), enc.grid_size  # 176 px input
    (True, (6, 6))
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from transformer_lens_mm.core.images import ImageLike, to_rgb_images
from transformer_lens_mm.errors import EncoderError, InputShapeError

__all__ = ["ImageEncoder"]


class ImageEncoder(nn.Module, metaclass=ABCMeta):
    """A frozen image encoder that returns patch tokens ``[batch, n_tokens, d_image]``.

    Args:
        model: The encoder's module (frozen here: eval mode, no gradients).
        layer: Which block is read (``None``: the family's final features).
        name: Recorded in saved configs.
        data_config: How pixels are made; ``input_size`` is the per-image pixel shape
            (``(channels, height, width)`` for image tensors).
        transform: One PIL image -> its pixels (picklable: data-loader workers call it).
        fixed_size: Whether the encoder takes only ``input_size`` (else only the channel count
            is checked).

    Attributes:
        grid_size: ``(h, w)`` of the patch grid.
        n_tokens: ``h * w``.
        d_image: Feature dimension of each token.
    """

    grid_size: tuple[int, int]

    def __new__(cls, *args: Any, **kwargs: Any) -> ImageEncoder:
        if cls is ImageEncoder:
            raise EncoderError(
                "ImageEncoder is the encoders' interface, not an encoder: use the class of the "
                "model's family (TimmEncoder(model), TransformersEncoder(model, processor), "
                "CLIPResNetEncoder(visual)) or create_encoder(kind, name)"
            )
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: int | None,
        name: str,
        data_config: dict[str, Any],
        transform: Any,
        fixed_size: bool,
    ) -> None:
        super().__init__()
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

    @abstractmethod
    def _features(self, pixel_values: Tensor) -> Float[Tensor, "batch n_tokens d_image"]:
        """Pixels -> patch tokens (no checks, no ``no_grad``); sets ``self.grid_size``."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, mode: bool = True) -> ImageEncoder:
        """The encoder is frozen: it stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.model.eval()
        return self

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
            raise InputShapeError(
                f"pixel_values must be [batch, channel, height, width], got shape "
                f"{tuple(pixel_values.shape)}; raw images go through preprocess() first"
            )
        if pixel_values.shape[0] == 0:
            raise InputShapeError("the batch of images is empty: pass at least one image")
        expected = tuple(self.data_config["input_size"])
        if pixel_values.shape[1] != expected[0] or (
            self._fixed_size and tuple(pixel_values.shape[1:]) != expected
        ):
            raise InputShapeError(
                f"pixel_values have shape {tuple(pixel_values.shape[1:])} per image but the "
                f"encoder takes {expected}: preprocess raw images with encoder.preprocess(images) "
                "or pass them as images=..."
            )
        with torch.no_grad():
            param = next(self.model.parameters())
            return self._features(pixel_values.to(device=param.device, dtype=param.dtype))
