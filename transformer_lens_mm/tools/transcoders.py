"""Transcoder latents as units: the paper's attribution ``g = Z * d y_c / d Z`` over the latents
of a transcoder that stands in for one MLP, instead of the MLP's neurons.

A transcoder reads what an MLP reads and writes what it writes through a sparse, wider latent
layer (the circuit-tracer line of work). Here it sits in the model with its *error term*: at
``hook_out`` the MLP's output becomes ``decode(z) + (mlp_out - decode(z)).detach()``, so the
forward is unchanged and the gradient of ``y_c`` reaches each latent ``z`` through the
transcoder's decoder only. :func:`transcoder_attribution` returns ``z``, ``dy_c/dz`` and their
product at the image positions of every item (one backward).

Any transcoder with ``encode``/``decode`` and ``W_dec`` works: SAELens's ``Transcoder`` family
(its ``cfg.metadata.hook_name``/``hook_name_out``), or this module's small :class:`Transcoder`,
which :func:`fit_transcoder` trains on a model's own activations (a few thousand steps on a CPU;
it reads the residual before the MLP, ``blocks.{l}.hook_resid_mid``, RMS-normalised, and writes
``blocks.{l}.hook_mlp_out``: names with the same values on both TL APIs).

:func:`latent_decodings` reads a latent's decoder row through the unembedding (as a neuron's
``W_out`` row is read, final norm included where the readout uses it);
:func:`neuron_overlap` asks, per image, whether each top latent writes like one of that image's
top neurons.

Example:
    >>> tc = fit_transcoder(model, batches, layer=12, d_latent=4096)  # doctest: +SKIP
    >>> attr = transcoder_attribution(model, batch, tc, target_ids)  # doctest: +SKIP
    >>> attr.top_k(20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import (
    ArgumentError,
    ArgumentTypeError,
    HookShapeError,
    InputShapeError,
    LayerRangeError,
)
from transformer_lens_mm.tools.attribution import frozen_parameters, last_position_logits
from transformer_lens_mm.tools.decoding import vocab_mask
from transformer_lens_mm.tools.readout import readout_for, through_final_norm, unit_write_vectors

__all__ = [
    "Transcoder",
    "TranscoderAttribution",
    "fit_transcoder",
    "latent_decodings",
    "neuron_overlap",
    "transcoder_attribution",
]


class Transcoder(nn.Module):
    """A ReLU transcoder of one MLP: ``z = relu(norm(x) W_enc + b_enc)``, ``y = z W_dec + b_dec``.

    Args:
        d_in: Width of what it reads (``d_model``).
        d_latent: Number of latents.
        d_out: Width of what it writes (``d_model``).
        hook_in: The hook point it reads.
        hook_out: The hook point whose value it stands in for.
        normalize_input: Divide the input by its RMS first (the MLP's norm, without weights).

    Example:
        >>> tc = Transcoder(8, 32, 8, hook_in="blocks.0.hook_resid_mid",
        ...                 hook_out="blocks.0.hook_mlp_out")
        >>> tc.encode(torch.randn(2, 8)).shape
        torch.Size([2, 32])
    """

    def __init__(
        self,
        d_in: int,
        d_latent: int,
        d_out: int,
        *,
        hook_in: str,
        hook_out: str,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.d_in, self.d_latent, self.d_out = int(d_in), int(d_latent), int(d_out)
        self.hook_in, self.hook_out = hook_in, hook_out
        self.normalize_input = normalize_input
        self.W_enc = nn.Parameter(torch.randn(d_in, d_latent) / d_in**0.5)
        self.b_enc = nn.Parameter(torch.zeros(d_latent))
        self.W_dec = nn.Parameter(torch.randn(d_latent, d_out) / d_latent**0.5)
        self.b_dec = nn.Parameter(torch.zeros(d_out))

    def _norm(self, x: Tensor) -> Tensor:
        if not self.normalize_input:
            return x
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_latent"]:
        return F.relu(self._norm(x.to(self.W_enc.dtype)) @ self.W_enc + self.b_enc)

    def decode(self, z: Float[Tensor, "... d_latent"]) -> Float[Tensor, "... d_out"]:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return self.decode(self.encode(x))

    def save(self, path: str | Path) -> None:
        """Write the weights and hook names as one safetensors file."""
        from safetensors.torch import save_file

        meta = {
            "hook_in": self.hook_in,
            "hook_out": self.hook_out,
            "normalize_input": str(self.normalize_input),
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> Transcoder:
        """Read a transcoder :meth:`save` wrote."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        d_in, d_latent = tensors["W_enc"].shape
        tc = cls(
            d_in, d_latent, tensors["W_dec"].shape[1],
            hook_in=meta["hook_in"], hook_out=meta["hook_out"],
            normalize_input=meta["normalize_input"] == "True",
        )  # fmt: skip
        tc.load_state_dict(tensors)
        return tc


@dataclass
class _Spec:
    encode: Any
    decode: Any
    hook_in: str
    hook_out: str
    w_dec: Tensor
    d_in: int
    d_out: int


def _spec(transcoder: Any) -> _Spec:
    """Ours or SAELens's (``cfg.metadata.hook_name`` / ``hook_name_out``)."""
    if isinstance(transcoder, Transcoder):
        return _Spec(
            transcoder.encode, transcoder.decode, transcoder.hook_in, transcoder.hook_out,
            transcoder.W_dec, transcoder.d_in, transcoder.d_out,
        )  # fmt: skip
    cfg = getattr(transcoder, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    out = getattr(meta, "hook_name_out", None)
    if meta is None or not out:
        raise ArgumentTypeError(
            f"{type(transcoder).__name__} is not a transcoder: pass a "
            "transformer_lens_mm.tools.transcoders.Transcoder or an SAELens Transcoder (with "
            "cfg.metadata.hook_name_out)"
        )
    return _Spec(
        transcoder.encode, transcoder.decode, meta.hook_name, out, transcoder.W_dec,
        int(cfg.d_in), int(cfg.d_out),
    )  # fmt: skip


def _check(model: MultimodalModel, spec: _Spec) -> None:
    d_model = int(model.cfg.d_model)
    for name, width, what in (
        (spec.hook_in, spec.d_in, "d_in"),
        (spec.hook_out, spec.d_out, "d_out"),
    ):
        if name not in model.hook_dict:
            raise HookShapeError(
                f"the transcoder's {what} hook {name!r} is not a hook point of this model"
            )
        if width != d_model:
            raise HookShapeError(
                f"the transcoder's {what} is {width} but {name!r} carries d_model = {d_model} "
                "vectors on this model: use a transcoder of this model"
            )


@dataclass
class TranscoderAttribution:
    """Latent activations, gradients and scores at the chosen positions of each item."""

    activations: Float[Tensor, "batch n_pos d_latent"]
    gradients: Float[Tensor, "batch n_pos d_latent"]
    positions: Int[Tensor, "batch n_pos"]
    target_ids: Int[Tensor, " batch"]

    @property
    def scores(self) -> Float[Tensor, "batch n_pos d_latent"]:
        """``g = z * dy_c/dz``."""
        return self.activations * self.gradients

    def top_k(self, k: int = 100) -> pd.DataFrame:
        """Each item's ``k`` highest-scoring (position, latent) entries: ``item``, ``index``
        (image token), ``position``, ``latent``, ``activation``, ``gradient``, ``score``,
        ``rank``."""
        rows = []
        scores = self.scores
        n, _, d = scores.shape
        for i in range(n):
            flat = scores[i].reshape(-1)
            top = flat.topk(min(k, flat.numel()))
            for rank, (value, j) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                p, latent = divmod(j, d)
                rows.append(
                    dict(
                        item=i,
                        index=p,
                        position=int(self.positions[i, p]),
                        latent=latent,
                        activation=float(self.activations[i, p, latent]),
                        gradient=float(self.gradients[i, p, latent]),
                        score=value,
                        rank=rank,
                        target_id=int(self.target_ids[i]),
                    )
                )
        return pd.DataFrame(rows)


def transcoder_attribution(
    model: MultimodalModel,
    batch: MultimodalInput,
    transcoder: Any,
    target_ids: Int[Tensor, " batch"] | Sequence[int],
    *,
    metric: str = "logit",
) -> TranscoderAttribution:
    """``z``, ``dy_c/dz`` and ``g = z * dy_c/dz`` of every latent at every image position.

    Args:
        model: A multimodal model (either TL API, or a native VLM bridge).
        batch: The input; ``y_c`` is read at each item's last position.
        transcoder: A :class:`Transcoder` or an SAELens ``Transcoder``.
        target_ids: ``c`` per item.
        metric: ``"logit"`` (the paper's) or ``"logprob"``.

    Raises:
        HookShapeError: the transcoder's hooks are not the model's, or its widths differ.

    Example:
        >>> attr = transcoder_attribution(model, batch, tc, target_ids)  # doctest: +SKIP
        >>> attr.top_k(10).head()  # doctest: +SKIP
    """
    spec = _spec(transcoder)
    _check(model, spec)
    if metric not in ("logit", "logprob"):
        raise ArgumentError(f"metric must be 'logit' or 'logprob', got {metric!r}")
    batch = batch.to(model.lm_device)
    n = len(batch)
    tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1)
    if tids.shape[0] != n:
        raise InputShapeError(f"need one target id per item ({n}), got {tids.shape[0]}")
    positions = batch.image_positions
    rows = torch.arange(n, device=positions.device)[:, None]
    state: dict[str, Tensor] = {}

    def read(x: Tensor, hook: Any) -> None:
        state["x"] = x.detach()

    def write(out: Tensor, hook: Any) -> Tensor:
        z = spec.encode(state["x"]).detach().requires_grad_(True)
        state["z"] = z
        y = spec.decode(z).to(out.dtype)
        return y + (out - y).detach()

    with torch.enable_grad(), frozen_parameters(model):
        logits = last_position_logits(
            model, batch, [(spec.hook_in, read), (spec.hook_out, write)]
        ).float()
        picked = logits[torch.arange(n), tids.to(logits.device)]
        if metric == "logprob":
            picked = picked - logits.logsumexp(-1)
        (grad,) = torch.autograd.grad(picked.sum(), state["z"])
    z = state["z"].detach()
    return TranscoderAttribution(
        z[rows, positions].float().cpu(),
        grad[rows, positions].float().cpu(),
        positions.cpu(),
        tids.cpu(),
    )


@torch.no_grad()
def latent_decodings(
    model: MultimodalModel, transcoder: Any, latents: Sequence[int], *, k: int = 10
) -> pd.DataFrame:
    """The ``k`` tokens each latent's decoder row promotes through the unembedding (final norm
    included where the model's readout uses it, as for neurons): ``latent``, ``tokens``,
    ``token_ids``. Works for a transcoder and for any SAE whose decoder writes ``d_model``
    vectors (residual stream, MLP or attention output).

    Example:
        >>> latent_decodings(model, tc, [3, 17], k=5)  # doctest: +SKIP
    """
    w_dec = getattr(transcoder, "W_dec", None)
    if not isinstance(w_dec, Tensor) or w_dec.ndim != 2 or w_dec.shape[1] != model.cfg.d_model:
        raise HookShapeError(
            f"{type(transcoder).__name__} has no [d_latent, d_model] decoder W_dec to read "
            "through the unembedding: pass a transcoder, or an SAE of the residual stream or an "
            "MLP output"
        )
    rows = through_final_norm(model, w_dec.detach()[list(latents)].float())
    logits = rows.to(model.W_U.device) @ model.W_U.detach().float()
    keep = vocab_mask(model, special_tokens=True).to(logits.device)
    ids = logits.masked_fill(~keep, float("-inf")).topk(k, dim=-1).indices.cpu()
    tok = model.tokenizer
    return pd.DataFrame(
        dict(
            latent=list(latents),
            token_ids=[r.tolist() for r in ids],
            tokens=[[tok.decode([t]) for t in r.tolist()] for r in ids],
        )
    )


@torch.no_grad()
def neuron_overlap(
    model: MultimodalModel,
    transcoder: Any,
    layer: int,
    latents: pd.DataFrame,
    neurons: pd.DataFrame,
) -> pd.DataFrame:
    """Per item: does each top latent write like one of the item's top neurons of ``layer``?

    A latent's nearest neuron is the one whose write vector (``unit_write_vectors``, in either
    orientation) has the highest ``|cosine|`` with the latent's decoder row.

    Args:
        model: The model.
        transcoder: The transcoder of ``layer``'s MLP.
        layer: Its layer.
        latents: ``TranscoderAttribution.top_k`` rows (``item``, ``latent``).
        neurons: The neuron search's top units (``item``, ``layer``, ``unit``).

    Returns:
        One row per item: ``n_latents`` (distinct top latents), ``n_neurons`` (the item's top
        neurons in ``layer``), ``matched`` (share of latents whose nearest neuron is one of
        them), ``chance`` (``n_neurons / d_mlp``), ``mean_abs_cos``.

    Example:
        >>> neuron_overlap(model, tc, 12, attr.top_k(20), units)  # doctest: +SKIP
    """
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    if not 0 <= layer < n_layers:
        raise LayerRangeError(f"layer {layer} is outside the model's 0..{n_layers - 1}")
    spec = _spec(transcoder)
    readout = readout_for(model)
    writes = unit_write_vectors(
        model, layer, range(d_mlp), torch.ones(d_mlp) if readout.signed else None,
        readout=readout,
    )  # fmt: skip
    writes = F.normalize(writes.float(), dim=-1)
    dec = through_final_norm(model, spec.w_dec.detach().float(), readout)
    dec = F.normalize(dec, dim=-1).to(writes.device)
    out = []
    for item, group in latents.groupby("item"):
        ids = sorted(set(group.latent.tolist()))
        cos = (dec[ids] @ writes.T).abs()
        best = cos.max(-1)
        top = set(neurons[(neurons.item == item) & (neurons.layer == layer)].unit.tolist())
        matched = [int(u) in top for u in best.indices.tolist()]
        out.append(
            dict(
                item=item,
                n_latents=len(ids),
                n_neurons=len(top),
                matched=sum(matched) / len(ids) if ids else 0.0,
                chance=len(top) / d_mlp,
                mean_abs_cos=float(best.values.mean()),
            )
        )
    return pd.DataFrame(out)


def fit_transcoder(
    model: MultimodalModel,
    batches: Iterable[MultimodalInput | Tensor],
    layer: int,
    *,
    d_latent: int = 1024,
    steps: int = 2000,
    lr: float = 1e-3,
    l1: float = 1e-3,
    batch_size: int = 1024,
    seed: int = 0,
    verbose: bool = False,
) -> Transcoder:
    """Train a :class:`Transcoder` of ``layer``'s MLP on the model's own activations.

    Args:
        model: The model.
        batches: Multimodal inputs (every real position is used) or token tensors (text).
        layer: The MLP's layer.
        d_latent: Number of latents.
        steps: Adam steps.
        lr: Learning rate.
        l1: Sparsity weight on ``sum(z * |W_dec row|)``.
        batch_size: Activation vectors per step.
        seed: Seed of the initialisation and the sampling.
        verbose: Show a progress bar.

    Returns:
        The transcoder, with ``fraction_variance_unexplained`` and ``mean_l0`` set from the
        last 10% of the steps.

    Example:
        >>> tc = fit_transcoder(model, [batch], layer=1, d_latent=64, steps=200)  # doctest: +SKIP
    """
    n_layers = int(model.cfg.n_layers)
    if not 0 <= layer < n_layers:
        raise LayerRangeError(f"layer {layer} is outside the model's 0..{n_layers - 1}")
    hook_in = hook_names.resid_mid(layer)
    hook_out = hook_names.mlp_out(layer)
    xs, ys = [], []
    store: dict[str, Tensor] = {}

    def grab(name: str):
        def hook(x: Tensor, hook: Any) -> None:
            store[name] = x.detach()

        return hook

    hooks = [(hook_in, grab("x")), (hook_out, grab("y"))]
    with torch.no_grad():
        for b in batches:
            with model.hooks(fwd_hooks=hooks):
                if isinstance(b, MultimodalInput):
                    b = b.to(model.lm_device)
                    model(b)
                    real = b.attention_mask.bool()
                else:
                    model.lm_forward(b.to(model.lm_device))
                    real = torch.ones(b.shape, dtype=torch.bool)
            real = real.to(store["x"].device)
            xs.append(store["x"][real].float().cpu())
            ys.append(store["y"][real].float().cpu())
    x, y = torch.cat(xs), torch.cat(ys)
    d = int(model.cfg.d_model)
    torch.manual_seed(seed)
    tc = Transcoder(d, d_latent, d, hook_in=hook_in, hook_out=hook_out)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    fvu, l0 = [], []
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    for step in tqdm(range(steps), disable=not verbose, desc=f"transcoder L{layer}"):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        z = tc.encode(x[idx])
        err = (tc.decode(z) - y[idx]).pow(2).sum(-1).mean()
        loss = err / var + l1 * (z * tc.W_dec.norm(dim=-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps - max(1, steps // 10):
            fvu.append(float(err / var))
            l0.append(float((z > 0).float().sum(-1).mean()))
    tc.fraction_variance_unexplained = sum(fvu) / len(fvu)
    tc.mean_l0 = sum(l0) / len(l0)
    tc.n_train_vectors = len(x)
    return tc.eval()
