"""``HookedMultimodalTransformer``: the TransformerLens 3.x ``HookedTransformer`` with sight.

Importable under TransformerLens 4.x too, where using it raises an error that says what to use
instead (``MultimodalTransformerBridge``) or what to install (``transformer-lens==3.9.*``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from transformer_lens_mm.core.mixin import MultimodalMixin
from transformer_lens_mm.fast.attention import set_fused_attention
from transformer_lens_mm.fast.norms import set_fused_norms
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER, require_hooked_transformer

__all__ = ["HookedMultimodalTransformer"]

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

        Example:
            >>> model = from_parts(lm=hooked_lm, encoder=encoder, projection=proj)  # doctest: +SKIP
            >>> logits, cache = model.run_with_cache(model.prepare_inputs(images))  # doctest: +SKIP
            >>> cache["hook_image_embed"].shape  # doctest: +SKIP
            torch.Size([1, 196, 4096])
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._add_image_hook_points()
            self.setup()
            self._speed_up()

        def _speed_up(self) -> None:
            """Same values, faster: weights in the layout TL's forward wants, fused norms and
            attention while their hooks are unused (``norms``, ``fused_attention``)."""
            self._linear_weight_layout()
            set_fused_norms(self)
            set_fused_attention(self)

        def _linear_weight_layout(self) -> None:
            """Store the weight matrices in the memory layout TL 3.9's forward asks for (same
            values, same shapes, different strides).

            TL 3.9 calls ``F.linear(x, W.T.contiguous())`` in MLPs and the unembedding and
            ``rearrange(W_Q, "h m d -> (h d) m")`` / ``rearrange(W_O, ...).contiguous()`` in
            attention on every forward, copying every weight each time. Stored as permuted
            views of tensors in those target layouts, the copies become no-ops. On
            SmolLM2-135M the copying was most of the cost of a KV-cached decoding step.
            ``load_state_dict`` keeps the layout (``copy_`` respects strides).
            """
            # leaf name -> (permutation to the layout the forward wants, and back)
            layouts = {
                "W_in": ((1, 0), (1, 0)),
                "W_gate": ((1, 0), (1, 0)),
                "W_out": ((1, 0), (1, 0)),
                "W_U": ((1, 0), (1, 0)),
                "W_Q": ((0, 2, 1), (0, 2, 1)),
                "W_K": ((0, 2, 1), (0, 2, 1)),
                "W_V": ((0, 2, 1), (0, 2, 1)),
                "_W_K": ((0, 2, 1), (0, 2, 1)),
                "_W_V": ((0, 2, 1), (0, 2, 1)),
                "W_O": ((2, 0, 1), (1, 2, 0)),
            }
            for name, param in self.named_parameters():
                layout = layouts.get(name.rsplit(".", 1)[-1])
                if layout is None or param.ndim != len(layout[0]):
                    continue
                there, back = layout
                if not param.permute(*there).is_contiguous():
                    param.data = param.data.permute(*there).contiguous().permute(*back)

        @classmethod
        def from_hooked_transformer(cls, model: HookedTransformer) -> HookedMultimodalTransformer:
            """Convert a built ``HookedTransformer`` in place (no weight copy) and return it."""
            if isinstance(model, cls):
                return model
            if type(model) is not HookedTransformer:
                raise TypeError(
                    f"can only convert a plain HookedTransformer, got {type(model).__name__}"
                )
            model.__class__ = cls
            model._add_image_hook_points()
            model.setup()
            model._speed_up()
            return model

        def logits_at(self, batch: Any, rows: Tensor, positions: Tensor) -> Tensor:
            """Logits at the chosen positions only: all blocks, then ``ln_final`` and the
            unembedding on those positions (the unembedding of a large vocabulary at every
            position dominates the cost of short captions)."""
            resid = self(batch, stop_at_layer=self.cfg.n_layers)
            return self._unembed_resid(resid[rows, positions][None])[0]

        def input_to_embed(self, *args: Any, **kwargs: Any) -> Any:
            """TL's ``input_to_embed``, except that an attention mask of all ones is dropped.

            A mask without padding changes nothing in the result, but TL 3.9 builds one
            whenever a KV cache is used and then takes its slow paths in every block: rotary
            cos/sin gathered per position (and all cached keys re-rotated that way each step),
            absolute positions recomputed from the mask, the padding mask broadcast into the
            causal mask. Without it the same values come from slices. A KV cache still records
            the mask (TL appends it before this returns), so padded batches behave as before.
            """
            residual, tokens, shortformer_pos_embed, attention_mask = super().input_to_embed(
                *args, **kwargs
            )
            if attention_mask is not None and bool(attention_mask.all()):
                attention_mask = None
            return residual, tokens, shortformer_pos_embed, attention_mask

        def _unembed_resid(self, resid: Tensor) -> Tensor:
            """``ln_final`` (if any) and the unembedding of a ``[batch, pos, d_model]`` residual."""
            if self.cfg.normalization_type is not None:
                resid = self.ln_final(resid)
            return self.unembed(resid)

        def _kv_first_step(self, tokens: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
            cache = _KVCache.init_cache(self.cfg, self.cfg.device, tokens.shape[0])
            # the prompt's blocks fill the cache; only the last position is unembedded (the
            # captioning loop reads logits[:, -1]; the batch is left-padded)
            resid = self._lm_forward(
                tokens,
                attention_mask=attention_mask,
                past_kv_cache=cache,
                stop_at_layer=self.cfg.n_layers,
            )
            return self._unembed_resid(resid[:, -1:]), cache

        def _kv_next_step(
            self, tokens: Tensor, attention_mask: Tensor, state: Any
        ) -> tuple[Tensor, Any]:
            # TL's cache stores the previous mask and appends the new tokens' part.
            new_mask = attention_mask[:, -tokens.shape[1] :]
            logits = self._lm_forward(tokens, attention_mask=new_mask, past_kv_cache=state)
            return logits, state

else:

    class HookedMultimodalTransformer:  # type: ignore[no-redef]
        """Placeholder under TransformerLens 4.x: ``HookedTransformer`` no longer exists."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            require_hooked_transformer()

        @classmethod
        def from_hooked_transformer(cls, model: Any) -> Any:
            require_hooked_transformer()
