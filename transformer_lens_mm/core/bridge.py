"""``MultimodalTransformerBridge``: a TransformerLens ``TransformerBridge`` with sight.

Works on TransformerLens 3.9 and 4.x. The bridge is booted by TransformerLens's own
``boot_transformers`` and converted in place (its class becomes this subclass; nothing is copied),
then the two image hook points are registered in the bridge's hook registry. Building one
applies :data:`~transformer_lens_mm.fast.patches.KV_CACHE_PATCH` (the bridge's attention then
finds transformers 5's KV cache; listed by ``fast.patches.applied()``, undone by its ``undo()``);
importing the package changes nothing in TransformerLens.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import modeling_utils as _modeling_utils

from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.mixin import MultimodalMixin
from transformer_lens_mm.fast.patches import KV_CACHE_PATCH

__all__ = ["MultimodalTransformerBridge"]

# Hugging Face forward -> the names of its parameters (read once per class)
_PARAMETERS: dict[Any, frozenset[str]] = {}
# transformers >= 5 slices logits_to_keep=[batch, n] per row (older: one list for every row)
_PER_ROW_KEEP = hasattr(_modeling_utils, "slice_logits_to_keep")


class MultimodalTransformerBridge(MultimodalMixin, TransformerBridge):
    """A ``TransformerBridge`` that reads images as soft-prompt tokens.

    Same hook names and methods as :class:`HookedMultimodalTransformer`. Build it with
    :func:`transformer_lens_mm.from_parts` (``api="bridge"``) or convert a booted bridge with
    :meth:`from_bridge`.

    Example:
        >>> model = from_parts(  # doctest: +SKIP
        ...     lm="hf_folder", encoder=enc, projection=proj, api="bridge"
        ... )
        >>> logits = model(images=[img])  # doctest: +SKIP
    """

    @classmethod
    def from_bridge(
        cls, bridge: TransformerBridge, *, fused: bool = True
    ) -> MultimodalTransformerBridge:
        """Convert a booted ``TransformerBridge`` in place and return it.

        Args:
            bridge: A plain ``TransformerBridge`` (``boot_transformers`` or ``boot_native``).
            fused: The speed layer (``transformer_lens_mm.fast``): same numbers as the bridge's
                own modules, fewer operations; ``False`` for the bridge's own modules bit for
                bit.
        """
        if type(bridge) is TransformerBridge:  # a bridge is about to become multimodal
            KV_CACHE_PATCH.apply()
        # the hook points register themselves by name (the bridge's __setattr__)
        return cls._converted(bridge, TransformerBridge, fused)

    def to(self, *args: Any, **kwargs: Any) -> MultimodalTransformerBridge:
        """Move the LM (TransformerBridge.to) and the image encoder and projection with it."""
        super().to(*args, **kwargs)
        kwargs.pop("print_details", None)
        for module in (self.image_encoder, self.image_projection):
            if module is not None:
                module.to(*args, **kwargs)
        return self

    def _lm_state_dict(self, keep_vars: bool) -> dict[str, Tensor]:
        return TransformerBridge.state_dict(self, keep_vars=keep_vars)

    def _load_lm_state_dict(
        self, state: dict[str, Tensor], assign: bool
    ) -> tuple[list[str], list[str]]:
        keys = TransformerBridge.load_state_dict(self, state, strict=False, assign=assign)
        return list(keys.missing_keys), list(keys.unexpected_keys)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The language model's parameters (TL: the Hugging Face model's) and the
        projection's, not the frozen encoder's (as :meth:`state_dict`)."""
        yield from TransformerBridge.named_parameters(self, prefix, recurse, remove_duplicate)
        if self.image_projection is not None:
            name = f"{prefix}.image_projection" if prefix else "image_projection"
            yield from self.image_projection.named_parameters(name, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def _hf_accepts(self, name: str) -> bool:
        """Whether the wrapped Hugging Face model's ``forward`` takes the keyword ``name``."""
        forward = getattr(type(getattr(self, "original_model", None)), "forward", None)
        if forward is None:
            return False
        if forward not in _PARAMETERS:
            try:
                _PARAMETERS[forward] = frozenset(inspect.signature(forward).parameters)
            except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
                _PARAMETERS[forward] = frozenset()
        return name in _PARAMETERS[forward]

    def logits_at(
        self, batch: MultimodalInput, rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]
    ) -> Float[Tensor, "n d_vocab"]:
        """Logits at ``(rows[i], positions[i])`` only: Hugging Face's ``logits_to_keep`` slices
        the final hidden states before the unembedding (one position per row when each row is
        asked once, else the union of the positions), so the unembedding of every other
        position is skipped in the forward and in the backward. A full forward where the model
        does not take ``logits_to_keep``."""
        if not self._hf_accepts("logits_to_keep"):
            return self(batch)[rows, positions]
        n = len(batch)
        rows, positions = rows.to(batch.tokens.device), positions.to(batch.tokens.device)
        if (
            _PER_ROW_KEEP
            and rows.shape[0] == n
            and bool((rows == torch.arange(n, device=rows.device)).all())
        ):
            return self(batch, logits_to_keep=positions[:, None])[:, 0]
        keep = torch.unique(positions)  # sorted
        logits = self(batch, logits_to_keep=keep)
        return logits[rows, torch.searchsorted(keep, positions)]

    def lm_blocks(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> None:
        """Every block on ``tokens`` (hooks fire); only the last position is unembedded where
        the wrapped model takes ``logits_to_keep``."""
        if self._hf_accepts("logits_to_keep"):
            kwargs.setdefault("logits_to_keep", 1)
        self.lm_forward(tokens, **kwargs)

    def kv_first_step(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> tuple[Tensor, Any]:
        """The prompt through the Hugging Face cache; only the last position is unembedded
        where the model takes ``logits_to_keep``. The state is ``None`` (recompute the full
        sequence each step) when the bridge left the cache empty."""
        # Positions count real tokens only (as the bridge derives them without a cache), so
        # that left padding shifts every position of an item by the same amount.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits are read (the batch is left-padded): as in Hugging
        # Face's generate, the unembedding of every other prompt position is skipped.
        keep = {"logits_to_keep": 1} if self._hf_accepts("logits_to_keep") else {}
        logits, past = self.lm_forward(
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

    def kv_next_step(
        self,
        tokens: Int[Tensor, "batch new"],
        attention_mask: Int[Tensor, "batch pos"],
        state: Any,
    ) -> tuple[Tensor, Any]:
        """New tokens through the Hugging Face cache (which takes the full mask)."""
        # Hugging Face caches take the full mask (past + new positions).
        positions = (
            attention_mask.sum(-1, keepdim=True)
            - tokens.shape[1]
            + torch.arange(tokens.shape[1], device=tokens.device)
        )
        # transformers 5 names the cache argument `cache` (`past_key_values` still works, with
        # a FutureWarning at every step); TL's bridge hands unknown keywords to HF's forward
        cache = (
            {"cache": state, "use_cache": True}
            if self._hf_accepts("cache")
            else {"past_key_values": state}
        )
        logits, past = self.lm_forward(
            tokens,
            attention_mask=attention_mask,
            position_ids=positions,
            return_type="logits_and_cache",
            **cache,
        )
        return logits, past
