"""Reversible patches of TransformerLens code: objects that can be listed and undone.

The package changes TransformerLens's own code in exactly one place, and never at import time:
:data:`KV_CACHE_PATCH` lets the bridge's attention find the Hugging Face KV cache when
transformers passes it as ``cache=`` (transformers 5.x does; TL 3.9 and 4.3 look only for
``past_key_values``/``layer_past``, so the cache stays empty and cached decoding attends to
nothing). It is applied when the first ``MultimodalTransformerBridge`` is built, only on the
TL versions it was verified on (``versions.VERIFIED["kv_cache_patch"]``), and
``KV_CACHE_PATCH.undo()`` (or :func:`undo_all`) restores TL's function. Where it is not
applied, the bridge's cached steps notice an empty cache and recompute the full sequence
instead (correct, slower, with a warning).

Example:
    >>> KV_CACHE_PATCH.attribute, KV_CACHE_PATCH.part  # applied() lists it once applied
    ('_update_kv_cache', 'kv_cache_patch')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import transformer_lens_mm.fast.versions as versions

__all__ = ["KV_CACHE_PATCH", "Patch", "applied", "undo_all"]


@dataclass
class Patch:
    """One attribute of one TransformerLens class, replaced until :meth:`undo`.

    Args:
        name: What the patch is, for listings.
        owner: Returns the class to patch (imported on first use, so nothing is imported, and
            nothing changes, before the patch is applied).
        attribute: The attribute replaced.
        make: Builds the replacement from the original.
        part: The entry of ``versions.VERIFIED`` that gates it.
    """

    name: str
    owner: Callable[[], type]
    attribute: str
    make: Callable[[Callable[..., Any]], Callable[..., Any]]
    part: str
    _original: Any = field(default=None, repr=False)
    _target: type | None = field(default=None, repr=False)

    @property
    def is_applied(self) -> bool:
        return self._target is not None

    def apply(self) -> bool:
        """Apply once (idempotent); ``False`` on a TL version it was not verified on."""
        if self.is_applied:
            return True
        if not versions.verified(self.part):
            versions.warn_unverified(self.part)
            return False
        target = self.owner()
        original = target.__dict__[self.attribute]
        replacement = functools.wraps(original)(self.make(original))
        replacement.__tlmm_patch__ = self.name  # type: ignore[attr-defined]
        setattr(target, self.attribute, replacement)
        self._original, self._target = original, target
        _APPLIED.append(self)
        return True

    def undo(self) -> None:
        """Restore TransformerLens's own attribute (a no-op when not applied)."""
        if self._target is None:
            return
        setattr(self._target, self.attribute, self._original)
        self._original, self._target = None, None
        _APPLIED.remove(self)


_APPLIED: list[Patch] = []


def applied() -> list[Patch]:
    """The patches applied in this process, in order."""
    return list(_APPLIED)


def undo_all() -> None:
    """Undo every applied patch (the last first)."""
    for patch in reversed(applied()):
        patch.undo()


def _attention_bridge() -> type:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return AttentionBridge


def _accept_cache_kwarg(original: Callable[..., Any]) -> Callable[..., Any]:
    def _update_kv_cache(self: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    return _update_kv_cache


#: ``AttentionBridge._update_kv_cache`` also reads the cache passed as ``cache=``.
KV_CACHE_PATCH = Patch(
    name="AttentionBridge._update_kv_cache reads cache=",
    owner=_attention_bridge,
    attribute="_update_kv_cache",
    make=_accept_cache_kwarg,
    part="kv_cache_patch",
)
