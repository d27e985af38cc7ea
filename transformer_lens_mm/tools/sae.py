"""SAE features at image positions: what a sparse autoencoder reads in the soft-prompt tokens.

:func:`image_sae_features` runs SAELens's ``run_with_cache_with_saes`` on a multimodal batch
(a :class:`~transformer_lens_mm.core.sae.HookedMultimodalSAETransformer`, TL 3.x) and returns
the SAE's feature activations at each item's image positions.

Example:
    >>> acts = image_sae_features(model, batch, sae)  # doctest: +SKIP
    >>> acts.shape  # [batch, n_image_tokens, d_sae]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput

__all__ = ["image_sae_features"]


def image_sae_features(
    model: MultimodalModel,
    batch: MultimodalInput,
    sae: Any,
    *,
    activation: str = "hook_sae_acts_post",
    **kwargs: Any,
) -> Float[Tensor, "batch n_image_tokens d_sae"]:
    """The SAE's feature activations at the image positions of ``batch``.

    Args:
        model: A ``HookedMultimodalSAETransformer`` (``from_parts`` given SAELens's
            ``HookedSAETransformer``).
        batch: The input.
        sae: An SAELens SAE; it sits at ``sae.cfg.metadata.hook_name``.
        activation: Which of the SAE's hook points (``hook_sae_acts_pre``/``_post``, ...).
        **kwargs: For ``run_with_cache_with_saes`` (``use_error_term``,
            ``exclude_special_tokens``, ...).

    Raises:
        TypeError: the model cannot run SAEs (not a ``HookedSAETransformer``).
        ValueError: the SAE's hook point is not one of the model's.
    """
    runner = getattr(model, "run_with_cache_with_saes", None)
    if runner is None:
        raise TypeError(
            f"{type(model).__name__} cannot run SAEs: build the model from SAELens's "
            "HookedSAETransformer (from_parts(lm=HookedSAETransformer.from_pretrained(...), ...)"
            "; TransformerLens 3.x, where SAELens runs)"
        )
    hook_name = sae.cfg.metadata.hook_name
    if hook_name not in model.hook_dict and hook_name != "hook_embed":
        raise ValueError(
            f"the SAE reads {hook_name!r}, which is not a hook point of this model; pick an SAE "
            "trained on one of model.hook_dict's names"
        )
    name = f"{hook_name}.{activation}"
    _, cache = runner(batch, saes=[sae], names_filter=lambda n: n == name, **kwargs)
    rows = batch.image_positions
    index = torch.arange(len(batch), device=rows.device)[:, None]
    return cache[name][index, rows]
