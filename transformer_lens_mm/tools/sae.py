"""SAE features at image positions: what a sparse autoencoder reads in the soft-prompt tokens.

:func:`image_sae_features` runs SAELens's ``run_with_cache_with_saes`` on a multimodal batch
(a :class:`~transformer_lens_mm.core.sae.HookedMultimodalSAETransformer` or
:class:`~transformer_lens_mm.core.sae.MultimodalSAETransformerBridge`, TL 3.x) and returns
the SAE's feature activations at each item's image positions.

Example:
    >>> acts = image_sae_features(model, batch, sae)  # doctest: +SKIP
    >>> acts.shape  # [batch, n_image_tokens, d_sae]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, ArgumentTypeError, HookShapeError

__all__ = ["check_sae_width", "hook_width", "image_sae_features"]


def image_sae_features(
    model: MultimodalModel,
    batch: MultimodalInput,
    sae: Any,
    *,
    activation: str = "hook_sae_acts_post",
    **kwargs: Any,
) -> Float[Tensor, "batch n_image_tokens d_sae"]:
    """The SAE's feature activations at the image positions of ``batch``.

    Args:
        model: A ``HookedMultimodalSAETransformer`` (``from_parts`` given SAELens's
            ``HookedSAETransformer``) or a ``MultimodalSAETransformerBridge``.
        batch: The input.
        sae: An SAELens SAE; it sits at ``sae.cfg.metadata.hook_name``.
        activation: Which of the SAE's hook points (``hook_sae_acts_pre``/``_post``, ...).
        **kwargs: For ``run_with_cache_with_saes`` (``use_error_term``,
            ``exclude_special_tokens``, ...).

    Raises:
        TypeError: the model cannot run SAEs (no SAELens methods).
        ValueError: the SAE's hook point is not one of the model's.
        HookShapeError: the SAE's ``d_in`` does not match its hook point's width.
    """
    runner = getattr(model, "run_with_cache_with_saes", None)
    if runner is None:
        raise ArgumentTypeError(
            f"{type(model).__name__} cannot run SAEs: give it SAELens's methods with "
            "MultimodalSAETransformerBridge.from_multimodal(model) (bridge), or build it from "
            "SAELens's HookedSAETransformer (from_parts(lm=HookedSAETransformer"
            ".from_pretrained(...), ...)); TransformerLens 3.x, where SAELens runs"
        )
    hook_name = sae.cfg.metadata.hook_name
    resolve = getattr(model, "_resolve_hook_name", lambda name: name)
    if resolve(hook_name) not in model.hook_dict and hook_name != "hook_embed":
        raise ArgumentError(
            f"the SAE reads {hook_name!r}, which is not a hook point of this model; pick an SAE "
            "trained on one of model.hook_dict's names"
        )
    check_sae_width(model, sae)
    if hasattr(model, "get_sae_hook_name"):  # the bridge: SAELens resolves the alias
        name = model.get_sae_hook_name(sae, activation)
    else:
        name = f"{hook_name}.{activation}"
    _, cache = runner(batch, saes=[sae], names_filter=lambda n: n == name, **kwargs)
    rows = batch.image_positions
    index = torch.arange(len(batch), device=rows.device)[:, None]
    return cache[name][index, rows]


def hook_width(model: MultimodalModel, hook_name: str) -> int | None:
    """The last dimension of a hook point's activation, for TransformerLens's usual names
    (residual stream, embeddings, MLP and attention outputs: ``d_model``; MLP activations:
    ``d_mlp``; ``hook_z``: ``n_heads * d_head``); ``None`` for others."""
    cfg = model.cfg
    last = hook_name.rsplit(".", 1)[-1]
    if last in ("hook_post", "hook_pre", "hook_pre_linear") and ".mlp." in hook_name:
        return int(cfg.d_mlp)
    if last == "hook_z":
        return int(cfg.n_heads) * int(cfg.d_head)
    if last.startswith("hook_resid") or last in (
        "hook_embed", "hook_mlp_out", "hook_attn_out", "hook_mlp_in", "hook_normalized",
        "hook_image_embed",
    ):  # fmt: skip
        return int(cfg.d_model)
    return None


def check_sae_width(model: MultimodalModel, sae: Any) -> None:
    """Refuse an SAE or transcoder whose ``d_in`` (or ``d_out``) does not match its hook.

    Raises:
        HookShapeError: the widths differ.
    """
    meta = sae.cfg.metadata
    pairs = [(meta.hook_name, int(sae.cfg.d_in), "d_in")]
    out_name = getattr(meta, "hook_name_out", None)
    if out_name and hasattr(sae.cfg, "d_out"):
        pairs.append((out_name, int(sae.cfg.d_out), "d_out"))
    for name, width, what in pairs:
        want = hook_width(model, name)
        if want is not None and want != width:
            raise HookShapeError(
                f"the SAE's {what} is {width} but {name!r} carries vectors of {want} on this "
                f"model: pick an SAE trained on this model's {name}"
            )
