"""Fused attention for ``HookedMultimodalTransformer`` (TL 3.x) while its pattern hooks are unused.

TransformerLens 3.9 computes attention eagerly so that ``hook_attn_scores`` and ``hook_pattern``
can see the scores and the pattern: scores as a product and a division, a causal mask built
with four operations per layer and applied with ``torch.where``, a softmax, a NaN guard
(``isnan``, ``zeros_like``, ``where``), the pattern times the values; grouped keys and values
copied with ``repeat_interleave`` first; and each rotary embedding through a ``clone`` and two
strided copies. On a GPU, a decoding step of a small model is bound by launching kernels, and
Hugging Face runs all of this as one ``scaled_dot_product_attention`` call.

Here an ``Attention``/``GroupedQueryAttention`` layer does the same, **unless** a hook (forward
or backward, including those ``run_with_cache`` adds) is attached to ``hook_attn_scores`` or
``hook_pattern``, the only two hook points it cannot serve, or the layer's configuration is one
SDPA does not express as TL does (ALiBi, relative position bias, attention sinks, soft-capped
scores, per-head results, OLMo's Q/K norms or clipping, 4-bit weights, an additive mask, the
model split over several devices): then TransformerLens's own forward runs. Every other hook
point (``hook_q``/``k``/``v``, ``hook_rot_q``/``rot_k``, ``hook_z``) still fires with the
values TL gives it. Same values up to float rounding (tested: ``tests/test_fused_attention.py``);
``set_fused_attention(model, False)`` restores TL's computation.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm.fast.classes import FusedClasses, check_model, has_hooks, sdpa

__all__ = ["set_fused_attention"]

_OLMO_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


class _FusedAttention:
    """The methods of a fused TL attention class: one ``scaled_dot_product_attention`` call."""

    _tl: Any  # the TL class this one derives from
    _counted = True  # by set_fused_attention
    fused: bool = True

    def _fusable(self, additive_attention_mask: Any, position_bias: Any) -> bool:
        """Whether SDPA computes what TL's forward would, and no hook needs the pattern."""
        cfg = self.cfg  # type: ignore[attr-defined]
        cap = cfg.attn_scores_soft_cap
        return (
            self.fused
            and additive_attention_mask is None
            and position_bias is None
            and cfg.positional_embedding_type not in ("alibi", "relative_positional_bias")
            and not (cap is not None and cap > 0)
            and not cfg.use_attention_sinks
            and not cfg.use_attn_result
            and not cfg.load_in_4bit
            and cfg.clip_qkv is None
            and cfg.original_architecture not in _OLMO_QK_NORM
            and cfg.n_devices == 1
            and not has_hooks(self.hook_attn_scores, self.hook_pattern)  # type: ignore[attr-defined]
        )

    def forward(
        self,
        query_input: Tensor,
        key_input: Tensor,
        value_input: Tensor,
        past_kv_cache_entry: Any = None,
        additive_attention_mask: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_bias: Tensor | None = None,
    ) -> Tensor:
        if not self._fusable(additive_attention_mask, position_bias):
            return self._tl.forward(
                self,
                query_input,
                key_input,
                value_input,
                past_kv_cache_entry=past_kv_cache_entry,
                additive_attention_mask=additive_attention_mask,
                attention_mask=attention_mask,
                position_bias=position_bias,
            )
        cfg = self.cfg  # type: ignore[attr-defined]
        # TL's own steps up to the scores, hook points included
        q, k, v = self._qkv(query_input, key_input, value_input)
        entry, new_keys = past_kv_cache_entry, k
        if entry is not None:
            past_keys = entry.past_keys
            offset = past_keys.size(1)
            k, v = entry.append(k, v)
        else:
            offset = 0
        if cfg.positional_embedding_type == "rotary":
            q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))  # type: ignore[attr-defined]
            if entry is None or cfg.use_dynamic_ntk_rope:
                k = self.apply_rotary(k, 0, attention_mask)
            else:
                k = self._rotated_keys(entry, past_keys, new_keys, k, attention_mask)
            k = self.hook_rot_k(k)  # type: ignore[attr-defined]
        if cfg.use_logn_attn and not self.training:  # type: ignore[attr-defined]
            q = self._apply_logn_scaling(q, offset)  # type: ignore[attr-defined]

        mask, is_causal, rows_attending = self._sdpa_mask(
            q.shape[1], k.shape[1], offset, attention_mask, q.device
        )
        z = sdpa(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            mask,
            is_causal,
            1.0 / self.attn_scale,  # type: ignore[attr-defined]
        ).transpose(1, 2)  # [batch, pos, head_index, d_head]
        if rows_attending is not None:  # TL's NaN guard: a query that sees no key gets z = 0
            z = z * rows_attending.transpose(1, 2).to(z.dtype)
        z = self.hook_z(z.to(v.dtype))  # type: ignore[attr-defined]

        w = self.W_O.permute(2, 0, 1).reshape(cfg.d_model, -1)  # type: ignore[attr-defined]
        z = z.reshape(z.shape[0], z.shape[1], -1).to(w.dtype)
        return F.linear(z, w, self.b_O)  # type: ignore[attr-defined]

    def _rotated_keys(
        self,
        entry: Any,
        past_keys: Tensor,
        new_keys: Tensor,
        all_keys: Tensor,
        attention_mask: Tensor | None,
    ) -> Tensor:
        """All keys of a KV-cached step, rotated: the cached keys' rotation from the previous
        step plus the new keys' (TL stores keys unrotated and rotates every cached key again at
        every step, ~5 passes over the whole cache per layer and step).

        Bitwise what TL computes: a new key's position (from the offset, or from the mask as
        TL counts it) does not depend on the rest. The rotation is kept beside the entry with
        the ``past_keys`` tensor it belongs to; if anything else changed the entry since (TL's
        own path, a reordered batch), every key is rotated again.
        """
        memo = entry.__dict__.get("_tlmm_rotated_keys")
        if memo is not None and memo[0]() is past_keys:
            offset = past_keys.size(1)
            rotated = torch.cat([memo[1], self.apply_rotary(new_keys, offset, attention_mask)], 1)
        else:
            rotated = self.apply_rotary(all_keys, 0, attention_mask)
        if entry.past_keys is not past_keys:  # appended (not frozen)
            entry._tlmm_rotated_keys = (weakref.ref(entry.past_keys), rotated)
        return rotated

    def _qkv(self, query_input: Tensor, key_input: Tensor, value_input: Tensor) -> tuple:
        """TL's ``calculate_qkv_matrices`` for the plain case (one input per position, no Q/K
        norm): the same products, with weights reshaped by ``permute``/``reshape`` instead of
        two ``einops.rearrange`` calls per projection (~25 us of Python each, every step)."""
        cfg = self.cfg  # type: ignore[attr-defined]
        if query_input.ndim != 3 or cfg.use_qk_norm:
            return self.calculate_qkv_matrices(query_input, key_input, value_input)  # type: ignore[attr-defined]
        grouped = hasattr(self, "_W_K") and not cfg.ungroup_grouped_query_attention
        params = self._parameters  # type: ignore[attr-defined]
        k_w, k_b, v_w, v_b = (
            (params["_W_K"], params["_b_K"], params["_W_V"], params["_b_V"])
            if grouped
            else (self.W_K, self.b_K, self.W_V, self.b_V)  # type: ignore[attr-defined]
        )
        projected = []
        for x, w, b, hook in (
            (query_input, params["W_Q"], params["b_Q"], self.hook_q),  # type: ignore[attr-defined]
            (key_input, k_w, k_b, self.hook_k),  # type: ignore[attr-defined]
            (value_input, v_w, v_b, self.hook_v),  # type: ignore[attr-defined]
        ):
            n_heads, d_model, d_head = w.shape
            if x.device != w.device:
                w, b = w.to(x.device), b.to(x.device)
            out = F.linear(x, w.permute(0, 2, 1).reshape(n_heads * d_head, d_model), b.reshape(-1))
            projected.append(hook(out.reshape(x.shape[0], x.shape[1], n_heads, d_head)))
        return tuple(projected)

    def _sdpa_mask(
        self,
        n_query: int,
        n_key: int,
        offset: int,
        attention_mask: Tensor | None,
        device: torch.device,
    ) -> tuple[Tensor | None, bool, Tensor | None]:
        """TL's masking as SDPA arguments: ``(attn_mask, is_causal, rows_attending)``.

        Global causal attention without padding needs no mask tensor: ``is_causal`` for a
        prompt, nothing for one new token with a cache. Padding (TL masks padded keys only in
        causal attention) and local windows take TL's own boolean mask. A padded query whose
        keys are all masked is pointed at every key and its ``z`` zeroed afterwards, which is
        what TL's NaN guard gives, on every SDPA backend.
        """
        causal = (self._attention_dir_override or self.cfg.attention_dir) == "causal"  # type: ignore[attr-defined]
        if not causal:
            return None, False, None
        if attention_mask is None and self.attn_type == "global":  # type: ignore[attr-defined]
            if n_query == 1:
                return None, False, None
            if offset == 0:
                return None, True, None
        if attention_mask is not None:
            device = attention_mask.device
        mask = self._make_causal_mask(n_query, n_key, offset, device)  # type: ignore[attr-defined]
        if attention_mask is None:
            return mask, False, None
        mask = mask & attention_mask[:, None, None, :].bool()
        rows = mask.any(-1, keepdim=True)
        return mask | ~rows, False, rows

    def apply_rotary(
        self, x: Tensor, past_kv_pos_offset: int = 0, attention_mask: Tensor | None = None
    ) -> Tensor:
        """TL's rotary embedding, without its final ``cat`` with an empty pass-through part
        when the rotation covers the whole head (a copy of q and of all keys each step)."""
        cfg = self.cfg  # type: ignore[attr-defined]
        end = past_kv_pos_offset + x.size(1)
        cos, sin = self.rotary_cos, self.rotary_sin  # type: ignore[attr-defined]
        if (
            not self.fused
            or attention_mask is not None
            or cfg.rotary_dim != x.size(-1)
            or cfg.use_dynamic_ntk_rope
            or end > cos.shape[0]
            or x.device != cos.device
        ):
            return self._tl.apply_rotary(self, x, past_kv_pos_offset, attention_mask)
        cos = cos[None, past_kv_pos_offset:end, None, :]
        sin = sin[None, past_kv_pos_offset:end, None, :]
        return x * cos + self.rotate_every_two(x) * sin

    def rotate_every_two(self, x: Tensor) -> Tensor:
        """TL's rotary helper (``[x0, x1] -> [-x1, x0]``) as two operations instead of four."""
        if not self.fused:
            return self._tl.rotate_every_two(self, x)
        if self.cfg.rotary_adjacent_pairs:  # type: ignore[attr-defined]
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        n = x.size(-1) // 2
        return torch.cat((-x[..., n:], x[..., :n]), dim=-1)


