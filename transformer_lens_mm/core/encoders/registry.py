"""Image encoders by kind: :func:`create_encoder` builds one, :func:`register_encoder` adds a
family (as timm's ``create_model`` does for architectures).

The built-in kinds: ``"timm"`` (:class:`~transformer_lens_mm.core.encoders.timm_encoder.
TimmEncoder`), ``"transformers"`` (:class:`~transformer_lens_mm.core.encoders.
transformers_encoder.TransformersEncoder`), ``"clip-resnet"`` (:class:`~transformer_lens_mm.
core.encoders.clip_resnet.CLIPResNetEncoder`, through open_clip). Qwen2.5-VL's tower
(:class:`~transformer_lens_mm.core.encoders.qwen_vision.QwenVisionEncoder`) is taken from a
loaded VLM by :class:`~transformer_lens_mm.core.native.NativeVLMBridge`, not built by name.

A builder is called as ``build(name, *, pretrained, source, layer, **options)``: ``name`` the
model's name in its library, ``pretrained`` whether to load weights (else random weights of the
same architecture), ``source`` a local copy of the weights (``None``: the library's hub),
``layer`` which block to read (``None``: final features); it returns an
:class:`~transformer_lens_mm.core.encoders.base.ImageEncoder`. LiMBeR's recipes
(:mod:`~transformer_lens_mm.core.recipes`) build their encoders through this registry.

Example:
    >>> enc = create_encoder("timm", "resnet10t", pretrained=False, num_classes=0)
    >>> enc.n_tokens, enc.d_image
    (36, 512)
    >>> {"timm", "transformers", "clip-resnet"} <= set(encoder_kinds())
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from transformer_lens_mm.core.encoders.base import ImageEncoder
from transformer_lens_mm.errors import EncoderError

__all__ = ["EncoderBuilder", "create_encoder", "encoder_kinds", "register_encoder"]


#: a builder: ``build(name, *, pretrained, source, layer, **options) -> ImageEncoder``
EncoderBuilder = Callable[..., ImageEncoder]


_BUILDERS: dict[str, EncoderBuilder] = {}


def register_encoder(
    kind: str, build: EncoderBuilder | None = None, *, replace: bool = False
) -> Any:
    """Register a family of encoders under ``kind`` (usable as a decorator).

    Args:
        kind: The name :func:`create_encoder`, ``from_parts(encoder_kind=...)`` and a run's
            ``[model] encoder_kind`` use.
        build: ``build(name, *, pretrained, source, layer, **options) -> ImageEncoder``.
        replace: Allow replacing an existing kind (else that is an error).

    Example:
        >>> @register_encoder("my-timm-avg")
        ... def _build(name, *, pretrained, source, layer, **options):
        ...     return create_encoder("timm", name, pretrained=pretrained, pool="avg", **options)
        >>> create_encoder("my-timm-avg", "resnet10t", pretrained=False, num_classes=0).n_tokens
        1
    """
    if build is None:
        return lambda fn: register_encoder(kind, fn, replace=replace)
    if not callable(build):
        raise EncoderError(f"register_encoder({kind!r}, ...) needs a callable builder")
    if kind in _BUILDERS and not replace and _BUILDERS[kind] is not build:
        raise EncoderError(
            f"encoder kind {kind!r} is already registered: choose another name or pass replace=True"
        )
    _BUILDERS[kind] = build
    return build


def encoder_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_BUILDERS)


def create_encoder(
    kind: str,
    name: str,
    *,
    pretrained: bool = True,
    source: str | os.PathLike | None = None,
    layer: int | None = None,
    **options: Any,
) -> ImageEncoder:
    """Build a frozen patch encoder of family ``kind``.

    Args:
        kind: A registered kind (:func:`encoder_kinds`: ``"timm"``, ``"transformers"``,
            ``"clip-resnet"``, and any registered since).
        name: The model's name in its library (timm name, transformers hub name or folder,
            open_clip ResNet name).
        pretrained: Load the weights (``False``: random weights, same architecture).
        source: A local copy of the weights (a ``save_pretrained`` folder, an open_clip
            weights file, a timm checkpoint); ``None``: the library's hub or cache.
        layer: Which block to read (``None``: the final features).
        **options: The family's own options (timm: ``pool``, ``data_config``, any
            ``create_model`` keyword; transformers: ``backend``; clip-resnet:
            ``image_size``).

    Raises:
        EncoderError: ``kind`` is not registered (the message lists the kinds), or the
            builder returned something that is not an :class:`ImageEncoder`.
    """
    if kind not in _BUILDERS:
        raise EncoderError(
            f"no encoder kind {kind!r}; the kinds are {encoder_kinds()} "
            "(add one with register_encoder)"
        )
    enc = _BUILDERS[kind](name, pretrained=pretrained, source=source, layer=layer, **options)
    if not isinstance(enc, ImageEncoder):
        raise EncoderError(
            f"the builder of encoder kind {kind!r} returned {type(enc).__name__}, not an "
            "ImageEncoder: subclass ImageEncoder (implement _features)"
        )
    return enc


def _timm(name, *, pretrained, source, layer, **options) -> ImageEncoder:  # type: ignore[no-untyped-def]
    from transformer_lens_mm.core.encoders.timm_encoder import TimmEncoder

    if source is not None:  # a local checkpoint of the same architecture
        options["pretrained_cfg_overlay"] = {"file": str(source)}
    return TimmEncoder.from_timm(name, pretrained=pretrained, layer=layer, **options)


def _transformers(name, *, pretrained, source, layer, **options) -> ImageEncoder:  # type: ignore[no-untyped-def]
    from transformer_lens_mm.core.encoders.transformers_encoder import TransformersEncoder

    return TransformersEncoder.from_pretrained(
        source or name, pretrained=pretrained, layer=layer, **options
    )


def _clip_resnet(name, *, pretrained, source, layer, **options) -> ImageEncoder:  # type: ignore[no-untyped-def]
    from transformer_lens_mm.core.encoders.clip_resnet import CLIPResNetEncoder

    tag = (str(source) if source else "openai") if pretrained else None
    return CLIPResNetEncoder.from_open_clip(name, pretrained=tag, layer=layer, **options)


register_encoder("timm", _timm)
register_encoder("transformers", _transformers)
register_encoder("clip-resnet", _clip_resnet)
