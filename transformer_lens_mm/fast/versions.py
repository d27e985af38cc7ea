"""Which TransformerLens is installed, and which of its versions each speed-up was verified on.

The rest of the package asks this module, never ``transformer_lens.__version__``. The speed
layer (fused classes, the KV-cache patch) reads private TL internals that change between
releases, so each part is used only on the ``major.minor`` versions it was checked against
(:data:`VERIFIED`); elsewhere TL's own code runs, with one warning saying so.

Example:
    >>> verified("fused_hooked", "3.9.0"), verified("fused_hooked", "3.10.1")
    (True, False)
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

from transformer_lens.hook_points import HookPoint

from transformer_lens_mm.errors import MissingPackageError, UnknownNameError

__all__ = [
    "HAS_HOOKED_TRANSFORMER",
    "TL_VERSION",
    "VERIFIED",
    "HookPoint",
    "require_hooked_transformer",
    "verified",
    "warn_unverified",
]

try:
    TL_VERSION: str = version("transformer-lens")
except PackageNotFoundError:  # pragma: no cover - editable installs under another name
    TL_VERSION = "unknown"

try:  # TL 4.x removed the class entirely; 3.9 still ships it (deprecated).
    from transformer_lens import HookedTransformer as _HookedTransformer  # noqa: F401

    HAS_HOOKED_TRANSFORMER = True
except ImportError:
    HAS_HOOKED_TRANSFORMER = False

#: Part of the speed layer -> the TransformerLens ``major.minor`` versions it was checked on.
VERIFIED: dict[str, tuple[str, ...]] = {
    # fused norms + SDPA attention + weight layout of HookedTransformer (fast.norms/attention)
    "fused_hooked": ("3.9",),
    # fused norms/attention/calls of TransformerBridge (fast.bridge)
    "fused_bridge": ("4.3",),
    # AttentionBridge._update_kv_cache reads the HF cache from ``cache=`` too (fast.patches)
    "kv_cache_patch": ("3.9", "4.3"),
}

_FUSED_INSTEAD = (
    "TransformerLens's own computation runs instead (the same results, slower). Install a "
    "verified version for the speed-up, or pass fused=False to silence this."
)
_WHAT = {
    "fused_hooked": (
        "the fused norms and attention of HookedMultimodalTransformer",
        _FUSED_INSTEAD,
    ),
    "fused_bridge": (
        "the fused norms and attention of MultimodalTransformerBridge",
        _FUSED_INSTEAD,
    ),
    "kv_cache_patch": (
        "the KV-cache fix of TransformerBridge's attention (cache= from transformers 5)",
        "it is not applied: cached captioning on the bridge checks its cache and, where it "
        "stayed empty, recomputes the full sequence each step (correct, slower).",
    ),
}
_warned: set[str] = set()


def verified(part: str, tl_version: str | None = None) -> bool:
    """Whether ``part`` of the speed layer was verified on this (or the given) TL version."""
    if part not in VERIFIED:
        raise UnknownNameError(f"unknown part {part!r}; known: {sorted(VERIFIED)}")
    minor = ".".join((tl_version or TL_VERSION).split(".")[:2])
    return minor in VERIFIED[part]


def warn_unverified(part: str) -> None:
    """Warn once per process that ``part`` is skipped on this TL version (results stay TL's)."""
    if part in _warned:
        return
    _warned.add(part)
    what, instead = _WHAT[part]
    warnings.warn(
        f"transformer_lens_mm: {what} was verified on TransformerLens "
        f"{', '.join(VERIFIED[part])} only; this is {TL_VERSION}, so {instead}",
        RuntimeWarning,
        stacklevel=3,
    )


def require_hooked_transformer(what: str = "HookedMultimodalTransformer") -> None:
    """Raise a clear error when a TL 3.x-only feature is used under TL 4.x.

    Args:
        what: The name of the feature the caller asked for.
    """
    if not HAS_HOOKED_TRANSFORMER:
        raise MissingPackageError(
            f"{what} needs transformer_lens.HookedTransformer, which TransformerLens "
            f"{TL_VERSION} no longer has (it was removed in 4.0). Either use "
            "MultimodalTransformerBridge (works on TransformerLens 3.9 and 4.x), or install the "
            "last release with HookedTransformer: pip install 'transformer-lens==3.9.*'."
        )