class _NoPositionEmbedding:
    """Added to a tensor, gives the tensor itself: no operation, no copy, and through torch's
    ``__torch_function__`` protocol (~3 us) rather than a failed ``Tensor.__add__`` and Python's
    ``__radd__`` fallback (~24 us, more than the addition it replaces)."""

    __slots__ = ()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") in ("__add__", "__radd__", "add") and not kwargs:
            tensors = [a for a in args if not isinstance(a, _NoPositionEmbedding)]
            if len(tensors) == 1 and isinstance(tensors[0], Tensor):
                return tensors[0]
        return NotImplemented

    def __radd__(self, other: Tensor) -> Tensor:
        return other


_NO_POSITION_EMBEDDING = _NoPositionEmbedding()


class _FusedBlock:
    """The forward of a TL ``TransformerBlock`` that hands ``ln1``'s output to attention as is.

    TL 3.9 adds ``0.0`` to the normalised queries' and keys' inputs when the model has no
    shortformer position embedding: two operations and two copies per block and step, for
    nothing. Passed an object whose sum with a tensor is that tensor, TL's own forward runs
    unchanged otherwise.
    """

    _tl: Any
    _counted = False
    fused: bool = True

    def forward(
        self,
        resid_pre: Tensor,
        shortformer_pos_embed: Tensor | None = None,
        past_kv_cache_entry: Any = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        cfg = self.cfg  # type: ignore[attr-defined]
        if (
            self.fused
            and shortformer_pos_embed is None
            and not (cfg.use_attn_in or cfg.use_split_qkv_input)
        ):
            shortformer_pos_embed = _NO_POSITION_EMBEDDING  # type: ignore[assignment]
        return self._tl.forward(
            self, resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask
        )


def _spec() -> list[tuple[type, type, dict[str, Any]]]:
    from transformer_lens.components import Attention, GroupedQueryAttention, TransformerBlock

    return [
        (Attention, _FusedAttention, {}),
        (GroupedQueryAttention, _FusedAttention, {}),
        (TransformerBlock, _FusedBlock, {}),
    ]


_FUSED = FusedClasses(__name__, _spec)
__getattr__ = _FUSED.module_getattr


def set_fused_attention(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn the fused (SDPA) attention of a TL 3.x ``HookedTransformer`` on or off.

    ``HookedMultimodalTransformer`` turns it on when it is built. A layer computes TL's eager
    attention anyway whenever ``hook_attn_scores`` or ``hook_pattern`` has a hook. Turn it off
    (with :func:`~transformer_lens_mm.fast.norms.set_fused_norms`) to reproduce a plain
    ``HookedTransformer``'s numbers bit for bit.

    Args:
        model: A ``HookedTransformer`` (or ``HookedMultimodalTransformer``).
        enabled: Fused (``True``) or TransformerLens's own computation (``False``).

    Returns:
        The number of attention layers switched (subclasses such as ``T5Attention`` are left
        alone).

    Example:
        >>> set_fused_attention(model, False)  # doctest: +SKIP
        12
    """
    check_model(model)
    if not versions.verified("fused_hooked"):
        return 0
    return sum(module._counted for module in _FUSED.switch(model, enabled))
