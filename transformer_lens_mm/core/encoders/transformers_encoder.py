"""transformers vision models as frozen patch encoders, with their own image processors.

:class:`TransformersEncoder` wraps ``BeitModel``, ``ViTModel``, ``CLIPVisionModel``,
``SiglipVisionModel``, ``Dinov2Model`` (and any transformers model whose forward takes
``pixel_values`` and returns patch tokens or a feature map): the prefix tokens (CLS, registers)
are dropped, the patch grid is kept, and ``layer`` picks a block. Pixels come from the model's
own image processor (``AutoImageProcessor``), so an encoder and its preprocessing travel
together, as LiMBeR's ``beit_linear`` had them (``BeitModel(...).last_hidden_state[:, 1:]`` on
``BeitFeatureExtractor`` pixels).

Example:
    >>> enc = TransformersEncoder.from_pretrained(  # doctest: +SKIP
    ...     "microsoft/beit-large-patch16-224-pt22k", backend="pil")
    >>> enc.grid_size, enc.n_tokens, enc.d_image  # doctest: +SKIP
    ((14, 14), 196, 1024)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor, nn

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.core.images import ImageLike, to_rgb_images
from transformer_lens_mm.errors import EncoderError

__all__ = ["ProcessorTransform", "TransformersEncoder"]


class ProcessorTransform:
    """One PIL image -> ``[channel, height, width]`` pixels through a transformers image
    processor (picklable, so data-loader workers can use it as ``encoder.transform``)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> Float[Tensor, "channel height width"]:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


def _vision_part(model: nn.Module) -> nn.Module:
    """A dual-encoder (``CLIPModel``, ``SiglipModel``) -> its vision tower; others unchanged."""
    if "pixel_values" in inspect.signature(model.forward).parameters and not hasattr(
        model, "text_model"
    ):
        return model
    vision = getattr(model, "vision_model", None)
    return vision if isinstance(vision, nn.Module) else model


def _config_of(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    return getattr(config, "vision_config", config)


class TransformersEncoder(ImageEncoder):
    """A frozen transformers vision model that returns patch tokens ``[batch, h*w, d_image]``.

    Args:
        model: A transformers vision model (its forward takes ``pixel_values``), or a
            dual encoder whose ``vision_model`` is one.
        processor: Its image processor (``AutoImageProcessor.from_pretrained(folder)``).
        layer: ``None``: the model's ``last_hidden_state`` (what LiMBeR read); an int: the
            output of that block (0-based, negative from the end; ``hidden_states[layer + 1]``,
            before any final norm).
        name: A name recorded in saved configs (default: the model's ``name_or_path``).

    Raises:
        TypeError: ``model`` is not a vision model (no ``pixel_values`` input).
        ValueError: its output has no patch tokens (only pooled vectors), or fewer tokens than
            its patch grid.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        *,
        layer: int | None = None,
        name: str | None = None,
    ) -> None:
        self.pool = None
        model = _vision_part(model)
        if "pixel_values" not in inspect.signature(model.forward).parameters:
            raise EncoderError(
                f"{type(model).__name__} is not a vision model (its forward takes no "
                "pixel_values); pass a vision model such as BeitModel, ViTModel, "
                "CLIPVisionModel, SiglipVisionModel or Dinov2Model"
            )
        config = _config_of(model)
        self.patch_size = getattr(config, "patch_size", None)
        if isinstance(self.patch_size, (list, tuple)):
            self.patch_size = int(self.patch_size[0])
        n_blocks = getattr(config, "num_hidden_layers", None)
        if layer is not None and n_blocks is not None and not -n_blocks <= layer < n_blocks:
            raise EncoderError(
                f"layer={layer} is out of range: {type(model).__name__} has {n_blocks} blocks "
                f"(use 0..{n_blocks - 1}, negative from the end, or None for last_hidden_state)"
            )
        transform = ProcessorTransform(processor)
        probe = transform(Image.new("RGB", (256, 256)))
        self.processor = processor
        super().__init__(
            model,
            layer=layer,
            name=name
            or str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
            or type(model).__name__,
            data_config={
                "input_size": tuple(int(x) for x in probe.shape),
                "processor": type(processor).__name__,
            },
            transform=transform,
            fixed_size=True,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike,
        *,
        layer: int | None = None,
        pretrained: bool = True,
        backend: str | None = None,
        **kwargs: Any,
    ) -> TransformersEncoder:
        """Load a vision model and its image processor by hub name or local folder.

        Args:
            name_or_folder: e.g. ``"microsoft/beit-large-patch16-224-pt22k"`` or a folder
                written by ``save_pretrained`` (model and processor).
            layer: See :class:`TransformersEncoder`.
            pretrained: ``False`` builds the architecture from its config with random weights
                (LiMBeR's ``beit_random_linear``).
            backend: The image processor's backend (``"pil"``: LiMBeR's PIL resizing;
                ``"torchvision"``; ``None``: transformers' default).
            **kwargs: Passed to ``AutoModel.from_pretrained`` (e.g. ``torch_dtype``).
        """
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        extra = {} if backend is None else {"backend": backend}
        processor = AutoImageProcessor.from_pretrained(name_or_folder, **extra)
        if pretrained:
            model = AutoModel.from_pretrained(name_or_folder, **kwargs)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(name_or_folder))
        return cls(model, processor, layer=layer, name=str(name_or_folder))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _features(self, pixel_values: Tensor) -> Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=self.layer is not None)
        if self.layer is not None:
            feats = out.hidden_states[self.layer + 1 if self.layer >= 0 else self.layer]
        else:
            feats = getattr(out, "last_hidden_state", None)
        if feats is None or feats.ndim not in (3, 4):
            raise EncoderError(
                f"{type(self.model).__name__} has no patch tokens (its output has no "
                "last_hidden_state of [batch, tokens, d] or [batch, d, h, w]); use a model "
                "that keeps them (e.g. BeitModel, ViTModel, CLIPVisionModel, Dinov2Model)"
            )
        if feats.ndim == 4:  # ConvNext/ResNet-style feature maps
            return self._flatten_map(feats)
        if self.patch_size is None:
            raise EncoderError(
                f"{type(self.model).__name__}'s config has no patch_size, so its patch tokens "
                "cannot be told from prefix tokens; pass a ViT-style vision model"
            )
        h, w = (int(s) // self.patch_size for s in pixel_values.shape[-2:])
        n_prefix = feats.shape[1] - h * w
        if n_prefix < 0:
            raise EncoderError(
                f"{type(self.model).__name__} returned {feats.shape[1]} tokens for a {h}x{w} "
                f"patch grid ({tuple(pixel_values.shape[-2:])} px, patch {self.patch_size}): it "
                "has no patch tokens to read"
            )
        self.grid_size = (h, w)
        return feats[:, n_prefix:]

    def preprocess(
        self, images: ImageLike | Sequence[ImageLike]
    ) -> Float[Tensor, "batch channel height width"]:
        """Raw images -> pixels through the model's own image processor."""
        pil = to_rgb_images(images)
        return self.processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
