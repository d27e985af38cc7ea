"""One switch for the speed layer: :func:`set_fused` (and ``model.fused(...)`` scoped).

Fused, a model computes the same numbers as TransformerLens's own modules (up to float
rounding; tested in ``tests/equivalence``) with fewer operations: fused norms and one SDPA
call per attention layer while no hook wants their intermediate values (``fast.norms``,
``fast.attention`` for ``HookedTransformer``; ``fast.bridge`` for ``TransformerBridge``), weights
stored in the layout TL's forward wants, and (``HookedTransformer``) an all-ones attention mask
dropped so TL takes its unmasked slices. Unfused, every module is TransformerLens's own and
results are bit for bit a plain TL model's.

Each part runs only on the TransformerLens versions it was verified on
(``versions.VERIFIED``); elsewhere asking for it warns once and TL's own code runs.

Example:
    >>> check_fused_flag("yes")
    Traceback (most recent call last):
    ...
    transformer_lens_mm.errors.ArgumentError: fused must be True or False, got 'yes': ...
"""

from __future__ import annotations

from typing import Any

import torch

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm.errors import ArgumentError
from transformer_lens_mm.fast.classes import check_model

__all__ = ["check_fused_flag", "is_fused", "set_fused"]

#: Attribute on the model holding whether its speed layer is on.
_STATE = "_tlmm_fused"


def check_fused_flag(enabled: Any) -> bool:
    """``enabled`` as a bool, or a ``ValueError`` naming the allowed values."""
    if isinstance(enabled, bool):
        return enabled
    raise ArgumentError(
        f"fused must be True or False, got {enabled!r}: fused=True (the default) computes the "
        "same numbers faster while no hook needs TransformerLens's intermediate values; "
        "fused=False runs TransformerLens's own modules (bit for bit a plain TL model)"
    )


def _is_bridge(model: torch.nn.Module) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def set_fused(model: torch.nn.Module, enabled: bool) -> int:
    """Turn a model's speed layer on or off (in place; reversible at any time).

    Args:
        model: A ``HookedTransformer``/``TransformerBridge`` (multimodal or plain).
        enabled: ``True``: the fused paths where they were verified; ``False``: TL's own modules.

    Returns:
        The number of modules now on the fused path (0 with ``enabled=False``, and on a TL
        version the fused classes were not verified on: then TL's own code runs, with one
        warning per process).

    Example:
        >>> set_fused(model, False)  # doctest: +SKIP
        0
    """
    check_model(model)
    enabled = check_fused_flag(enabled)
    part = "fused_bridge" if _is_bridge(model) else "fused_hooked"
    if enabled and not versions.verified(part):
        versions.warn_unverified(part)
        enabled = False
    if part == "fused_bridge":
        from transformer_lens_mm.fast.bridge import set_fused_bridge

        switched = set_fused_bridge(model, enabled)
    else:
        from transformer_lens_mm.fast.attention import set_fused_attention
        from transformer_lens_mm.fast.norms import set_fused_norms
        from transformer_lens_mm.fast.weights import set_forward_weight_layout

        if enabled:
            set_forward_weight_layout(model)
        switched = set_fused_norms(model, enabled) + set_fused_attention(model, enabled)
    model.__dict__[_STATE] = enabled
    return switched if enabled else 0


def is_fused(model: torch.nn.Module) -> bool:
    """Whether :func:`set_fused` last turned this model's speed layer on (and it took effect)."""
    return bool(model.__dict__.get(_STATE, False))
