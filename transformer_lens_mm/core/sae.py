"""SAELens on images: ``HookedMultimodalSAETransformer``, SAELens's ``HookedSAETransformer`` with
sight (TransformerLens 3.x, where SAELens runs).

Every SAELens call works on a :class:`~transformer_lens_mm.core.layout.MultimodalInput`
(``run_with_saes``, ``run_with_cache_with_saes``, ``saes()``, ``add_sae``), with two
differences that matter at image positions:

* ``exclude_special_tokens=True`` does not skip the image positions: they hold a placeholder
  token id (pad/eos, which SAELens counts as special), but carry the soft-prompt tokens, so the
  SAE runs there; only the real special tokens are excluded;
* an SAE may sit on ``hook_embed``: the image tokens are written into its input, so it encodes
  the injected embeddings.

``from_parts(lm=<HookedSAETransformer>, ...)`` and
``HookedMultimodalTransformer.from_hooked_transformer(<HookedSAETransformer>)`` convert to it in
place. :func:`~transformer_lens_mm.tools.sae.image_sae_features` reads an SAE's feature
activations at the image positions.

Example:
    >>> model = from_parts(  # doctest: +SKIP
    ...     lm=hooked_sae_transformer, encoder=enc, projection=proj
    ... )
    >>> _, cache = model.run_with_cache_with_saes(batch, saes=[sae])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import HookedSAETransformer

from transformer_lens_mm.core.hooked import HookedMultimodalTransformer

__all__ = ["HookedMultimodalSAETransformer"]


class HookedMultimodalSAETransformer(HookedMultimodalTransformer, HookedSAETransformer):
    """SAELens's ``HookedSAETransformer`` that reads images as soft-prompt tokens."""

    @classmethod
    def from_hooked_transformer(
        cls, model: Any, *, fused: bool = True
    ) -> HookedMultimodalSAETransformer:
        """Convert a built ``HookedSAETransformer`` in place (no weight copy) and return it."""
        return cls._converted(model, HookedSAETransformer, fused)

    def _compute_exclusion_mask(self, tokens: torch.Tensor, exclude_special_tokens: Any) -> Any:
        """SAELens's mask of the positions the SAE skips, without the image positions of the
        input being injected (their placeholder id is not a real special token)."""
        mask = super()._compute_exclusion_mask(tokens, exclude_special_tokens)
        batch = self.injecting
        if batch is not None and tuple(batch.tokens.shape) == tuple(tokens.shape):
            mask = mask & ~batch.image_mask.to(mask.device)
        return mask
