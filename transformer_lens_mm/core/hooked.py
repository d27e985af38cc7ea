"""``HookedMultimodalTransformer``: the TransformerLens 3.x ``HookedTransformer`` with sight.

Importable under TransformerLens 4.x too, where using it raises an error that says what to use
instead (``MultimodalTransformerBridge``) or what to install (``transformer-lens==3.9.*``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.mixin import _VISION_PREFIXES, MultimodalMixin
from transformer_lens_mm.fast.fusion import check_fused_flag, is_fused, set_fused
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER, require_hooked_transformer

__all__ = ["HookedMultimodalTransformer", "is_sae_transformer", "sae_transformer_class"]


def is_sae_transformer(model: Any) -> bool:
    """Whether ``model`` is SAELens's ``HookedSAETransformer`` (checked without importing
    SAELens: it is imported already where one exists)."""
    return any(
        c.__name__ == "HookedSAETransformer" and c.__module__.startswith("sae_lens")
        for c in type(model).__mro__
    )


if HAS_HOOKED_TRANSFORMER:
    from transformer_lens import HookedTransformer

    try:  # TL 3.9 name; older 3.x releases had HookedTransformerKeyValueCache
        from transformer_lens import TransformerLensKeyValueCache as _KVCache
    except ImportError:  # pragma: no cover
        from transformer_lens.past_key_value_caching import (
            HookedTransformerKeyValueCache as _KVCache,
        )

    class HookedMultimodalTransformer(MultimodalMixin, HookedTransformer):
        """A ``HookedTransformer`` (TL 3.x) that reads images as soft-prompt tokens.

        Built like SAELens's ``HookedSAETransformer``: the new hook points are added, then
        ``setup()`` rebuilds the hook registry, so ``hook_image_features`` and
        ``hook_image_embed`` appear in ``hook_dict``, caches and ``run_with_hooks``.

        Usually built with :func:`transformer_lens_mm.from_parts`; a converted
        ``HookedTransformer`` keeps all its methods.

        Args:
            *args: ``HookedTransformer``'s arguments (``cfg``, ``tokenizer``, ...).
            fused: The speed layer (``transformer_lens_mm.fast``): same numbers as TL's own
                modules, fewer operations; ``False`` for TL's own modules bit for bit.
            **kwargs: ``HookedTransformer``'s keyword arguments.

        Example:
            >>> model = from_parts(lm=hooked_lm, encoder=encoder, projection=proj)  # doctest: +SKIP
            >>> logits, cache = model.run_with_cache(model.prepare_inputs(images))  # doctest: +SKIP
            >>> cache["hook_image_embed"].shape  # doctest: +SKIP
            torch.Size([1, 196, 4096])
        """

        def __init__(self, *args: Any, fused: bool = True, **kwargs: Any) -> None:
            fused = check_fused_flag(fused)
            super().__init__(*args, **kwargs)
            self._add_image_hook_points()
            self._register_image_hook_points()
            if fused:
                set_fused(self, True)

        def _register_image_hook_points(self) -> None:
            self.setup()  # TL rebuilds hook_dict from the modules (as SAELens does)

        @classmethod
        def from_hooked_transformer(
            cls, model: HookedTransformer, *, fused: bool = True
        ) -> HookedMultimodalTransformer:
            """Convert a built ``HookedTransformer`` in place (no weight copy) and return it.

            Args:
                model: A plain ``HookedTransformer``, or SAELens's ``HookedSAETransformer``
                    (which becomes a
                    :class:`~transformer_lens_mm.core.sae.HookedMultimodalSAETransformer`).
                fused: Turn the speed layer on (see the class).
            """
            if cls is HookedMultimodalTransformer and is_sae_transformer(model):
                # SAELens's class keeps its SAE methods: it becomes the SAE subclass
                return sae_transformer_class().from_hooked_transformer(model, fused=fused)
            return cls._converted(model, HookedTransformer, fused)

        def logits_at(
            self, batch: MultimodalInput, rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]
        ) -> Float[Tensor, "n d_vocab"]:
            """Logits at the chosen positions only: all blocks, then ``ln_final`` and the
            unembedding on those positions (the unembedding of a large vocabulary at every
            position dominates the cost of short captions)."""
            resid = self(batch, stop_at_layer=self.cfg.n_layers)
            return self._unembed_resid(resid[rows, positions][None])[0]

        def lm_blocks(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> None:
            """Every block on ``tokens`` (hooks fire), without ``ln_final`` and the unembedding."""
            self.lm_forward(tokens, stop_at_layer=self.cfg.n_layers, **kwargs)

        def input_to_embed(self, *args: Any, **kwargs: Any) -> Any:
            """TL's ``input_to_embed``; fused, an attention mask of all ones is dropped.

            A mask without padding changes nothing in the result, but TL 3.9 builds one
            whenever a KV cache is used and then takes its slow paths in every block: rotary
            cos/sin gathered per position (and all cached keys re-rotated that way each step),
            absolute positions recomputed from the mask, the padding mask broadcast into the
            causal mask. Without it the same values come from slices. A KV cache still records
            the mask (TL appends it before this returns), so padded batches behave as before.
            Unfused (``fused=False``), TL's own path runs.
            """
            residual, tokens, shortformer_pos_embed, attention_mask = super().input_to_embed(
                *args, **kwargs
            )
            if attention_mask is not None and is_fused(self) and bool(attention_mask.all()):
                attention_mask = None
            return residual, tokens, shortformer_pos_embed, attention_mask

        def _lm_state_dict(self, keep_vars: bool) -> dict[str, Tensor]:
            state = HookedTransformer.state_dict(self, keep_vars=keep_vars)
            return {k: v for k, v in state.items() if not k.startswith(_VISION_PREFIXES)}

        def _load_lm_state_dict(
            self, state: dict[str, Tensor], assign: bool
        ) -> tuple[list[str], list[str]]:
            keys = HookedTransformer.load_state_dict(self, state, strict=False, assign=assign)
            missing = [k for k in keys.missing_keys if not k.startswith(_VISION_PREFIXES)]
            return missing, list(keys.unexpected_keys)

        def named_parameters(
            self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
        ) -> Iterator[tuple[str, torch.nn.Parameter]]:
            """The language model's parameters and the projection's, not the frozen
            encoder's (as :meth:`state_dict`; those are ``model.image_encoder.parameters()``)."""
            skip = f"{prefix}.image_encoder." if prefix else "image_encoder."
            for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
                if not name.startswith(skip):
                    yield name, param

        def _unembed_resid(self, resid: Tensor) -> Tensor:
            """``ln_final`` (if any) and the unembedding of a ``[batch, pos, d_model]`` residual."""
            if self.cfg.normalization_type is not None:
                resid = self.ln_final(resid)
            return self.unembed(resid)

        def kv_first_step(
            self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
        ) -> tuple[Tensor, Any]:
            """The prompt through TL's KV cache; only the last position is unembedded (the
            captioning loop reads ``logits[:, -1]``; the batch is left-padded)."""
            cache = _KVCache.init_cache(self.cfg, self.cfg.device, tokens.shape[0])
            resid = self.lm_forward(
                tokens,
                attention_mask=attention_mask,
                past_kv_cache=cache,
                stop_at_layer=self.cfg.n_layers,
            )
            return self._unembed_resid(resid[:, -1:]), cache

        def kv_next_step(
            self,
            tokens: Int[Tensor, "batch new"],
            attention_mask: Int[Tensor, "batch pos"],
            state: Any,
        ) -> tuple[Tensor, Any]:
            """New tokens through TL's cache, which stores the previous mask and appends the
            new tokens' part."""
            new_mask = attention_mask[:, -tokens.shape[1] :]
            logits = self.lm_forward(tokens, attention_mask=new_mask, past_kv_cache=state)
            return logits, state

    _SAE_CLASS: list[type] = []

    def sae_transformer_class() -> type:
        """``HookedMultimodalSAETransformer``: SAELens's ``HookedSAETransformer`` with sight,
        made once on first use (SAELens is optional and slow to import); exported by
        :mod:`transformer_lens_mm.core.sae`."""
        if _SAE_CLASS:
            return _SAE_CLASS[0]
        from sae_lens import HookedSAETransformer

        class HookedMultimodalSAETransformer(HookedMultimodalTransformer, HookedSAETransformer):
            """SAELens's ``HookedSAETransformer`` that reads images as soft-prompt tokens."""

            @classmethod
            def from_hooked_transformer(
                cls, model: Any, *, fused: bool = True
            ) -> HookedMultimodalSAETransformer:
                """Convert a built ``HookedSAETransformer`` in place (no weight copy)."""
                return cls._converted(model, HookedSAETransformer, fused)

            def _compute_exclusion_mask(
                self, tokens: torch.Tensor, exclude_special_tokens: Any
            ) -> Any:
                """SAELens's mask of the positions the SAE skips, without the image positions
                of the input being injected (their placeholder id is not a real special
                token)."""
                mask = super()._compute_exclusion_mask(tokens, exclude_special_tokens)
                batch = self.injecting
                if batch is not None and tuple(batch.tokens.shape) == tuple(tokens.shape):
                    mask = mask & ~batch.image_mask.to(mask.device)
                return mask

        HookedMultimodalSAETransformer.__module__ = "transformer_lens_mm.core.sae"
        _SAE_CLASS.append(HookedMultimodalSAETransformer)
        return HookedMultimodalSAETransformer

else:

    class HookedMultimodalTransformer:  # type: ignore[no-redef]
        """Placeholder under TransformerLens 4.x: ``HookedTransformer`` no longer exists."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            require_hooked_transformer()

        @classmethod
        def from_hooked_transformer(cls, model: Any, **kwargs: Any) -> Any:
            require_hooked_transformer()

    def sae_transformer_class() -> type:  # type: ignore[misc]
        require_hooked_transformer("SAELens's HookedSAETransformer")
