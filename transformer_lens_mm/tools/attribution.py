"""Attribution of a target logit to every MLP unit: ``g = Z * dy_c/dZ``.

One forward and one backward per batch score every unit (``mlp.hook_post``) of every chosen
layer at the chosen positions (image positions by default). The backward starts from ``y_c``
only and builds no parameter gradients: the graph is rooted at the embedding output, and each
layer's scores are taken by a tensor hook the moment its gradient is ready, then either stored
(``[batch, layer, position, unit]``, fp32) or merged into a running per-image top-k.

Example:
    >>> attr = attribute(model, batch, target_ids)  # doctest: +SKIP
    >>> decode_unit_table(model, attr.top_k(100))  # doctest: +SKIP
       image  rank  layer  unit  position     score  activation            tokens
    0      0     0     12  9058        17  0.412...    1.93...  [ water, fish, ...]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import HookList, LanguageModel, MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.paper import TOP_K
from transformer_lens_mm.errors import ArgumentError, InputShapeError, OutOfRangeError
from transformer_lens_mm.fast.host import to_host

__all__ = [
    "Attribution",
    "attribute",
    "check_layers",
    "check_targets",
    "frozen_parameters",
    "last_position_logits",
    "last_position_metric",
    "select_positions",
    "target_metric",
]

Positions = Literal["image", "all"]
Metric = Literal["logit", "logprob"]


@contextlib.contextmanager
def frozen_parameters(model: LanguageModel) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on every parameter (restored afterwards)."""
    modules = [model] + [
        m
        for m in (getattr(model, "image_encoder", None), getattr(model, "image_projection", None))
        if m is not None
    ]
    params = {id(p): p for m in modules for p in m.parameters()}
    flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(False)
        yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])


def target_metric(
    logits: Float[Tensor, "batch pos d_vocab"],
    positions: Int[Tensor, " batch"],
    target_ids: Int[Tensor, " batch"],
    metric: Metric = "logit",
) -> Float[Tensor, " batch"]:
    """``y_c`` per item: the logit (or log-probability) of ``c`` at the predicting position."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return _metric_of(logits[rows, positions.to(logits.device)], target_ids, metric)


def _metric_of(
    picked: Float[Tensor, "batch d_vocab"], target_ids: Tensor, metric: Metric
) -> Float[Tensor, " batch"]:
    if metric == "logprob":
        picked = picked.float().log_softmax(-1)
    elif metric != "logit":
        raise ArgumentError(f"metric must be 'logit' or 'logprob', got {metric!r}")
    rows = torch.arange(picked.shape[0], device=picked.device)
    return picked[rows, target_ids.to(picked.device)]


def last_position_logits(
    model: MultimodalModel, batch: MultimodalInput, fwd_hooks: HookList = ()
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each item's last position, running ``fwd_hooks``.

    Through the model's ``logits_at``: where the model can, only those positions are unembedded
    (with a 50k vocabulary the unembedding of every position is ~20% of a forward and as much
    again in a backward).
    """
    rows = torch.arange(len(batch), device=batch.tokens.device)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        return model.logits_at(batch, rows, batch.last_positions)


def last_position_metric(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Tensor,
    metric: Metric = "logit",
    fwd_hooks: HookList = (),
) -> Float[Tensor, " batch"]:
    """``y_c`` (logit or log-probability of ``c``) at each item's last position."""
    return _metric_of(last_position_logits(model, batch, fwd_hooks), target_ids, metric)


