"""Hook-point names, in TransformerLens's grammar.

Every name the package uses comes from here, so that ``cache[...]``, ``run_with_hooks`` and the
analysis tools agree with each other on both TransformerLens APIs.

Example:
    >>> from transformer_lens_mm import hook_names
    >>> hook_names.IMAGE_EMBED
    'hook_image_embed'
    >>> hook_names.mlp_post(3)
    'blocks.3.mlp.hook_post'
"""

from __future__ import annotations

from collections.abc import Sequence

from transformer_lens_mm.errors import ArgumentError, LayerRangeError, UnitIndexError

__all__ = [
    "EMBED",
    "IMAGE_EMBED",
    "IMAGE_FEATURES",
    "attn_scores",
    "mlp_out",
    "mlp_post",
    "resid_mid",
    "resid_post",
    "resolve_layer",
    "resolve_layers",
]

#: Output of the image encoder: ``[batch, n_image_tokens, d_image]``.
IMAGE_FEATURES = "hook_image_features"
#: Projected soft-prompt tokens as placed in the residual stream:
#: ``[batch, n_image_tokens, d_model]``.
IMAGE_EMBED = "hook_image_embed"
#: The LM's token-embedding output; the injection hook writes the image tokens here.
EMBED = "hook_embed"


def resolve_layer(layer: int, n_layers: int) -> int:
    """Resolve a possibly negative layer index, with a clear error when out of range.

    Args:
        layer: Layer index; negative values count from the end as in Python.
        n_layers: Number of layers of the model.

    Returns:
        The non-negative layer index.

    Example:
        >>> resolve_layer(-1, 12)
        11
    """
    if not -n_layers <= layer < n_layers:
        raise UnitIndexError(
            f"layer {layer} is out of range for a model with {n_layers} layers; "
            f"use 0..{n_layers - 1} (or -{n_layers}..-1)."
        )
    return layer % n_layers


def resolve_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Resolve a layer list (``None``: every layer), rejecting empty lists and duplicates.

    Example:
        >>> resolve_layers([0, -1], 12)
        [0, 11]
        >>> resolve_layers(None, 3)
        [0, 1, 2]
    """
    if layers is None:
        return list(range(n_layers))
    out = [resolve_layer(int(layer), n_layers) for layer in layers]
    if not out:
        raise ArgumentError("layers is empty: pass None for every layer or at least one index")
    if len(set(out)) != len(out):
        raise ArgumentError(f"layers contains duplicates: {list(layers)}")
    return out


def mlp_post(layer: int, n_layers: int | None = None) -> str:
    """Name of the MLP activation hook (the units' ``Z``) of a layer.

    Args:
        layer: Layer index (negative allowed when ``n_layers`` is given).
        n_layers: Number of layers, to resolve and check the index.

    Example:
        >>> mlp_post(-1, n_layers=4)
        'blocks.3.mlp.hook_post'
    """
    return _named(layer, n_layers, "blocks.{}.mlp.hook_post")


def resid_post(layer: int, n_layers: int | None = None) -> str:
    """Name of the residual stream after a block.

    Example:
        >>> resid_post(0)
        'blocks.0.hook_resid_post'
    """
    return _named(layer, n_layers, "blocks.{}.hook_resid_post")


def _named(layer: int, n_layers: int | None, template: str) -> str:
    if n_layers is not None:
        layer = resolve_layer(layer, n_layers)
    elif layer < 0:
        raise LayerRangeError("a negative layer needs n_layers to be resolved")
    return template.format(layer)


def attn_scores(layer: int, n_layers: int | None = None) -> str:
    """Name of a layer's attention scores before the softmax, ``[batch, head, query, key]``
    (the causal mask applied; -inf there removes a key from a query's softmax).

    Example:
        >>> attn_scores(2)
        'blocks.2.attn.hook_attn_scores'
    """
    return _named(layer, n_layers, "blocks.{}.attn.hook_attn_scores")


def resid_mid(layer: int, n_layers: int | None = None) -> str:
    """Name of the residual stream between a block's attention and its MLP (what the MLP's norm
    reads; absent in parallel-attention models such as GPT-J).

    Example:
        >>> resid_mid(1)
        'blocks.1.hook_resid_mid'
    """
    return _named(layer, n_layers, "blocks.{}.hook_resid_mid")


def mlp_out(layer: int, n_layers: int | None = None) -> str:
    """Name of the MLP's output as added to the residual stream, ``[batch, pos, d_model]``: what
    a transcoder of that MLP writes.

    Example:
        >>> mlp_out(1)
        'blocks.1.hook_mlp_out'
    """
    return _named(layer, n_layers, "blocks.{}.hook_mlp_out")
