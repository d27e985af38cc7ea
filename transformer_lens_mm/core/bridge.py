"""``MultimodalTransformerBridge``: a TransformerLens ``TransformerBridge`` with sight.

Works on TransformerLens 3.9 and 4.x. The bridge is booted by TransformerLens's own
``boot_transformers`` and converted in place (its class becomes this subclass; nothing is copied),
then the two image hook points are registered in the bridge's hook registry.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from transformer_lens_mm.core.mixin import MultimodalMixin
from transformer_lens_mm.fast.bridge import set_fused_bridge

__all__ = ["MultimodalTransformerBridge"]


def _accept_cache_kwarg() -> None:
    """Let the bridge's attention find the Hugging Face KV cache under ``cache=``.

    transformers 5.x passes the layer cache to attention modules as ``cache=``; TransformerLens
    4.3's ``AttentionBridge._update_kv_cache`` looks only for ``past_key_values``/``layer_past``,
    so the cache stays empty and cached decoding attends to nothing. The wrapper forwards
    ``cache`` as ``past_key_values`` when neither is given (a no-op where TL already finds it).
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )
    except ImportError:  # pragma: no cover - other TL layouts
        return
    original = getattr(AttentionBridge, "_update_kv_cache", None)
    if original is None or getattr(original, "_tlmm_wrapped", False):
        return

    def _update_kv_cache(self: Any, k: Tensor, v: Tensor, **kwargs: Any) -> Any:
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache._tlmm_wrapped = True  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]


_accept_cache_kwarg()


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
        set_fused_bridge(bridge)  # same values, faster, while the pattern/norm hooks are unused
        return bridge

    def to(self, *args: Any, **kwargs: Any) -> MultimodalTransformerBridge:
        """Move the LM (TransformerBridge.to) and the image encoder and projection with it."""
        super().to(*args, **kwargs)
        kwargs.pop("print_details", None)
        for module in (self.image_encoder, self.image_projection):
            if module is not None:
                module.to(*args, **kwargs)
        return self

    def _hf_accepts(self, name: str) -> bool:
        """Whether the wrapped Hugging Face model's ``forward`` takes the keyword ``name``."""
        forward = getattr(getattr(self, "original_model", None), "forward", None)
        if forward is None:
            return False
        try:
            return name in inspect.signature(forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            return False

    def _kv_first_step(self, tokens: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        # Positions count real tokens only (as the bridge derives them without a cache), so
        # that left padding shifts every position of an item by the same amount.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits are read (the batch is left-padded): as in Hugging
        # Face's generate, the unembedding of every other prompt position is skipped.
        keep = {"logits_to_keep": 1} if self._hf_accepts("logits_to_keep") else {}
        logits, past = self._lm_forward(
            tokens,
            attention_mask=attention_mask,
            position_ids=positions,
            return_type="logits_and_cache",
            **keep,
        )
        filled = getattr(past, "get_seq_length", lambda: -1)()
        if filled != tokens.shape[1]:
            # Seen with TransformerLens 4.3 + transformers 5.24 on Llama-family models: the
            # bridge's attention wrapper does not write into the Hugging Face cache (HF now
            # passes it as ``cache=``), so cached steps would attend to nothing. Recompute the
            # full sequence instead: slower, but correct.
            warnings.warn(
                f"the TransformerBridge returned a KV cache holding {filled} of "
                f"{tokens.shape[1]} positions for {self.cfg.architecture}; generating without "
                "a KV cache (correct, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            return logits, None
        return logits, past

    def _kv_next_step(
        self, tokens: Tensor, attention_mask: Tensor, state: Any
    ) -> tuple[Tensor, Any]:
        # Hugging Face caches take the full mask (past + new positions).
        positions = (
            attention_mask.sum(-1, keepdim=True)
            - tokens.shape[1]
            + torch.arange(tokens.shape[1], device=tokens.device)
        )
        logits, past = self._lm_forward(
            tokens,
            attention_mask=attention_mask,
            past_key_values=state,
            position_ids=positions,
            return_type="logits_and_cache",
        )
        return logits, past