@dataclass
class Attribution:
    """Scores of MLP units for one batch of images.

    In full mode ``scores`` is ``[batch, layer, position, unit]``; in top-k mode (``top_k=K``
    given to :func:`attribute`) only each image's ``K`` best ``(layer, position, unit)`` are kept
    in ``best_scores``/``best_index``.
    """

    layers: list[int]  # layer index of each layer slot
    positions: Int[Tensor, "batch n_pos"]  # sequence position of each position slot
    target_ids: Int[Tensor, " batch"]  # c per image
    target_values: Float[Tensor, " batch"]  # y_c per image
    metric: str  # "logit" or "logprob"
    scores: Float[Tensor, "batch n_layer n_pos d_mlp"] | None = None  # full mode
    activations: Float[Tensor, "batch n_layer n_pos d_mlp"] | None = None  # if kept
    best_scores: Float[Tensor, "batch k"] | None = None  # top-k mode
    best_index: Int[Tensor, "batch k 3"] | None = None  # (layer slot, position slot, unit)
    best_activations: Float[Tensor, "batch k"] | None = None  # top-k mode
    best_maps: Float[Tensor, "batch k n_pos"] | None = None  # keep_maps: each entry's unit
    best_units: Int[Tensor, "batch r 2"] | None = None  # rank_units: (layer, unit), best first
    best_unit_scores: Float[Tensor, "batch r"] | None = None  # their max score over positions

    def __len__(self) -> int:
        return int(self.target_ids.shape[0])

    @property
    def is_full(self) -> bool:
        return self.scores is not None

    def _require_full(self, what: str) -> Tensor:
        if self.scores is None:
            raise ArgumentError(
                f"{what} needs the full score tensor: run attribute(..., top_k=None)"
            )
        return self.scores

    def unit_scores(
        self, reduce: Literal["sum", "max", "mean"] = "sum"
    ) -> Float[Tensor, "batch n_layer d_mlp"]:
        """Per-unit aggregate over positions."""
        scores = self._require_full("unit_scores")
        if reduce == "sum":
            return scores.sum(2)
        if reduce == "mean":
            return scores.mean(2)
        if reduce == "max":
            return scores.max(2).values
        raise ArgumentError(f"reduce must be 'sum', 'mean' or 'max', got {reduce!r}")

    def ranked_units(
        self, reduce: Literal["sum", "max", "mean"] = "max", limit: int | None = None
    ) -> list[list[tuple[int, int]]]:
        """Per image, ``(layer, unit)`` pairs ranked by their score aggregated over positions.

        In top-k mode the units kept by ``attribute(..., rank_units=R)`` are used when present
        (exact for ``reduce="max"``), else the order of first appearance among the kept entries.
        """
        out: list[list[tuple[int, int]]] = []
        if self.scores is None and self.best_units is not None:
            if reduce != "max":
                raise ArgumentError("rank_units keeps the max over positions: use reduce='max'")
            return [[(a, b) for a, b in rows[:limit]] for rows in self.best_units.tolist()]
        if self.scores is None:
            assert self.best_index is not None
            for i in range(len(self)):
                seen: dict[tuple[int, int], None] = {}
                for slot, _, unit in self.best_index[i].tolist():
                    seen.setdefault((self.layers[slot], unit), None)
                out.append(list(seen)[:limit])
            return out
        agg = self.unit_scores(reduce)  # [batch, n_layer, d_mlp]
        d_mlp = agg.shape[-1]
        order = agg.reshape(len(self), -1).argsort(dim=-1, descending=True)
        if limit is not None:
            order = order[:, :limit]
        for i in range(len(self)):
            out.append([(self.layers[int(f) // d_mlp], int(f) % d_mlp) for f in order[i]])
        return out

    def _topk_index(self, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.scores is not None:
            b, n_l, n_p, d = self.scores.shape
            if not 1 <= k <= n_l * n_p * d:
                raise ArgumentError(f"k={k} must be between 1 and the {n_l * n_p * d} scored units")
            vals, flat = self.scores.reshape(b, -1).topk(k, dim=-1)
            unit = flat % d
            pos = (flat // d) % n_p
            layer = flat // (d * n_p)
            acts = None
            if self.activations is not None:
                acts = self.activations.reshape(b, -1).gather(1, flat)
            return vals, torch.stack([layer, pos, unit], -1), acts
        assert self.best_scores is not None and self.best_index is not None
        if not 1 <= k <= self.best_scores.shape[1]:
            raise InputShapeError(
                f"k={k} but only the top {self.best_scores.shape[1]} units were kept: "
                f"rerun attribute(..., top_k={k}) or with top_k=None"
            )
        acts = None if self.best_activations is None else self.best_activations[:, :k]
        return self.best_scores[:, :k], self.best_index[:, :k], acts

    def top_k(self, k: int = TOP_K) -> pd.DataFrame:
        """The ``k`` highest-scoring ``(layer, unit, position)`` per image, as a table.

        Decode the units with :func:`~transformer_lens_mm.tools.decoding.decode_unit_table`.

        Args:
            k: Rows per image (the paper: 100).

        Returns:
            Columns ``image`` (row of the batch), ``rank, layer, unit, position, score``
            (+ ``activation`` when known).
        """
        vals, index, acts = self._topk_index(k)
        layers = torch.tensor(self.layers)[index[..., 0]]
        positions = self.positions.gather(1, index[..., 1])
        b = vals.shape[0]
        table = pd.DataFrame(
            {
                "image": np.repeat(np.arange(b), k),
                "rank": np.tile(np.arange(k), b),
                "layer": layers.reshape(-1).numpy(),
                "unit": index[..., 2].reshape(-1).numpy(),
                "position": positions.reshape(-1).numpy(),
                "score": vals.reshape(-1).numpy(),
            }
        )
        if acts is not None:
            table["activation"] = acts.reshape(-1).numpy()
        return table

    def top_k_maps(self, k: int = TOP_K) -> Float[Tensor, "rows n_pos"]:
        """The activation ``Z`` of each :meth:`top_k` row's unit at every scored position (with
        ``positions="image"``: its patch map), row for row with ``top_k(k)``.

        From the attribution's own forward: in top-k mode it needs ``attribute(...,
        keep_maps=True)``; in full mode the kept activations.
        """
        if self.scores is not None:
            if self.activations is None:
                raise ArgumentError(
                    "top_k_maps needs the activations: attribute(..., keep_activations=True)"
                )
            _, index, _ = self._topk_index(k)
            rows = torch.arange(len(self))[:, None].expand_as(index[..., 0])
            maps = self.activations[rows, index[..., 0], :, index[..., 2]]  # [batch, k, n_pos]
            return maps.reshape(-1, maps.shape[-1])
        if self.best_maps is None:
            raise ArgumentError("top_k_maps needs attribute(..., top_k=K, keep_maps=True)")
        self._topk_index(k)  # checks k
        return self.best_maps[:, :k].reshape(-1, self.best_maps.shape[-1])

    def to_numpy(self) -> dict[str, np.ndarray]:
        """All tensors as numpy arrays (``None`` fields left out)."""
        out = {"layers": np.asarray(self.layers)}
        for name in (
            "positions",
            "target_ids",
            "target_values",
            "scores",
            "activations",
            "best_scores",
            "best_index",
            "best_activations",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.numpy()
        return out

    def to_pandas(self) -> pd.DataFrame:
        """Every stored score as a long table (image, layer, position, unit, score)."""
        if self.scores is None:
            return self.top_k(self.best_scores.shape[1])  # type: ignore[union-attr]
        b, n_l, n_p, d = self.scores.shape
        grid = np.stack(
            np.meshgrid(np.arange(b), np.arange(n_l), np.arange(n_p), np.arange(d), indexing="ij"),
            -1,
        ).reshape(-1, 4)
        pos = self.positions.numpy()[grid[:, 0], grid[:, 2]]
        return pd.DataFrame(
            {
                "image": grid[:, 0],
                "layer": np.asarray(self.layers)[grid[:, 1]],
                "position": pos,
                "unit": grid[:, 3],
                "score": self.scores.reshape(-1).numpy(),
            }
        )


def check_layers(model: LanguageModel, layers: Sequence[int] | None) -> list[int]:
    """``layers`` as non-negative indices (``None``: all), checked against the model."""
    return hook_names.resolve_layers(layers, int(model.cfg.n_layers))


def check_targets(
    model: LanguageModel, target_ids: Sequence[int] | Tensor, n: int
) -> Int[Tensor, " batch"]:
    """``c`` per image as a long tensor, checked: one per image, inside the vocabulary."""
    tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1)
    if tids.shape[0] != n:
        raise InputShapeError(f"got {tids.shape[0]} targets for {n} images: pass one per image")
    d_vocab = int(model.cfg.d_vocab)
    if tids.numel() and (int(tids.min()) < 0 or int(tids.max()) >= d_vocab):
        raise ArgumentError(f"target ids must lie in 0..{d_vocab - 1}, got {tids.tolist()}")
    return tids


def select_positions(batch: MultimodalInput, positions: Positions | Tensor) -> Tensor:
    """The scored positions ``[batch, n_pos]``: ``"image"``, ``"all"`` or explicit indices."""
    if isinstance(positions, Tensor):
        pos = positions.to(batch.tokens.device).long()
        if pos.ndim == 1:
            pos = pos.expand(len(batch), -1)
        seq = batch.tokens.shape[1]
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= seq):
            raise OutOfRangeError(
                f"positions must lie in 0..{seq - 1} (the sequence length is {seq})"
            )
        return pos
    if positions == "image":
        return batch.image_positions
    if positions == "all":
        seq = batch.tokens.shape[1]
        return torch.arange(seq, device=batch.tokens.device).expand(len(batch), -1)
    raise ArgumentError(
        f"positions must be 'image', 'all' or a tensor of indices, got {positions!r}"
    )


def attribute(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Sequence[int] | Int[Tensor, " batch"],
    *,
    layers: Sequence[int] | None = None,
    positions: Positions | Tensor = "image",
    metric: Metric = "logit",
    top_k: int | None = None,
    rank_units: int | None = None,
    keep_activations: bool = True,
    keep_maps: bool = False,
    fwd_hooks: HookList = (),
) -> Attribution:
    """Score every MLP unit ``k`` at every chosen position ``p``: ``Z_pk * dy_c/dZ_pk``.

    Args:
        model: A multimodal model (either TransformerLens API).
        batch: The input; ``y_c`` is read at ``batch.last_positions`` (append the caption text
            before ``c`` with :func:`~transformer_lens_mm.tools.targets.target_inputs`).
        target_ids: ``c`` per image.
        layers: Layers to score (default all; negative indices allowed).
        positions: ``"image"`` (default), ``"all"``, or explicit indices ``[batch, n]``/``[n]``.
        metric: ``"logit"`` (the paper's ``y_c``) or ``"logprob"``.
        top_k: Keep only each image's ``top_k`` best entries instead of the full tensor.
        rank_units: With ``top_k``, also keep each image's ``rank_units`` best ``(layer, unit)``
            pairs by their max score over the positions (streamed, exact), for
            :meth:`Attribution.ranked_units` (e.g. the ablation sweep's k up to 6400).
        keep_activations: Also keep ``Z`` at the scored entries.
        keep_maps: With ``top_k``, also keep each kept entry's unit at every scored position
            (its patch map with ``positions="image"``: :meth:`Attribution.top_k_maps`), taken
            from this forward (no second one).
        fwd_hooks: Extra hooks active during the forward (e.g. an ablation).

    Returns:
        An :class:`Attribution`.
    """
    n = len(batch)
    tids = check_targets(model, target_ids, n)
    layer_list = check_layers(model, layers)
    batch = batch.to(model.lm_device)
    sel = select_positions(batch, positions)
    rows = torch.arange(n, device=sel.device)[:, None]
    if top_k is not None and top_k < 1:
        raise ArgumentError(f"top_k must be >= 1, got {top_k}")
    if keep_maps and top_k is None:
        raise ArgumentError(
            "keep_maps is for top_k mode; with the full tensor the maps are in activations "
            "(Attribution.top_k_maps)"
        )
    if rank_units is not None and (top_k is None or rank_units < 1):
        raise ArgumentError(
            f"rank_units={rank_units} needs top_k (with the full tensor use ranked_units()) and "
            "must be >= 1"
        )

    d_mlp = int(model.cfg.d_mlp)
    device = batch.tokens.device
    # Scores stay on the model's device until the end: no host sync inside the backward.
    full = (
        None
        if top_k is not None
        else torch.zeros(n, len(layer_list), sel.shape[1], d_mlp, device=device)
    )
    full_acts = None if (top_k is not None or not keep_activations) else torch.zeros_like(full)
    best: dict[str, Tensor] = {}
    ranked: dict[str, Tensor] = {}

    def keep_units(slot: int, score: Tensor) -> None:
        """Merge this layer's units (max over positions) into the running top ``rank_units``."""
        assert rank_units is not None
        vals, unit = score.amax(1).topk(min(rank_units, d_mlp), dim=-1)
        pairs = torch.stack([torch.full_like(unit, layer_list[slot]), unit], -1)
        if ranked:
            vals = torch.cat([ranked["scores"], vals], 1)
            pairs = torch.cat([ranked["units"], pairs], 1)
            vals, order = vals.topk(min(rank_units, vals.shape[1]), dim=-1)
            pairs = pairs.gather(1, order[..., None].expand(-1, -1, 2))
        ranked.update(scores=vals, units=pairs)

    # the same contiguous positions in every row (image positions of a right-padded batch):
    # slices instead of gathers
    contiguous = bool((sel == sel[:1]).all()) and bool((sel[0].diff() == 1).all())
    span = slice(int(sel[0, 0]), int(sel[0, -1]) + 1) if contiguous and sel.numel() else None

    def pick(x: Tensor) -> Tensor:
        return x[:, span] if span is not None else x[rows, sel]

    def consume(slot: int, act: Tensor, grad: Tensor) -> None:
        a = pick(act).float()
        score = a * pick(grad).float()
        if rank_units is not None:
            keep_units(slot, score)
        n_p = sel.shape[1]
        k = min(top_k, n_p * d_mlp)
        vals, flat = score.reshape(n, -1).topk(k, dim=-1)
        idx = torch.stack([torch.full_like(flat, slot), flat // d_mlp, flat % d_mlp], -1)
        acts = a.reshape(n, -1).gather(1, flat)
        # each candidate's unit at every scored position: [n, k, n_pos]
        maps = (
            a.gather(2, idx[..., 2][:, None, :].expand(-1, n_p, -1)).transpose(1, 2)
            if keep_maps
            else None
        )
        if best:
            vals = torch.cat([best["scores"], vals], 1)
            idx = torch.cat([best["index"], idx], 1)
            acts = torch.cat([best["acts"], acts], 1)
            vals, order = vals.topk(min(top_k, vals.shape[1]), dim=-1)
            idx = idx.gather(1, order[..., None].expand(-1, -1, 3))
            acts = acts.gather(1, order)
            if maps is not None:
                maps = torch.cat([best["maps"], maps], 1)
                maps = maps.gather(1, order[..., None].expand(-1, -1, n_p))
        best.update(scores=vals, index=idx, acts=acts)
        if maps is not None:
            best["maps"] = maps

    def make_leaf(x: Tensor, hook: Any) -> Tensor:
        return x.detach().requires_grad_(True)

    scored: set[int] = set()

    def capture(slot: int):
        def hook(act: Tensor, hook: Any) -> None:
            if not act.requires_grad:
                return
            if full is None:
                saved = act.detach()
                act.register_hook(lambda grad: consume(slot, saved, grad))
                return
            # Full tensor: Z goes straight into its slot of the result and is multiplied by
            # its gradient there in place, so no copy of the activations waits for the
            # backward besides the result itself (with frozen weights, autograd keeps none).
            full[:, slot] = pick(act.detach())
            if full_acts is not None:
                full_acts[:, slot] = full[:, slot]

            def score(grad: Tensor) -> None:
                full[:, slot].mul_(pick(grad))
                scored.add(slot)

            act.register_hook(score)

        return hook

    hooks = [(hook_names.EMBED, make_leaf)]
    hooks += [(hook_names.mlp_post(layer), capture(i)) for i, layer in enumerate(layer_list)]
    with torch.enable_grad(), frozen_parameters(model):
        y = last_position_metric(model, batch, tids, metric, [*hooks, *fwd_hooks])
        y.sum().backward()
    if full is not None:  # a layer whose activations got no gradient scores 0, not Z
        for slot in set(range(len(layer_list))) - scored:
            full[:, slot] = 0
    attr = Attribution(
        layers=layer_list,
        positions=sel.cpu(),
        target_ids=tids,
        target_values=y.detach().float().cpu(),
        metric=metric,
    )
    if full is not None:  # hundreds of MB on a real batch: copied through pinned memory
        attr.scores = to_host(full)
        attr.activations = None if full_acts is None else to_host(full_acts)
    else:
        attr.best_scores, attr.best_index = best["scores"].cpu(), best["index"].cpu()
        attr.best_activations = best["acts"].cpu() if keep_activations else None
        attr.best_maps = to_host(best["maps"]) if "maps" in best else None
        if ranked:
            attr.best_units, attr.best_unit_scores = ranked["units"].cpu(), ranked["scores"].cpu()
    return attr
