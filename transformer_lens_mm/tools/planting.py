"""Planted multimodal neurons: a known answer inside a real model, for measuring power.

A null result ("no unit decodes to c") means something only if the tests would have found such
units where they exist. :func:`design_plant` builds one gated-MLP unit that behaves like the
paper's multimodal neurons: it reads a concept's direction in the image tokens (so it fires on
the object's patches) and writes ``c``'s unembedding direction into the residual stream;
:func:`planted` writes such units into a model's weights for the duration of a ``with`` block
(the original rows come back afterwards).

The unit (on a gated MLP, ``Z = act(x . gate) * (x . up)``, ``x`` the MLP's input) reads:

* ``gate = a (u - t v)``: ``u`` the concept's direction (the mean of ``x`` over the object's
  patches minus the mean over the other image patches of the calibration images, unit length),
  ``v`` the mean input direction without its ``u`` part, scaled so that ``x . v ~ 1`` (standing
  in for the bias these MLPs do not have), ``t`` a threshold halfway between the object
  patches' median projection and the 95th percentile of the other patches', ``a`` such that
  the median object patch gets 4: the unit is on over the object and near 0 elsewhere;
* ``up = sign * b v``: about constant over the image tokens, so ``Z ~ sign * b * act(...)``
  with ``b`` chosen so that the median object patch reaches ``z_target`` (a high quantile of
  the layer's real activations at image positions);
* ``W_out[k] = sign * r * w / |w|`` with ``w = W_U[:, c] * (s_post * s_final)``: the direction
  whose logits through the norms it passes favour ``c``, at ``r`` = the median norm of the
  layer's real output rows; optionally plus, in equal part, a direction that later layers
  carry from the image positions to ``c``'s prediction (``carried``): ``W_U[:, c]`` written at
  image positions need not reach the position that predicts ``c`` at all.

``sign = -1`` is the same unit with its up row and output row negated: identical outputs, the
activation negative where the unit fires. A readout that ignores the sign of a gated unit
decodes what it suppresses.

Example:
    >>> plant = design_plant(  # doctest: +SKIP
    ...     model, 10, 7, x_object, x_other, token_id=car, sign=-1, z_target=2.0
    ... )
    >>> with planted(model, [plant]):  # doctest: +SKIP
    ...     found = find_multimodal_neurons(model, images)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, ReadoutError
from transformer_lens_mm.tools.readout import (
    final_norm_scale,
    is_gated,
    post_mlp_norm_scale,
    unit_output_weights,
)

__all__ = ["Plant", "design_plant", "image_mlp_inputs", "patch_coverage", "planted"]


@dataclass
class Plant:
    """One planted unit: where it goes, what it stands for, and its three weight rows."""

    layer: int
    unit: int
    concept: str
    token_id: int
    sign: int  # +1: Z > 0 where it fires; -1: up and W_out negated (Z < 0, same outputs)
    gate: Float[Tensor, " d_model"]
    up: Float[Tensor, " d_model"]
    out: Float[Tensor, " d_model"]
    facts: dict[str, float] = field(default_factory=dict)  # separability, target Z, norms


@torch.no_grad()
def image_mlp_inputs(
    model: MultimodalModel, batch: MultimodalInput, layers: Sequence[int]
) -> dict[int, Float[Tensor, "batch n_image_tokens d_model"]]:
    """What each layer's MLP reads at the image positions: ``x = ln2(resid_mid)`` (fp32, CPU)."""
    layers = hook_names.resolve_layers(layers, int(model.cfg.n_layers))
    names = {hook_names.resid_mid(layer): layer for layer in layers}
    batch = batch.to(model.lm_device)
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
    rows = torch.arange(len(batch), device=batch.image_positions.device)[:, None]
    out = {}
    for name, layer in names.items():
        x = model.blocks[layer].ln2(cache[name])
        out[layer] = x[rows, batch.image_positions].float().cpu()
    return out


def patch_coverage(
    masks: Sequence[np.ndarray | Tensor], grid_size: tuple[int, int]
) -> Float[Tensor, "n n_image_tokens"]:
    """The share of each patch (row-major over ``grid_size``) that a mask covers.

    Example:
        >>> m = torch.zeros(4, 4, dtype=torch.bool); m[:2, :2] = True
        >>> patch_coverage([m], (2, 2)).tolist()
        [[1.0, 0.0, 0.0, 0.0]]
    """
    out = []
    for mask in masks:
        m = torch.as_tensor(np.asarray(mask)).float()[None, None]
        out.append(torch.nn.functional.adaptive_avg_pool2d(m, grid_size).reshape(-1))
    return torch.stack(out)


