"""OpenAI CLIP's ResNet image towers as patch encoders, the way LiMBeR's ``clip_linear`` read them.

LiMBeR replaced the tower's attention pooling by ``rearrange("b d h w -> b (h w) d")``: RN50x16
at 384 px gives a 12x12 map of 3072-d features, 144 image tokens, preprocessed by a bicubic
resize of the short side, a centre crop and CLIP's normalisation. :class:`CLIPResNetEncoder`
does exactly that on open_clip's ``ModifiedResNet`` (open_clip loads OpenAI's weights with
``pretrained="openai"``); the pixels come from timm's eval transform with the same steps.

Example:
    >>> enc = CLIPResNetEncoder.from_open_clip("RN50x16")  # doctest: +SKIP
    >>> enc.grid_size, enc.n_tokens, enc.d_image  # doctest: +SKIP
    ((12, 12), 144, 3072)
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.errors import EncoderError, MissingPackageError

__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIPResNetEncoder"]

#: CLIP's pixel normalisation (OpenAI ``clip``'s ``_transform``; LiMBeR ``transforms.py``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: LiMBeR's names for OpenAI's ResNet towers (``image_encoders.clip_encoder``).
LIMBER_NAMES = {"clip_resnet": "RN50x4", "clip_resnet_large": "RN50x16"}
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class CLIPResNetEncoder(ImageEncoder):
    """A CLIP ResNet tower without attention pooling: ``[batch, (h w), d]`` in row-major order.

    Args:
        visual: open_clip's ``ModifiedResNet`` (``model.visual`` of a CLIP ResNet).
        image_size: Input resolution (default: the tower's own, 384 for RN50x16). It must be a
            multiple of 32 (the tower downsamples by 32).
        layer: ``None``: the last stage (LiMBeR); 0-3: the output of that stage.
        name: Recorded in saved configs.

    Raises:
        TypeError: ``visual`` is not a CLIP ResNet tower.
        ValueError: ``image_size`` does not divide into the tower's grid.
    """

    def __init__(
        self,
        visual: nn.Module,
        *,
        image_size: int | None = None,
        layer: int | None = None,
        name: str = "clip-resnet",
    ) -> None:
        self.pool = None
        if not all(hasattr(visual, a) for a in ("stem", *_STAGES)):
            raise EncoderError(
                f"{type(visual).__name__} is not a CLIP ResNet tower (stem, layer1..layer4): "
                "pass open_clip's model.visual of an RN50/RN50x4/RN50x16/RN50x64 model"
            )
        if layer is not None and not -4 <= layer < 4:
            raise EncoderError(f"layer={layer}: a CLIP ResNet has 4 stages (0..3, or None)")
        size = int(image_size if image_size is not None else getattr(visual, "image_size", 224))
        if size % 32:
            raise EncoderError(
                f"image_size={size} does not divide into a CLIP ResNet's grid (it downsamples by "
                f"32): use {size // 32 * 32} or {(size // 32 + 1) * 32} "
                f"(LiMBeR's clip_linear: 384 -> a 12x12 grid)"
            )
        data_config = {
            "input_size": (3, size, size),
            "interpolation": "bicubic",
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        super().__init__(
            visual,
            layer=layer,
            name=name,
            data_config=data_config,
            transform=timm.data.create_transform(**data_config, is_training=False),
            fixed_size=True,
        )

    @classmethod
    def from_open_clip(
        cls,
        name: str = "RN50x16",
        *,
        pretrained: str | None = "openai",
        image_size: int | None = None,
        layer: int | None = None,
        **kwargs: Any,
    ) -> CLIPResNetEncoder:
        """Build a CLIP ResNet with open_clip and keep its image tower.

        Args:
            name: open_clip model name (``"RN50x16"``; LiMBeR's ``"clip_resnet_large"`` too).
            pretrained: open_clip weights tag (``"openai"``: needs the hub or open_clip's
                cache), or ``None`` for random weights.
            image_size: See :class:`CLIPResNetEncoder`.
            layer: See :class:`CLIPResNetEncoder`.
            **kwargs: Passed to ``open_clip.create_model``.
        """
        try:
            import open_clip
        except ImportError as err:  # pragma: no cover - open_clip is a dependency
            raise MissingPackageError(
                "CLIP ResNet towers need open_clip: pip install open_clip_torch"
            ) from err

        arch = LIMBER_NAMES.get(name, name)
        if not arch.startswith("RN"):
            raise EncoderError(f"{name!r} is not a CLIP ResNet (RN50, RN50x4, RN50x16, RN50x64)")
        model = open_clip.create_model(arch, pretrained=pretrained, **kwargs)
        return cls(model.visual, image_size=image_size, layer=layer, name=f"open_clip:{arch}")

    def _features(self, pixel_values: Tensor) -> Tensor:
        x = self.model.stem(pixel_values)
        last = 3 if self.layer is None else self.layer % 4
        for stage in _STAGES[: last + 1]:
            x = getattr(self.model, stage)(x)
        return self._flatten_map(x)  # "b d h w -> b (h w) d"
