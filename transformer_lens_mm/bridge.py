"""``MultimodalTransformerBridge``: a TransformerLens ``TransformerBridge`` with sight.

Works on TransformerLens 3.9 and 4.x. The bridge is booted by TransformerLens's own
``boot_transformers`` and converted in place (its class becomes this subclass; nothing is copied),
then the two image hook points are registered in the bridge's hook registry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from transformer_lens_mm.injection import MultimodalMixin

__all__ = ["MultimodalTransformerBridge"]


class MultimodalTransformerBridge(MultimodalMixin, TransformerBridge):
    """A ``TransformerBridge`` that reads images as soft-prompt tokens.

    Same hook names and methods as :class:`HookedMultimodalTransformer`. Build it with
    :func:`transformer_lens_mm.from_parts` (``api="bridge"``) or convert a booted bridge with
    :meth:`from_bridge`.

    Example:
        >>> model = from_parts(lm="hf_folder", encoder=enc, projection=proj, api="bridge")
        >>> logits = model(images=[img])  # doctest: +SKIP
    """

    @classmethod
    def from_bridge(cls, bridge: TransformerBridge) -> MultimodalTransformerBridge:
        """Convert a booted ``TransformerBridge`` in place and return it."""
        if isinstance(bridge, cls):
            return bridge
        if type(bridge) is not TransformerBridge:
            raise TypeError(
                f"can only convert a plain TransformerBridge, got {type(bridge).__name__}"
            )
        bridge.__class__ = cls
        bridge._add_image_hook_points()  # __setattr__ registers the HookPoints by name
        return bridge

    def _lm_device(self) -> torch.device:
        return self.original_model.get_input_embeddings().weight.device

    def to(self, *args: Any, **kwargs: Any) -> MultimodalTransformerBridge:
        """Move the LM (TransformerBridge.to) and the image encoder and projection with it."""
        super().to(*args, **kwargs)
        kwargs.pop("print_details", None)
        for module in (self.image_encoder, self.image_projection):
            if module is not None:
                module.to(*args, **kwargs)
        return self

    def _kv_first_step(self, tokens: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        logits, past = self._lm_forward(
            tokens, attention_mask=attention_mask, return_type="logits_and_cache"
        )
        return logits, past

    def _kv_next_step(
        self, tokens: Tensor, attention_mask: Tensor, state: Any
    ) -> tuple[Tensor, Any]:
        # Hugging Face caches take the full mask (past + new positions).
        logits, past = self._lm_forward(
            tokens,
            attention_mask=attention_mask,
            past_key_values=state,
            return_type="logits_and_cache",
        )
        return logits, past
