"""``from_parts``: one call from (language model, image encoder, projection) to a model with sight.

Example:
    >>> model = from_parts(  # doctest: +SKIP
    ...     lm="EleutherAI/gpt-j-6b",
    ...     recipe="limber-beit",  # LiMBeR's encoder, pixels, prompt and layout
    ...     projection="limber_weights/beit_linear/proj.ckpt",
    ...     api="bridge",
    ... )
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.encoders import ImageEncoder, create_encoder
from transformer_lens_mm.core.hooked import HookedMultimodalTransformer
from transformer_lens_mm.core.lm_loading import default_api, load_bridge, load_hooked_transformer
from transformer_lens_mm.core.projection import ImageProjection, load_projection
from transformer_lens_mm.core.recipes import Recipe, get_recipe
from transformer_lens_mm.errors import ArgumentError, ArgumentTypeError, EncoderError
from transformer_lens_mm.fast.fusion import check_fused_flag, set_fused
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER, require_hooked_transformer

__all__ = ["from_parts"]


def _as_model(
    lm: Any, api: str, device: Any, dtype: torch.dtype, fused: bool
) -> HookedMultimodalTransformer | MultimodalTransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(lm, (MultimodalTransformerBridge, TransformerBridge)):
        if any(c.__name__ == "SAETransformerBridge" for c in type(lm).__mro__):  # SAELens's
            from transformer_lens_mm.core.sae import MultimodalSAETransformerBridge

            return MultimodalSAETransformerBridge.from_bridge(lm, fused=fused)
        return MultimodalTransformerBridge.from_bridge(lm, fused=fused)
    if HAS_HOOKED_TRANSFORMER:
        from transformer_lens import HookedTransformer

        if isinstance(lm, HookedTransformer):  # SAELens's class becomes the SAE subclass
            return HookedMultimodalTransformer.from_hooked_transformer(lm, fused=fused)
    if isinstance(lm, nn.Module):
        raise ArgumentTypeError(
            f"lm must be a HookedTransformer, a TransformerBridge, a model name or a folder; got "
            f"{type(lm).__name__}. For a Hugging Face model, pass its folder (save_pretrained)."
        )
    if not isinstance(lm, (str, os.PathLike)):
        raise ArgumentTypeError(f"lm must be a model, a name or a folder, got {type(lm).__name__}")
    if api == "hooked":
        require_hooked_transformer("api='hooked'")
        model = load_hooked_transformer(
            lm, cls=HookedMultimodalTransformer, device=device, dtype=dtype, fused=fused
        )
        set_fused(model, fused)  # a hub name: TL's from_pretrained built it with the default
        return model
    return MultimodalTransformerBridge.from_bridge(
        load_bridge(lm, device=device, dtype=dtype), fused=fused
    )


def from_parts(
    *,
    lm: Any,
    encoder: ImageEncoder | str | os.PathLike | None = None,
    projection: ImageProjection | str | os.PathLike,
    recipe: str | Recipe | None = None,
    api: Literal["hooked", "bridge"] | None = None,
    prompt: str | None = None,
    prepend_bos: bool | None = None,
    bos_token: str | None = None,
    encoder_pretrained: bool = True,
    encoder_layer: int | None = None,
    encoder_kind: str = "timm",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    require_mlp: bool = True,
    fused: bool = True,
) -> HookedMultimodalTransformer | MultimodalTransformerBridge:
    """Build a multimodal model from a language model, an image encoder and a projection.

    Args:
        lm: A ``HookedTransformer`` (SAELens's ``HookedSAETransformer`` too) or a
            ``TransformerBridge`` (converted in place), or a model name / local Hugging Face
            folder to load.
        encoder: An :class:`ImageEncoder`, a model name or local folder of family
            ``encoder_kind`` (a timm name by default), or ``None`` (features only).
            With ``recipe``: ``None`` loads the recipe's encoder from the hub, a path a local
            copy of it (see :meth:`~transformer_lens_mm.core.recipes.Recipe.build_encoder`).
        projection: An :class:`ImageProjection`, a LiMBeR ``proj.ckpt``, or our saved folder.
        recipe: A LiMBeR set-up by name (``"limber-beit"``, ``"limber-beit-ft"``,
            ``"limber-clip"``, ``"limber-nfrn50"``; :mod:`~transformer_lens_mm.core.recipes`):
            fixes the encoder, its preprocessing, the token count, the prompt and BOS, and
            checks the projection's width against it before anything is downloaded.
        api: ``"hooked"`` (TL 3.x ``HookedTransformer``) or ``"bridge"`` (``TransformerBridge``)
            when ``lm`` is a name/folder; default: ``"hooked"`` on TL 3.x, ``"bridge"`` on 4.x.
        prompt: Default prompt after the image tokens (default: the projection's, else
            ``"A picture of"``).
        prepend_bos: BOS before the image tokens (default: the projection's, else False).
        bos_token: The token used as BOS when not the tokenizer's (default: the projection's).
        encoder_pretrained: Whether a timm name loads pretrained weights.
        encoder_layer: Encoder block to read (None: final features).
        encoder_kind: The family a name as ``encoder`` belongs to (``"timm"``,
            ``"transformers"``, ``"clip-resnet"`` or a kind added with
            :func:`~transformer_lens_mm.core.encoders.register_encoder`).
        device: Device of the whole model.
        dtype: Dtype of the language model.
        require_mlp: Refuse attention-only LMs.
        fused: The speed layer (``transformer_lens_mm.fast``): the same numbers as
            TransformerLens's own modules with fewer operations while no hook needs their
            intermediate values; ``False`` runs TL's own modules (bit for bit). Switch later
            with ``set_fused(model, ...)`` or ``with model.fused(False): ...``.

    Returns:
        A :class:`HookedMultimodalTransformer` or :class:`MultimodalTransformerBridge`; both
        satisfy :class:`~transformer_lens_mm.core.contract.MultimodalModel`.
    """
    fused = check_fused_flag(fused)
    api = api or default_api()
    if api not in ("hooked", "bridge"):
        raise ArgumentError(f"api must be 'hooked' or 'bridge', got {api!r}")
    if recipe is not None:
        recipe = get_recipe(recipe)
        source = "the projection"
        if not isinstance(projection, ImageProjection):
            source, projection = str(projection), load_projection(projection)
        recipe.check_projection(projection.d_image, source=source)
        if isinstance(encoder, ImageEncoder):
            recipe.check_encoder(encoder)
        else:
            encoder = recipe.build_encoder(encoder, pretrained=encoder_pretrained)
        prompt = recipe.prompt if prompt is None else prompt
        prepend_bos = recipe.prepend_bos if prepend_bos is None else prepend_bos
    model = _as_model(lm, api, device, dtype, fused)
    if isinstance(lm, (str, os.PathLike)):
        model.lm_name = Path(lm).name if Path(lm).is_dir() else str(lm)
    if isinstance(encoder, os.PathLike):
        encoder = str(encoder)  # a local folder: what its family's library loads by name
    if isinstance(encoder, str):
        encoder = create_encoder(
            encoder_kind, encoder, pretrained=encoder_pretrained, layer=encoder_layer
        )
    elif encoder is not None and not isinstance(encoder, ImageEncoder):
        raise EncoderError(
            f"encoder must be an ImageEncoder or a model name (of kind encoder_kind="
            f"{encoder_kind!r}), got {type(encoder).__name__}"
        )
    if not isinstance(projection, ImageProjection):
        d_image = encoder.d_image if encoder is not None else None
        projection = load_projection(projection, d_image=d_image, d_model=int(model.cfg.d_model))
    model.attach_vision(
        encoder,
        projection,
        prompt=prompt,
        prepend_bos=prepend_bos,
        bos_token=bos_token,
        require_mlp=require_mlp,
    )
    return model.eval()
