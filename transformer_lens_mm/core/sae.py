"""SAELens on images: ``HookedMultimodalSAETransformer``, SAELens's ``HookedSAETransformer`` with
sight, and ``MultimodalSAETransformerBridge``, SAELens's ``SAETransformerBridge`` (SAELens >=
6.32) with sight (TransformerLens 3.x, where SAELens runs).

Every SAELens call works on a :class:`~transformer_lens_mm.core.layout.MultimodalInput`
(``run_with_saes``, ``run_with_cache_with_saes``, ``saes()``, ``add_sae``), with two
differences that matter at image positions:

* ``exclude_special_tokens=True`` does not skip the image positions: they hold a placeholder
  token id (pad/eos, which SAELens counts as special), but carry the soft-prompt tokens, so the
  SAE runs there; only the real special tokens are excluded;
* an SAE may sit on ``hook_embed``: the image tokens are written into its input, so it encodes
  the injected embeddings.

``from_parts(lm=<HookedSAETransformer>, ...)`` and
``HookedMultimodalTransformer.from_hooked_transformer(<HookedSAETransformer>)`` convert to it in
place. On the bridge, ``from_parts(lm=<SAETransformerBridge>, ...)`` gives a
:class:`MultimodalSAETransformerBridge`, and :meth:`MultimodalSAETransformerBridge.from_multimodal`
turns a built ``MultimodalTransformerBridge`` into one (no weight copy), with the same
``exclude_special_tokens`` rule (SAELens's bridge has no such option; ours adds it).
:func:`~transformer_lens_mm.tools.sae.image_sae_features` reads an SAE's feature activations at
the image positions on either.

Example:
    >>> model = from_parts(  # doctest: +SKIP
    ...     lm=hooked_sae_transformer, encoder=enc, projection=proj
    ... )
    >>> _, cache = model.run_with_cache_with_saes(batch, saes=[sae])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

try:
    import sae_lens  # noqa: F401
except ImportError as _err:  # SAELens pins transformer-lens<4
    from transformer_lens_mm.errors import MissingPackageError

    where = (
        "pip install sae-lens"
        if HAS_HOOKED_TRANSFORMER
        else "SAELens pins transformer-lens<4 and this is TransformerLens 4.x: use an "
        "environment with pip install sae-lens 'transformer-lens==3.9.*' (both APIs are "
        "there: HookedMultimodalSAETransformer and MultimodalSAETransformerBridge)"
    )
    raise MissingPackageError(f"SAE support needs SAELens: {where}") from _err

from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.hooked import sae_transformer_class
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentTypeError, MissingPackageError

try:  # SAELens >= 6.32 on TransformerLens 3.9
    from sae_lens import SAETransformerBridge
except ImportError:  # pragma: no cover - an older SAELens
    SAETransformerBridge = None

__all__ = ["HookedMultimodalSAETransformer", "MultimodalSAETransformerBridge"]


#: SAELens's ``HookedSAETransformer`` with sight (made in :mod:`~transformer_lens_mm.core.hooked`,
#: which converts SAELens's class to it: ``from_hooked_transformer`` and ``from_parts``).
HookedMultimodalSAETransformer = sae_transformer_class() if HAS_HOOKED_TRANSFORMER else None


def _special_ids(tokenizer: Any, exclude: bool | list[int]) -> list[int]:
    if isinstance(exclude, list):
        return exclude
    return list(getattr(tokenizer, "all_special_ids", []) or [])


if SAETransformerBridge is not None:

    class MultimodalSAETransformerBridge(MultimodalTransformerBridge, SAETransformerBridge):
        """SAELens's ``SAETransformerBridge`` that reads images as soft-prompt tokens.

        ``run_with_saes``, ``run_with_cache_with_saes``, ``run_with_hooks_with_saes``, ``saes()``
        and ``add_sae`` take a :class:`MultimodalInput`; SAEs and transcoders sit on the
        bridge's hook names (aliases resolved by SAELens). ``exclude_special_tokens`` (``True``
        or a list of ids) bypasses the SAE at special-token positions but never at image
        positions (their placeholder id is not a real token).

        Example:
            >>> sae_model = MultimodalSAETransformerBridge.from_multimodal(model)  # doctest: +SKIP
            >>> feats = image_sae_features(sae_model, batch, sae)  # doctest: +SKIP
        """

        _exclude: bool | list[int] = False

        @classmethod
        def from_bridge(cls, bridge: Any, *, fused: bool = True) -> MultimodalSAETransformerBridge:
            """Convert a booted ``SAETransformerBridge`` (or a plain ``TransformerBridge``) in
            place and return it."""
            from transformer_lens.model_bridge import TransformerBridge

            if type(bridge) is TransformerBridge:
                bridge.__class__ = SAETransformerBridge
                bridge._acts_to_saes = {}
                bridge._transcoder_output_hooks = {}
            if type(bridge) is SAETransformerBridge:
                from transformer_lens_mm.fast.patches import KV_CACHE_PATCH

                KV_CACHE_PATCH.apply()
            return cls._converted(bridge, SAETransformerBridge, fused)

        @classmethod
        def from_multimodal(
            cls, model: MultimodalTransformerBridge
        ) -> MultimodalSAETransformerBridge:
            """Give a built ``MultimodalTransformerBridge`` SAELens's SAE methods, in place (its
            weights, encoder, projection and settings are kept)."""
            if isinstance(model, cls):
                return model
            if type(model) is not MultimodalTransformerBridge:
                raise ArgumentTypeError(
                    f"from_multimodal converts a MultimodalTransformerBridge, got "
                    f"{type(model).__name__}"
                )
            model.__class__ = cls
            model._acts_to_saes = {}
            model._transcoder_output_hooks = {}
            return model

        @contextlib.contextmanager
        def _excluding(self, exclude: bool | list[int]) -> Iterator[None]:
            previous, self._exclude = self._exclude, exclude
            try:
                yield
            finally:
                self._exclude = previous

        def run_with_saes(self, *args: Any, exclude_special_tokens: Any = False, **kw: Any) -> Any:
            """SAELens's ``run_with_saes``, plus ``exclude_special_tokens`` (see the class)."""
            with self._excluding(exclude_special_tokens):
                return super().run_with_saes(*args, **kw)

        def run_with_cache_with_saes(
            self, *args: Any, exclude_special_tokens: Any = False, **kw: Any
        ) -> Any:
            """SAELens's ``run_with_cache_with_saes``, plus ``exclude_special_tokens``."""
            with self._excluding(exclude_special_tokens):
                return super().run_with_cache_with_saes(*args, **kw)

        def run_with_hooks_with_saes(
            self, *args: Any, exclude_special_tokens: Any = False, **kw: Any
        ) -> Any:
            """SAELens's ``run_with_hooks_with_saes``, plus ``exclude_special_tokens``."""
            with self._excluding(exclude_special_tokens):
                return super().run_with_hooks_with_saes(*args, **kw)

        def forward(self, input: Any = None, *args: Any, **kwargs: Any) -> Any:
            """The multimodal forward; with ``exclude_special_tokens`` set, each attached SAE
            is bypassed at the special tokens of a :class:`MultimodalInput` (not its image
            positions)."""
            wrappers = list(self._acts_to_saes.values()) if self._exclude is not False else []
            if not wrappers or not isinstance(input, MultimodalInput):
                return super().forward(input, *args, **kwargs)
            tokens = input.tokens.to(self.lm_device)
            mask = torch.zeros_like(tokens, dtype=torch.bool)
            for tid in _special_ids(self.tokenizer, self._exclude):
                mask |= tokens == tid
            mask &= ~input.image_mask.to(mask.device)
            for wrapper in wrappers:
                wrapper.set_token_mask(mask)
            try:
                return super().forward(input, *args, **kwargs)
            finally:
                for wrapper in wrappers:
                    wrapper.set_token_mask(None)

else:  # pragma: no cover

    class MultimodalSAETransformerBridge:  # type: ignore[no-redef]
        """Placeholder: this SAELens has no ``SAETransformerBridge`` (SAELens >= 6.32)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise MissingPackageError(
                "SAETransformerBridge needs sae-lens>=6.32: pip install -U sae-lens"
            )

        from_bridge = from_multimodal = classmethod(lambda cls, *a, **k: cls())