def design_plant(
    model: MultimodalModel,
    layer: int,
    unit: int,
    inputs_object: Float[Tensor, "n_obj d_model"],
    inputs_other: Float[Tensor, "n_other d_model"],
    *,
    token_id: int,
    concept: str = "",
    sign: int = 1,
    z_target: float,
    fire_at: float = 4.0,
    carried: Float[Tensor, " d_model"] | None = None,
) -> Plant:
    """A unit that fires on the concept's patches and writes ``c`` (see the module docstring).

    Args:
        model: A model with gated MLPs.
        layer: The unit's layer.
        unit: The unit replaced.
        inputs_object: The layer's MLP inputs at the concept's object patches (calibration).
        inputs_other: Its MLP inputs at every other image patch of the calibration images.
        token_id: ``c``, the token the unit writes.
        concept: A name for reports.
        sign: ``+1`` or ``-1`` (the unit with its up and output rows negated).
        z_target: ``|Z|`` at the median object patch (e.g. a high quantile of the layer's
            real activations at image positions).
        fire_at: The gate's pre-activation at the median object patch.
        carried: Optionally, a residual-stream direction that later layers carry from the image
            positions to the prediction of ``c`` (e.g. the mean gradient of ``y_c`` with respect
            to this layer's output at the object's patches): the unit then writes
            ``W_U[:, c]``'s direction plus this one, in equal parts. Without it the unit writes
            ``c``'s unembedding direction only, which a model need not read from image positions.
    """
    if not is_gated(model):
        raise ReadoutError("design_plant builds units of gated MLPs (act(gate) * up)")
    if sign not in (1, -1):
        raise ArgumentError(f"sign must be +1 or -1, got {sign}")
    if len(inputs_object) < 2 or len(inputs_other) < 2:
        raise ArgumentError(
            f"need object patches and other patches to calibrate on, got {len(inputs_object)} "
            f"and {len(inputs_other)}"
        )
    xo, rest = inputs_object.double(), inputs_other.double()
    mu = rest.mean(0)
    u = xo.mean(0) - mu
    u = u / u.norm()
    v = mu - (mu @ u) * u  # the mean input, without the concept's direction ...
    v = v / v.pow(2).sum()  # ... scaled so that x . v ~ 1 for a typical image token
    s_obj = xo @ u
    s_rest = rest @ u
    top = float(s_obj.median())
    low = float(torch.quantile(s_rest, 0.95))
    t = (top + low) / 2
    a = fire_at / max(top - t, 1e-6)
    gate = a * (u - t * v)
    act = float(torch.nn.functional.silu(torch.tensor(fire_at)))  # ~ gelu(4) too
    b = z_target / act
    up = sign * b * v
    w_u = model.W_U.detach().double()[:, int(token_id)].cpu()
    scale = torch.ones_like(w_u)
    for s in (post_mlp_norm_scale(model, layer), final_norm_scale(model)):
        if s is not None:
            scale = scale * s.double().cpu()
    w = w_u * scale
    w = w / w.norm()
    facts = {}
    if carried is not None:
        # how far what later layers carry to c is from c's own unembedding direction
        facts["cos_carried_unembedding"] = float(
            torch.nn.functional.cosine_similarity(carried.double().cpu(), w_u, dim=0)
        )
        post = post_mlp_norm_scale(model, layer)
        g = carried.double().cpu() * (post.double().cpu() if post is not None else 1.0)
        w = w + g / g.norm()
    norms = unit_output_weights(model, layer).detach().double().norm(dim=-1)
    r = float(norms.median())
    out = sign * r * w / w.norm()
    # how well u alone tells object patches from the others (1: perfectly)
    auc = float((s_obj[:, None] > s_rest[None, :]).double().mean())
    return Plant(
        layer=int(layer),
        unit=int(unit),
        concept=concept,
        token_id=int(token_id),
        sign=int(sign),
        gate=gate.float(),
        up=up.float(),
        out=out.float(),
        facts={
            "separability_auc": auc,
            "z_target": float(z_target),
            "out_norm": r,
            "t": t,
            **facts,
        },
    )


def _rows(model: MultimodalModel, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    mlp = model.blocks[layer].mlp
    w_in, w_gate, w_out = (getattr(mlp, n, None) for n in ("W_in", "W_gate", "W_out"))
    if w_in is None or w_gate is None or w_out is None:
        raise ReadoutError(f"layer {layer} has no gated MLP (W_in, W_gate, W_out) to plant into")
    return w_in, w_gate, w_out


@contextlib.contextmanager
def planted(model: MultimodalModel, plants: Sequence[Plant]) -> Iterator[MultimodalModel]:
    """Context manager: the model with ``plants`` written into its weights (the replaced rows
    are restored on exit, also after an error).

    The rows are written through the model's own ``W_in``/``W_gate``/``W_out`` (views of the
    parameters on both TL APIs); a model where they are copies is refused, not left unplanted.
    """
    saved: list[tuple[Tensor, Any, Tensor]] = []

    def write(w: Tensor, index: Any, value: Tensor) -> None:
        saved.append((w, index, w[index].detach().clone()))
        w[index] = value.to(w.device, w.dtype)

    try:
        with torch.no_grad():
            for p in plants:
                w_in, w_gate, w_out = _rows(model, p.layer)
                write(w_gate, (slice(None), p.unit), p.gate)
                write(w_in, (slice(None), p.unit), p.up)
                write(w_out, p.unit, p.out)
                again = _rows(model, p.layer)
                if not torch.allclose(again[2][p.unit].float().cpu(), p.out.cpu(), atol=1e-5):
                    raise ReadoutError(
                        "writing W_out did not reach the model's parameters (a processed copy?): "
                        "plant into an unprocessed model"
                    )
        yield model
    finally:
        with torch.no_grad():
            for w, index, value in reversed(saved):
                w[index] = value
