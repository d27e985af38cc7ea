"""Which TransformerLens world we are in (3.x with ``HookedTransformer``, or 4.x without it).

Private: the rest of the package asks this module, never ``transformer_lens.__version__``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from transformer_lens.hook_points import HookPoint

__all__ = ["HAS_HOOKED_TRANSFORMER", "TL_VERSION", "HookPoint", "require_hooked_transformer"]

try:
    TL_VERSION: str = version("transformer-lens")
except PackageNotFoundError:  # pragma: no cover - editable installs under another name
    TL_VERSION = "unknown"

try:  # TL 4.x removed the class entirely; 3.9 still ships it (deprecated).
    from transformer_lens import HookedTransformer as _HookedTransformer  # noqa: F401

    HAS_HOOKED_TRANSFORMER = True
except ImportError:
    HAS_HOOKED_TRANSFORMER = False


def require_hooked_transformer(what: str = "HookedMultimodalTransformer") -> None:
    """Raise a clear error when a TL 3.x-only feature is used under TL 4.x.

    Args:
        what: The name of the feature the caller asked for.
    """
    if not HAS_HOOKED_TRANSFORMER:
        raise ImportError(
            f"{what} needs transformer_lens.HookedTransformer, which TransformerLens "
            f"{TL_VERSION} no longer has (it was removed in 4.0). Either use "
            "MultimodalTransformerBridge (works on TransformerLens 3.9 and 4.x), or install the "
            "last release with HookedTransformer: pip install 'transformer-lens==3.9.*'."
        )
