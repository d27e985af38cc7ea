"""Fused normalisation for ``HookedMultimodalTransformer`` (TL 3.x) while its norm hooks are unused.

TransformerLens 3.9 writes each LayerNorm as nine tensor operations (and RMSNorm as six) so that
``hook_scale`` and ``hook_normalized`` can see the intermediate values, and every block calls
``ln1`` three times on the same residual (once each for queries, keys and values). On a GPU a
decoding step of a small model is bound by launching kernels, so these dominate it: a KV-cached
GPT-2-small step dispatched 853 operations against Hugging Face's 235.

Here each norm module computes ``torch.nn.functional.layer_norm``/``rms_norm`` instead, and
returns its previous output when called again on the same, unmodified input, **unless** a hook
is attached to its ``hook_scale`` or ``hook_normalized`` (forward or backward, including the
hooks ``run_with_cache`` adds): then TransformerLens's own forward runs, so hooks and caches
see exactly what they see in TransformerLens. Same values up to float rounding (tested:
``tests/test_norms.py``); ``set_fused_norms(model, False)`` restores TL's computation.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm.fast.classes import FusedClasses, check_model, has_hooks

__all__ = ["set_fused_norms"]

_LOW_PRECISION_SAFE = (torch.float32, torch.float64)


class _FusedNorm:
    """The methods of a fused TL norm class: fused computation, one evaluation per input."""

    _tl: Any  # the TL class this one derives from
    fused: bool = True
    rms: bool = False  # RMSNorm / RMSNormPre (else LayerNorm / LayerNormPre)

    def _compute(self, x: Tensor) -> Tensor:
        """TL's norm in one call: normalise (in fp32 below fp32, as TL does), cast, then the
        weights TL's class has (``w``, ``b``; the ``Pre`` variants have none)."""
        w, b = getattr(self, "w", None), getattr(self, "b", None)
        if self.rms and w is not None and x.device != w.device:  # as TL's RMSNorm does
            self.to(x.device)  # type: ignore[attr-defined]
        dtype = self.cfg.dtype  # type: ignore[attr-defined]
        low = dtype not in _LOW_PRECISION_SAFE
        if low:
            x = x.to(torch.float32)
            affine_w, affine_b = None, None  # applied after the cast, in the model's dtype
        else:
            affine_w, affine_b = w, b
        shape = (x.shape[-1],)
        if self.rms:
            out = F.rms_norm(x, shape, affine_w, self.eps)  # type: ignore[attr-defined]
        else:
            out = F.layer_norm(x, shape, affine_w, affine_b, self.eps)  # type: ignore[attr-defined]
        if not low:
            return out
        out = out.to(dtype)
        if w is not None:
            out = out * w
        return out if b is None else out + b

    def forward(self, x: Tensor) -> Tensor:
        if not self.fused or has_hooks(self.hook_scale, self.hook_normalized):  # type: ignore[attr-defined]
            return self._tl.forward(self, x)
        if x.is_inference():  # no version counters to check a reuse against
            return self._compute(x)
        # what the output depends on besides x's identity: x, the weights, the grad mode
        key = (
            x._version,
            tuple(p._version for p in self._parameters.values() if p is not None),  # type: ignore[attr-defined]
            torch.is_grad_enabled(),
        )
        memo = self.__dict__.get("_memo")
        if memo is not None:
            x_ref, memo_key, out, out_version = memo
            if x_ref() is x and memo_key == key and out._version == out_version:
                return out
        out = self._compute(x)
        state = self.__dict__

        def forget(ref: weakref.ref) -> None:  # x is gone: drop the output with it
            if state.get("_memo", (None,))[0] is ref:
                del state["_memo"]

        # the output lives as long as the input does (the rest of the block), no longer
        state["_memo"] = (weakref.ref(x, forget), key, out, out._version)
        return out


def _spec() -> list[tuple[type, type, dict[str, Any]]]:
    from transformer_lens.components import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

    return [
        (tl, _FusedNorm, {"rms": tl in (RMSNorm, RMSNormPre)})
        for tl in (LayerNorm, LayerNormPre, RMSNorm, RMSNormPre)
    ]


_FUSED = FusedClasses(__name__, _spec)
__getattr__ = _FUSED.module_getattr


def set_fused_norms(model: torch.nn.Module, enabled: bool = True) -> int:
    """Turn the fused norms of a TL 3.x ``HookedTransformer``'s norm layers on or off.

    ``HookedMultimodalTransformer`` turns them on when it is built. Turn them off to reproduce
    a plain ``HookedTransformer``'s numbers bit for bit.

    Args:
        model: A ``HookedTransformer`` (or ``HookedMultimodalTransformer``).
        enabled: Fused (``True``) or TransformerLens's own computation (``False``).

    Returns:
        The number of norm layers switched.

    Example:
        >>> set_fused_norms(model, False)  # doctest: +SKIP
        25
    """
    check_model(model)
    if not versions.verified("fused_hooked"):
        return 0
    switched = _FUSED.switch(model, enabled)
    for module in switched:
        module.__dict__.pop("_memo", None)
    return len(switched)
