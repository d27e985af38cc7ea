"""A gradient-free unit score in the spirit of MM_Neurons, and how two rankings agree.

The paper (Schwettmann et al. 2023) scores unit ``k`` at position ``p`` by
``Z_pk * dy_c/dZ_pk`` (:func:`~transformer_lens_mm.tools.attribution.attribute`: one backward
pass). MM_Neurons (Pan et al. 2024, ``opanhw/MM_Neurons`` ``src/trainer.py``) ranks units
without a backward pass by the activation times the unit's *direct* contribution to the target's
logit, its output weights read through the unembedding: ``Z_pk * (W_out[k] . W_U[:, c])``.
:func:`direct_effect` computes that at the image positions (one no-grad forward) and returns
an :class:`~transformer_lens_mm.tools.attribution.Attribution`, so ``top_k``,
``ranked_units`` and the decoding tools work on it unchanged.

The two differ where later layers matter: the direct path ignores what attention moves from the
unit's position to the position that predicts ``c``, what later MLPs make of the unit's output,
and the final norm's ``1/rms``; the gradient includes all of that (to first order). The norm
scales the write passes (Gemma's post-feedforward norm; the final norm's per-channel scale on
gated MLPs) are applied, as in the unit decodings (:mod:`~transformer_lens_mm.tools.readout`).
A unit that writes ``c``'s direction at an image position nobody reads scores high directly
and near zero by attribution; a layer-0 unit that later layers turn into ``c`` scores the
other way round.

Differences from MM_Neurons' code, on purpose: MM_Neurons reads the activation at the position
that generates the noun (the last position), not at image positions, and on SwiGLU models it
hooks ``act_fn`` (``silu(gate)``, without the ``up`` factor); here ``Z`` is TransformerLens's
``hook_post`` (the unit's full activation, the same ``Z`` the attribution uses) at the
positions you choose (``positions="all"`` or explicit indices include the predicting one).

Example:
    >>> direct = direct_effect(model, inputs, target_ids, top_k=100)  # doctest: +SKIP
    >>> compare_rankings(attribute(model, inputs, target_ids), direct)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import LanguageModel, MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.paper import TOP_K
from transformer_lens_mm.errors import ArgumentError, InputShapeError
from transformer_lens_mm.tools.attribution import (
    Attribution,
    Positions,
    check_layers,
    check_targets,
    last_position_logits,
    select_positions,
)
from transformer_lens_mm.tools.readout import Readout, readout_for, unit_write_vectors

__all__ = ["compare_rankings", "direct_effect", "direct_effect_weights", "spearman"]


def direct_effect_weights(
    model: LanguageModel, layers: Sequence[int], target_ids: Int[Tensor, " batch"]
) -> Float[Tensor, "n_layer batch d_mlp"]:
    """``W_out[l] @ W_U[:, c]``: what one unit of activation 1 adds to ``c``'s logit directly,
    through the norm scales the write passes (a post-MLP norm; the final norm where the
    model's readout includes it: :mod:`~transformer_lens_mm.tools.readout`). ``Z`` times this
    is unchanged when a gated unit's sign is flipped."""
    readout = readout_for(model)
    unsigned = Readout(signed=False, final_norm=readout.final_norm)  # Z carries the sign
    w_u = model.W_U.detach()[:, target_ids.to(model.W_U.device)].float()  # [d_model, batch]
    d_mlp = int(model.cfg.d_mlp)
    return torch.stack(
        [
            (
                unit_write_vectors(model, layer, range(d_mlp), readout=unsigned).to(w_u.device)
                @ w_u
            ).T
            for layer in layers
        ]
    )


@torch.no_grad()
def direct_effect(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Sequence[int] | Int[Tensor, " batch"],
    *,
    layers: Sequence[int] | None = None,
    positions: Positions | Tensor = "image",
    top_k: int | None = None,
    keep_activations: bool = True,
) -> Attribution:
    """Score every MLP unit ``k`` at every chosen position ``p`` by ``Z_pk * (W_out[k] . W_U[:,
    c])`` (no backward pass).

    Args:
        model: A multimodal model (either TransformerLens API).
        batch: The input (as for :func:`~transformer_lens_mm.tools.attribution.attribute`).
        target_ids: ``c`` per image.
        layers: Layers to score (default all).
        positions: ``"image"`` (default), ``"all"``, or explicit indices.
        top_k: Keep only each image's ``top_k`` best entries.
        keep_activations: Also keep ``Z`` at the kept entries.

    Returns:
        An :class:`~transformer_lens_mm.tools.attribution.Attribution` with
        ``metric="direct"`` (``target_values``: ``y_c`` of the same forward).
    """
    n = len(batch)
    tids = check_targets(model, target_ids, n)
    if top_k is not None and top_k < 1:
        raise ArgumentError(f"top_k must be >= 1, got {top_k}")
    layer_list = check_layers(model, layers)
    batch = batch.to(model.lm_device)
    sel = select_positions(batch, positions)
    rows = torch.arange(n, device=sel.device)[:, None]
    coef = direct_effect_weights(model, layer_list, tids).to(sel.device)  # [L, n, d_mlp]
    d_mlp = int(model.cfg.d_mlp)
    n_p = sel.shape[1]
    full = torch.zeros(n, len(layer_list), n_p, d_mlp, device=sel.device)
    acts = torch.zeros_like(full) if keep_activations else None

    def capture(slot: int):
        def hook(act: Tensor, hook: object) -> None:
            z = act[rows, sel].float()
            full[:, slot] = z * coef[slot][:, None, :]
            if acts is not None:
                acts[:, slot] = z

        return hook

    hooks = [(hook_names.mlp_post(layer), capture(i)) for i, layer in enumerate(layer_list)]
    logits = last_position_logits(model, batch, hooks)
    y = logits.gather(1, tids.to(logits.device)[:, None])[:, 0]
    attr = Attribution(
        layers=layer_list,
        positions=sel.cpu(),
        target_ids=tids,
        target_values=y.float().cpu(),
        metric="direct",
    )
    if top_k is None:
        attr.scores = full.cpu()
        attr.activations = None if acts is None else acts.cpu()
        return attr
    k = min(top_k, full[0].numel())
    vals, flat = full.reshape(n, -1).topk(k, dim=-1)
    attr.best_scores = vals.cpu()
    attr.best_index = torch.stack(
        [flat // (n_p * d_mlp), (flat // d_mlp) % n_p, flat % d_mlp], -1
    ).cpu()
    if acts is not None:
        attr.best_activations = acts.reshape(n, -1).gather(1, flat).cpu()
    return attr


def spearman(a: Float[Tensor, " n"], b: Float[Tensor, " n"]) -> float:
    """Spearman's rank correlation of two score vectors (average ranks for ties; pandas').

    Example:
        >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0])), 6)
        0.5
    """
    if a.shape != b.shape or a.ndim != 1 or a.numel() < 2:
        raise InputShapeError(
            f"need two 1-d vectors of the same length >= 2, got {a.shape}, {b.shape}"
        )
    x = pd.Series(a.detach().double().cpu().numpy())
    return float(x.corr(pd.Series(b.detach().double().cpu().numpy()), method="spearman"))


def compare_rankings(a: Attribution, b: Attribution, *, k: int = TOP_K) -> pd.DataFrame:
    """Per image, how two unit scores of the same batch agree (e.g. :func:`attribute` vs
    :func:`direct_effect`).

    Args:
        a: One scoring (full or top-k mode).
        b: Another, over the same layers and positions.
        k: Top entries compared.

    Returns:
        One row per image: ``overlap`` (the fraction of the ``k`` best ``(layer, unit,
        position)`` entries both keep), ``unit_overlap`` (the same for the distinct ``(layer,
        unit)`` pairs among them: ``|A & B| / min(|A|, |B|)``), ``spearman`` (over every scored
        entry when both are in full mode, else NaN), ``top_same`` (both put the same entry
        first).
    """
    if a.layers != b.layers or a.positions.shape != b.positions.shape:
        raise ArgumentError(
            "the two scorings cover other layers or positions: score the same batch with the "
            "same layers= and positions="
        )
    if len(a) != len(b):
        raise ArgumentError(f"the scorings have {len(a)} and {len(b)} images")
    ta, tb = a.top_k(k), b.top_k(k)
    rows = []
    for i in range(len(a)):
        ea = ta[ta["image"] == i][["layer", "unit", "position"]].itertuples(index=False)
        eb = tb[tb["image"] == i][["layer", "unit", "position"]].itertuples(index=False)
        la, lb = [tuple(e) for e in ea], [tuple(e) for e in eb]
        ua, ub = {e[:2] for e in la}, {e[:2] for e in lb}
        rho = (
            spearman(a.scores[i].reshape(-1), b.scores[i].reshape(-1))
            if a.scores is not None and b.scores is not None
            else float("nan")
        )
        rows.append(
            {
                "image": i,
                "k": k,
                "overlap": len(set(la) & set(lb)) / k,
                "unit_overlap": len(ua & ub) / max(1, min(len(ua), len(ub))),
                "spearman": rho,
                "top_same": la[0] == lb[0],
            }
        )
    return pd.DataFrame(rows).astype({"image": np.int64})
