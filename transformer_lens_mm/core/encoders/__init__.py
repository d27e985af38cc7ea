"""Frozen image encoders that return one feature vector per image patch, one module per family.

* :mod:`~transformer_lens_mm.core.encoders.base`: :class:`ImageEncoder`, the contract a front
  end needs (``preprocess``, ``forward``, ``transform``, ``grid_size``, ``n_tokens``,
  ``d_image``, ``name``, ``layer``);
* :mod:`~transformer_lens_mm.core.encoders.timm_encoder`: :class:`TimmEncoder` (any timm model);
* :mod:`~transformer_lens_mm.core.encoders.transformers_encoder`: :class:`TransformersEncoder`
  (transformers vision models, with their own image processors);
* :mod:`~transformer_lens_mm.core.encoders.clip_resnet`: :class:`CLIPResNetEncoder` (OpenAI
  CLIP's ResNet towers without attention pooling, through open_clip);
* :mod:`~transformer_lens_mm.core.encoders.qwen_vision`: :class:`QwenVisionEncoder` (Qwen2.5-VL's
  tower at a pinned resolution) and its merger;
* :mod:`~transformer_lens_mm.core.encoders.registry`: :func:`create_encoder` by kind,
  :func:`register_encoder` for a new family.

Example:
    >>> enc = create_encoder("timm", "vit_tiny_patch16_224", pretrained=False, img_size=32,
    ...                      patch_size=8, depth=1)
    >>> enc.grid_size, enc.n_tokens, enc.d_image
    ((4, 4), 16, 192)
"""

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.core.encoders.clip_resnet import CLIPResNetEncoder
from transformer_lens_mm.core.encoders.qwen_vision import QwenVisionEncoder
from transformer_lens_mm.core.encoders.registry import (
    create_encoder,
    encoder_kinds,
    register_encoder,
)
from transformer_lens_mm.core.encoders.timm_encoder import TimmEncoder
from transformer_lens_mm.core.encoders.transformers_encoder import TransformersEncoder

__all__ = [
    "CLIPResNetEncoder",
    "ImageEncoder",
    "QwenVisionEncoder",
    "TimmEncoder",
    "TransformersEncoder",
    "create_encoder",
    "encoder_kinds",
    "register_encoder",
]
