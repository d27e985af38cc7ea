"""How a unit's write reaches the logits: one definition of a unit's readout for every MLP.

The paper reads unit ``k`` of a GELU MLP (GPT-J) through its output weights,
``decoder(W_out[k]) = softmax(W_U W_out[k])`` (sec. 2.2). On a **gated** MLP (Llama, Gemma, Qwen,
SmolLM2: ``Z = act(gate) * up``) that readout is not defined by the model: negating row ``k`` of
the up projection and row ``k`` of ``W_out`` changes no output, no score ``Z * dy/dZ`` and no
zero-ablation, but it negates ``+W_out[k]``. What the unit adds to the residual stream at an
entry is ``Z_pk * W_out[k] = |Z_pk| * sign(Z_pk) W_out[k]``, so its readout there is the direction
``sign(Z_pk) * W_out[k]``, and the same for everything read from its activation (maps,
selectivity): ``sign * Z``. Both are unchanged by the flip.

A :class:`Readout` says how a model's units are read, resolved once per model by
:func:`readout_for`:

* ``signed``: orient each entry by ``sign(Z)`` (default on gated MLPs) or read ``+W_out[k]``
  (default on ungated MLPs: the paper's readout, whose GELU fixes the unit's sign);
* ``final_norm``: apply the final norm's effective per-channel scale before ``W_U`` (default on
  gated MLPs, where this readout is ours to define, and off on ungated ones, where the paper's
  ``W_U W_out[k]`` is kept exactly).

A norm that every write of a layer passes on its way to the residual stream (Gemma 2/3's
``post_feedforward_layernorm``, TL's ``ln2_post``) is always applied through its per-channel
scale: it is part of the unit's write. Effective scales are read per norm class (Gemma's
RMSNorm multiplies by ``1 + w`` in Hugging Face, while TransformerLens's conversion stores
``1 + w`` already); a class the table does not know raises :class:`ReadoutError` instead of
guessing, and :func:`register_norm_scale` teaches it a new one. The scalar ``1 / rms`` (and a
LayerNorm's centring) are left out: they do not change which tokens a direction favours.

Example:
    >>> readout_for(smollm2_model)  # doctest: +SKIP
    Readout(signed=True, final_norm=True)
    >>> vecs = unit_write_vectors(model, 12, [9058], signs=[-1.3])  # doctest: +SKIP
    >>> vecs.shape  # doctest: +SKIP
    torch.Size([1, 576])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens_mm.core.contract import LanguageModel
from transformer_lens_mm.core.hook_names import resolve_layer
from transformer_lens_mm.errors import ReadoutError, UnitIndexError

__all__ = [
    "Readout",
    "SignRule",
    "dominant_signs",
    "entry_signs",
    "final_norm_scale",
    "is_gated",
    "norm_scale",
    "post_mlp_norm_scale",
    "readout_for",
    "register_norm_scale",
    "signed_view",
    "through_final_norm",
    "unit_output_weights",
    "unit_write_vectors",
]

#: How an entry's write is oriented: ``"auto"`` (by ``sign(Z)`` on gated MLPs, ``+W_out`` on
#: ungated ones), ``"activation"`` (always by ``sign(Z)``), ``"weights"`` (always ``+W_out``).
SignRule = Literal["auto", "activation", "weights"]

# How a norm module's effective per-channel scale is read, by class name:
#   "w_or_weight": the stored scale is the effective one (TransformerLens's components store
#                  Gemma's 1 + w already; Llama/Qwen/Mistral RMSNorm, torch's LayerNorm);
#   "one_plus_weight": Hugging Face's Gemma-family RMSNorm multiplies by (1 + weight);
#   "none": no scale of its own (TL's LayerNormPre/RMSNormPre: folded elsewhere).
_NORM_RULES: dict[str, str] = {
    # TransformerLens HookedTransformer components (and our fused versions of them)
    "LayerNorm": "w_or_weight",  # TL's (w) and torch's (weight)
    "RMSNorm": "w_or_weight",  # TL's (w) and torch's (weight)
    "FusedLayerNorm": "w_or_weight",
    "FusedRMSNorm": "w_or_weight",
    "LayerNormPre": "none",
    "RMSNormPre": "none",
    "LayerNormPreBridge": "none",
    "RMSNormPreBridge": "none",
    # Hugging Face norms that scale by their weight
    "LlamaRMSNorm": "w_or_weight",
    "MistralRMSNorm": "w_or_weight",
    "MixtralRMSNorm": "w_or_weight",
    "Qwen2RMSNorm": "w_or_weight",
    "Qwen2_5_VLRMSNorm": "w_or_weight",
    "Qwen3RMSNorm": "w_or_weight",
    "Phi3RMSNorm": "w_or_weight",
    "GraniteRMSNorm": "w_or_weight",
    "Olmo2RMSNorm": "w_or_weight",
    "SmolLM3RMSNorm": "w_or_weight",
    # Hugging Face norms that scale by (1 + weight)
    "GemmaRMSNorm": "one_plus_weight",
    "Gemma2RMSNorm": "one_plus_weight",
    "Gemma3RMSNorm": "one_plus_weight",
}
_RULE_NAMES = ("w_or_weight", "one_plus_weight", "none")


def register_norm_scale(class_name: str, rule: str) -> None:
    """Teach the readout how a norm class scales its input.

    Args:
        class_name: The norm module's class name (for a bridge: the wrapped Hugging Face
            module's, e.g. ``"Qwen3NextRMSNorm"``).
        rule: ``"w_or_weight"`` (the scale is its ``w``/``weight``), ``"one_plus_weight"``
            (``1 + weight``, Gemma's convention) or ``"none"`` (no per-channel scale).

    Example:
        >>> register_norm_scale("MyRMSNorm", "w_or_weight")
    """
    if rule not in _RULE_NAMES:
        raise ReadoutError(f"rule must be one of {_RULE_NAMES}, got {rule!r}")
    _NORM_RULES[class_name] = rule


@dataclass(frozen=True)
class Readout:
    """How a model's MLP units are read out (:func:`readout_for` picks the defaults)."""

    signed: bool  # orient each entry by sign(Z) (gated MLPs) or read +W_out[k] (the paper's)
    final_norm: bool  # apply the final norm's effective scale before W_U


def is_gated(model: LanguageModel) -> bool:
    """Whether the model's MLPs are gated (``act(gate) * up``): their units have no sign."""
    gated = getattr(model.cfg, "gated_mlp", None)
    if gated is not None:
        return bool(gated)
    return getattr(model.blocks[0].mlp, "W_gate", None) is not None


def readout_for(
    model: LanguageModel, *, sign: SignRule = "auto", final_norm: bool | None = None
) -> Readout:
    """The readout of ``model``'s units (defaults by its MLP; see the module docstring).

    Args:
        model: Either TL API.
        sign: :data:`SignRule`.
        final_norm: Apply the final norm's scale (``None``: on gated MLPs only).

    Example:
        >>> readout_for(model, sign="weights", final_norm=False)  # doctest: +SKIP
        Readout(signed=False, final_norm=False)
    """
    rules = {"auto": None, "activation": True, "weights": False}
    if sign not in rules:
        raise ReadoutError(f"sign must be one of {sorted(rules)}, got {sign!r}")
    gated = is_gated(model)
    signed = gated if rules[sign] is None else bool(rules[sign])
    return Readout(signed=signed, final_norm=gated if final_norm is None else bool(final_norm))


def entry_signs(readout: Readout, activations: Any) -> Tensor:
    """``+1``/``-1`` per entry: ``sign(Z)`` under a signed readout (0 counts as ``+1``), else
    ``+1``.

    Example:
        >>> entry_signs(Readout(True, True), [0.5, -2.0, 0.0]).tolist()
        [1, -1, 1]
        >>> entry_signs(Readout(False, False), [0.5, -2.0]).tolist()
        [1, 1]
    """
    if isinstance(activations, Tensor):
        z = activations.detach().float().cpu().reshape(-1)
    else:
        z = torch.as_tensor(np.asarray(activations, dtype=np.float64)).reshape(-1)
    if not readout.signed:
        return torch.ones(z.shape[0], dtype=torch.long)
    return torch.where(z < 0, -1, 1).long()


def dominant_signs(readout: Readout, maps: Float[Tensor, "n n_pos"]) -> Tensor:
    """``+1``/``-1`` per map: the sign of its value of largest magnitude (its strongest write on
    that image), under a signed readout; ``+1`` otherwise. Used to orient units that have no
    entry of their own (random controls): a flip of the unit flips this sign with its map.

    Example:
        >>> dominant_signs(Readout(True, True), torch.tensor([[0.1, -3.0], [2.0, -1.0]])).tolist()
        [-1, 1]
    """
    maps = maps.reshape(maps.shape[0], -1)
    if not readout.signed or maps.shape[1] == 0:
        return torch.ones(maps.shape[0], dtype=torch.long)
    peak = maps.gather(1, maps.abs().argmax(1, keepdim=True)).squeeze(1)
    return torch.where(peak < 0, -1, 1).long()


def unit_output_weights(model: LanguageModel, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of one layer's MLP (rows are units), on either TL API."""
    layer = resolve_layer(layer, int(model.cfg.n_layers))
    mlp = getattr(model.blocks[layer], "mlp", None)
    w = getattr(mlp, "W_out", None) if mlp is not None else None
    if w is None:
        raise ReadoutError(
            f"layer {layer} has no MLP output weights W_out (an attention-only model?): units "
            "can only be read out on models with MLPs"
        )
    return w


def _architecture(model: LanguageModel) -> str:
    cfg = model.cfg
    for name in ("architecture", "original_architecture", "model_name"):
        value = getattr(cfg, name, None)
        if value:
            return str(value)
    return type(model).__name__


def norm_scale(module: Any, *, model: LanguageModel | None = None) -> Tensor | None:
    """The effective per-channel scale of a norm module (``None``: it has none).

    Works on TransformerLens's own norms (``w``) and on a bridge's wrapped Hugging Face norms
    (``weight``, or ``1 + weight`` for the Gemma family).

    Raises:
        ReadoutError: for a norm class the readout does not know (it refuses to guess a scale
            of ones or the raw weight; :func:`register_norm_scale` adds one).
    """
    if module is None:
        return None
    names = [type(module).__name__]
    inner = getattr(module, "original_component", None)
    if inner is None:
        inner = getattr(module, "_original_component", None)
    if isinstance(inner, torch.nn.Module):
        names.append(type(inner).__name__)
    rule = next((_NORM_RULES[n] for n in names if n in _NORM_RULES), None)
    if rule is None:
        where = f" of {_architecture(model)}" if model is not None else ""
        raise ReadoutError(
            f"the unit readout does not know the norm {' wrapping '.join(names)}{where}: it will "
            "not assume a scale of ones or of its raw weight. Register it with "
            "transformer_lens_mm.tools.readout.register_norm_scale(class_name, rule) "
            f"(rule: one of {_RULE_NAMES}), or pass final_norm=False to read without it"
        )
    if rule == "none":
        return None
    source = inner if isinstance(inner, torch.nn.Module) else module
    weight = getattr(source, "w", None)
    if not isinstance(weight, Tensor):
        weight = getattr(source, "weight", None)
    if not isinstance(weight, Tensor):
        return None  # a norm without a learned scale (elementwise_affine=False)
    weight = weight.detach().float()
    return 1.0 + weight if rule == "one_plus_weight" else weight


def final_norm_scale(model: LanguageModel) -> Tensor | None:
    """The final norm's effective per-channel scale (``None``: no scale, e.g. folded).

    Example:
        >>> final_norm_scale(gemma_bridge)  # 1 + weight of Gemma3RMSNorm  # doctest: +SKIP
    """
    return norm_scale(getattr(model, "ln_final", None), model=model)


def through_final_norm(
    model: LanguageModel, vecs: Float[Tensor, "n d_model"], readout: Readout | None = None
) -> Float[Tensor, "n d_model"]:
    """``vecs`` (directions written into the residual stream) as the unembedding sees them:
    times the final norm's scale where the readout uses it (``readout.final_norm``).

    Example:
        >>> through_final_norm(model, W_dec[:3])  # doctest: +SKIP
    """
    readout = readout or readout_for(model)
    if readout.final_norm:
        final = final_norm_scale(model)
        if final is not None:
            return vecs * final.to(vecs.device, vecs.dtype)
    return vecs


def post_mlp_norm_scale(model: LanguageModel, layer: int) -> Tensor | None:
    """The per-channel scale of a norm applied to the MLP's output before it joins the residual
    stream (Gemma 2/3's ``post_feedforward_layernorm``: TL's ``ln2_post``), or ``None``."""
    layer = resolve_layer(layer, int(model.cfg.n_layers))
    block = model.blocks[layer]
    post = getattr(block, "ln2_post", None)
    if post is not None:
        return norm_scale(post, model=model)
    inner = getattr(block, "original_component", None)
    if inner is None:
        inner = getattr(block, "_original_component", None)
    if getattr(inner, "post_feedforward_layernorm", None) is not None:
        raise ReadoutError(
            f"layer {layer} of {_architecture(model)} normalises its MLP output "
            "(post_feedforward_layernorm) but the bridge exposes no ln2_post: the readout "
            "will not skip that norm"
        )
    return None


def unit_write_vectors(
    model: LanguageModel,
    layer: int,
    units: Sequence[int],
    signs: Any = None,
    *,
    readout: Readout | None = None,
) -> Float[Tensor, "n d_model"]:
    """The direction each unit writes, as the unembedding sees it: ``sign * W_out[k]`` times the
    post-MLP norm's scale (if the layer has one) and, with ``readout.final_norm``, the final
    norm's scale.

    Args:
        model: Either TL API.
        layer: The units' layer (negative allowed).
        units: Unit indices in ``0..d_mlp-1``.
        signs: Per unit, the activation ``Z`` at the entry (or just ``+1``/``-1``); only its
            sign is used, and only under a signed readout. Required then.
        readout: The readout (default :func:`readout_for`).

    Returns:
        ``[len(units), d_model]``, fp32.

    Raises:
        UnitIndexError: a unit outside ``0..d_mlp-1``.
        ReadoutError: a signed readout without ``signs``; see also :func:`norm_scale`.
    """
    readout = readout or readout_for(model)
    d_mlp = int(model.cfg.d_mlp)
    idx = [int(u) for u in units]
    bad = [u for u in idx if not 0 <= u < d_mlp]
    if bad:
        raise UnitIndexError(f"unit {bad[0]} is out of range: layers have d_mlp={d_mlp} units")
    if readout.signed and signs is None:
        raise ReadoutError(
            "this model's MLP is gated (act(gate) * up): a unit has no sign of its own, so its "
            "readout needs the sign of its activation at the entry. Pass signs= (Z at the entry, "
            "e.g. the top_k table's 'activation'), signs=[1] * n to read +W_out[k] on purpose, "
            "or readout=readout_for(model, sign='weights')"
        )
    vecs = unit_output_weights(model, layer).detach()[idx].float()
    if readout.signed:
        orient = entry_signs(readout, signs)
        if orient.shape[0] != len(idx):
            raise ReadoutError(f"got {orient.shape[0]} signs for {len(idx)} units: one per unit")
        vecs = vecs * orient.to(vecs.device, vecs.dtype)[:, None]
    post = post_mlp_norm_scale(model, layer)
    if post is not None:
        vecs = vecs * post.to(vecs.device)
    return through_final_norm(model, vecs, readout)


def signed_view(units: Any) -> Any:
    """A units table as the readout sees it, for display: ``activation`` becomes the signed
    activation ``sign * Z`` and the ``sign`` column (which depends on the weights' arbitrary
    orientation of a gated unit) is dropped, so a row reads the same whichever sign the
    weights give the unit.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"unit": [3, 4], "activation": [-2.0, 0.5], "sign": [-1, 1]})
        >>> signed_view(t).to_dict("list")
        {'unit': [3, 4], 'activation': [2.0, 0.5]}
    """
    out = units.copy()
    if "sign" in out:
        if "activation" in out:
            out["activation"] = out["activation"] * out["sign"]
        out = out.drop(columns=["sign"])
    return out
