"""Attention knockout: block the flow from one group of positions to another in a window of
layers, and measure p(c) at the last position.

The question it answers without gradients: *in which layers does the text read the image?*
(Zhang et al., "Cross-modal information flow in multimodal LLMs", CVPR 2025). For a pair
``(source, target)`` of position groups and a window of layers ``[start, stop)``, every
attention head of those layers (or the chosen ``heads``) is stopped from reading the source
positions from the target positions: their scores are set to ``-inf`` at
``blocks.{l}.attn.hook_attn_scores`` before the softmax, so each target query spreads its
attention over what it may still see. Nothing else changes; the window slides over the layers.

Groups (:func:`position_groups`), per item of a :class:`MultimodalInput`:

* ``"image"``: the soft-prompt (image) positions;
* ``"prompt"``: the text after the image, except the last position and a caption;
* ``"last"``: the last real position (where ``c`` is predicted);
* ``"caption"``: caption tokens appended after the prompt (``batch.target_mask``), the
  caption-so-far of a captioning step.

A group may also be given as a ``[batch, pos]`` boolean mask. Each knockout has controls: the
same target cut off from as many *random* positions (never the source's, the target's or the
first position, the attention sink), size-matched where the sequence has enough of them
(``n_control`` says how many).

The cut sits on ``hook_attn_scores`` where TransformerLens computes the attention (the hooked
API, and bridge attention that TL rebuilds from q, k, v); the speed layer's fused attention (one
SDPA call, which has no scores to hook) steps aside in every layer that has such a hook and TL's
own attention runs there; the table's ``attrs["attention"]`` says so. Where a bridge hands the
whole attention to the Hugging Face module (TL fires ``hook_attn_scores`` after the fact and
discards edits, e.g. Qwen2.5-VL), :func:`knocked_out` edits the attention mask that module is
given instead: the same cut (whole layers only; per-head cuts raise
:class:`~transformer_lens_mm.errors.UnsupportedModelError`).

Example:
    >>> table = knockout_table(model, batch, target_ids, window=4)  # doctest: +SKIP
    >>> knockout_curve(table).head()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import (
    ArgumentError,
    InputShapeError,
    LayerRangeError,
    PositionGroupError,
    UnsupportedModelError,
)
from transformer_lens_mm.tools.attribution import last_position_logits

__all__ = [
    "GROUPS",
    "Knockout",
    "knocked_out",
    "knockout_curve",
    "knockout_hooks",
    "knockout_table",
    "layer_windows",
    "position_groups",
]

#: The named position groups.
GROUPS = ("image", "prompt", "last", "caption")
#: The pairs :func:`knockout_table` runs by default: image -> last (the prediction reads the
#: image directly), image -> prompt (the prompt reads it), prompt -> last.
DEFAULT_PAIRS = (("image", "last"), ("image", "prompt"), ("prompt", "last"))
ATTENTION_NOTE = (
    "TransformerLens's eager attention in the knocked-out layers: the fused SDPA path steps "
    "aside while hook_attn_scores has a hook"
)

Group = str | Bool[Tensor, "batch pos"]


def position_groups(batch: MultimodalInput) -> dict[str, Bool[Tensor, "batch pos"]]:
    """The named position groups of each item (see the module): ``{name: [batch, pos]}``.

    Example:
        >>> groups = position_groups(batch)  # doctest: +SKIP
        >>> groups["image"].sum(1)  # image tokens per item  # doctest: +SKIP
    """
    real = batch.attention_mask.bool()
    image = batch.image_mask & real
    n, seq = batch.tokens.shape
    rows = torch.arange(n, device=real.device)
    last = torch.zeros_like(real)
    last[rows, batch.last_positions.to(real.device)] = True
    caption = (
        batch.target_mask.bool() & real & ~last
        if batch.target_mask is not None
        else torch.zeros_like(real)
    )
    # the prompt: text after the first image position (a BOS before the image is no prompt)
    first_image = torch.where(image.any(1), image.float().argmax(1), torch.zeros_like(rows))
    after = torch.arange(seq, device=real.device)[None] > first_image[:, None]
    prompt = real & ~image & ~last & ~caption & after
    return {"image": image, "prompt": prompt, "last": last, "caption": caption}


def _resolve(group: Group, groups: Mapping[str, Tensor], what: str) -> tuple[str, Tensor]:
    if isinstance(group, str):
        if group not in groups:
            raise PositionGroupError(
                f"unknown {what} group {group!r}: name one of {list(groups)} or pass a "
                "[batch, pos] boolean mask"
            )
        return group, groups[group]
    mask = torch.as_tensor(group).bool()
    ref = groups["image"]
    if mask.shape != ref.shape:
        raise PositionGroupError(
            f"a {what} mask must be [batch, pos] = {tuple(ref.shape)}, got {tuple(mask.shape)}"
        )
    return "custom", mask.to(ref.device)


def layer_windows(n_layers: int, window: int = 1, *, stride: int = 1) -> list[tuple[int, int]]:
    """Sliding windows ``[start, stop)`` of ``window`` layers over ``n_layers`` layers.

    Example:
        >>> layer_windows(5, 2, stride=2)
        [(0, 2), (2, 4), (4, 5)]
    """
    if not 1 <= window <= n_layers:
        raise LayerRangeError(
            f"window={window} layers does not fit a {n_layers}-layer model: use 1..{n_layers}"
        )
    if stride < 1:
        raise LayerRangeError(f"stride must be >= 1, got {stride}")
    starts = range(0, max(n_layers - window, 0) + 1, stride)
    out = [(s, s + window) for s in starts]
    if out[-1][1] < n_layers and stride > 1:
        out.append((out[-1][0] + stride, n_layers))
    return out


def _check_windows(windows: Sequence[tuple[int, int]], n_layers: int) -> list[tuple[int, int]]:
    out = []
    for w in windows:
        start, stop = int(w[0]), int(w[1])
        if not 0 <= start < stop <= n_layers:
            raise LayerRangeError(
                f"window {(start, stop)} lies outside the model's layers: a window is "
                f"[start, stop) with 0 <= start < stop <= {n_layers}"
            )
        out.append((start, stop))
    if not out:
        raise LayerRangeError("no windows given: pass window=<layers> or windows=[(start, stop)]")
    return out


def _check_heads(heads: Sequence[int] | None, n_heads: int) -> list[int] | None:
    if heads is None:
        return None
    out = sorted({int(h) for h in heads})
    if not out or out[0] < 0 or out[-1] >= n_heads:
        raise LayerRangeError(f"heads must be a non-empty subset of 0..{n_heads - 1}, got {heads}")
    return out


def knockout_hooks(
    model: MultimodalModel,
    block: Mapping[int, Bool[Tensor, "batch query key"]],
    *,
    heads: Sequence[int] | None = None,
) -> list[tuple[str, object]]:
    """Forward hooks that remove ``block[layer][b, q, k]`` keys from queries' softmax.

    Args:
        model: A multimodal model (either TL API, or a native VLM bridge).
        block: Per layer, ``True`` where query ``q`` of row ``b`` may not read key ``k``.
        heads: Only these heads (default: all).

    Returns:
        ``[(hook name, hook)]`` for ``run_with_hooks`` / ``model.hooks``.

    Example:
        >>> groups = position_groups(batch)  # doctest: +SKIP
        >>> cut = groups["last"][:, :, None] & groups["image"][:, None, :]  # doctest: +SKIP
        >>> hooks = knockout_hooks(model, {3: cut})  # doctest: +SKIP
        >>> logits = model.run_with_hooks(batch, fwd_hooks=hooks)  # doctest: +SKIP
    """
    n_layers = int(model.cfg.n_layers)
    head_list = _check_heads(heads, int(model.cfg.n_heads))
    hooks = []
    for layer, mask in block.items():
        if not 0 <= int(layer) < n_layers:
            raise LayerRangeError(f"layer {layer} is outside the model's 0..{n_layers - 1}")

        def hook(scores: Tensor, hook: object, mask: Tensor = mask) -> Tensor:
            b, _, q, k = scores.shape
            if mask.shape[1] < q or mask.shape[2] < k or mask.shape[0] != b:
                raise PositionGroupError(
                    f"a knockout mask of shape {tuple(mask.shape)} does not fit attention scores "
                    f"{tuple(scores.shape)}: knockout runs on full forwards of the batch it was "
                    "built for (no KV cache)"
                )
            m = mask[:, -q:, :k].to(scores.device)[:, None]
            if head_list is not None:
                sel = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
                sel[head_list] = True
                m = m & sel[None, :, None, None]
            return scores.masked_fill(m, float("-inf"))

        hooks.append((hook_names.attn_scores(int(layer)), hook))
    return hooks


def _delegating_attention(model: MultimodalModel, layer: int) -> Any:
    """The Hugging Face attention module of a bridge layer whose attention TL does not compute
    itself (edits at ``hook_attn_scores`` are discarded there), else ``None``."""
    try:
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )
    except ImportError:  # TL 3.x without the bridge
        return None
    attn = getattr(model.blocks[layer], "attn", None)
    if isinstance(attn, AttentionBridge) and type(attn).forward is AttentionBridge.forward:
        return attn.original_component
    return None


def _mask_pre_hook(cut: Tensor) -> Any:
    """A forward pre-hook of a Hugging Face attention module that removes ``cut`` from the
    attention mask it is called with (boolean keep-masks, additive float masks, or none)."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        b, q = hidden.shape[0], hidden.shape[1]
        if "attention_mask" in kwargs or len(args) < 2:
            mask = kwargs.get("attention_mask")
        else:
            mask = args[1]
        c = cut[:, -q:].to(hidden.device)
        if c.shape[0] != b:
            raise PositionGroupError(
                f"a knockout mask for {c.shape[0]} rows met a batch of {b}: knockout runs on "
                "full forwards of the batch it was built for (no KV cache)"
            )
        if mask is None:
            k = c.shape[-1]
            keep = torch.ones(q, k, dtype=torch.bool, device=hidden.device).tril(k - q)
            mask = (keep[None] & ~c)[:, None]
        elif mask.dtype == torch.bool:
            mask = mask.expand(b, -1, -1, -1) & ~c[:, None, :, : mask.shape[-1]]
        else:
            lowest = torch.finfo(mask.dtype).min
            mask = mask.expand(b, -1, -1, -1).masked_fill(c[:, None, :, : mask.shape[-1]], lowest)
        if "attention_mask" in kwargs or len(args) < 2:
            kwargs = {**kwargs, "attention_mask": mask}
        else:
            args = (args[0], mask, *args[2:])
        return args, kwargs

    return hook


@contextlib.contextmanager
def knocked_out(
    model: MultimodalModel,
    block: Mapping[int, Bool[Tensor, "batch query key"]],
    *,
    heads: Sequence[int] | None = None,
) -> Iterator[None]:
    """Forwards inside the block run with ``block[layer][b, q, k]`` cut (see the module):
    through ``hook_attn_scores`` where TL computes the attention, through the attention mask of
    the Hugging Face module where a bridge hands attention to it.

    Args:
        model: A multimodal model (either TL API, or a native VLM bridge).
        block: Per layer, ``True`` where query ``q`` of row ``b`` may not read key ``k``.
        heads: Only these heads (default: all).

    Raises:
        LayerRangeError: a layer or head outside the model.
        UnsupportedModelError: ``heads`` on a layer whose attention is computed by Hugging Face.

    Example:
        >>> groups = position_groups(batch)  # doctest: +SKIP
        >>> cut = groups["last"][:, :, None] & groups["image"][:, None, :]  # doctest: +SKIP
        >>> with knocked_out(model, {3: cut, 4: cut}):  # doctest: +SKIP
        ...     logits = model(batch)
    """
    scored: dict[int, Tensor] = {}
    handles = []
    try:
        for layer, mask in block.items():
            hf_attn = _delegating_attention(model, int(layer))
            if hf_attn is None:
                scored[int(layer)] = mask
                continue
            if heads is not None:
                raise UnsupportedModelError(
                    f"layer {layer}'s attention is computed inside {type(hf_attn).__name__} "
                    "(TransformerLens hands it over whole), so single heads cannot be cut: "
                    "knock out whole layers (heads=None)"
                )
            handles.append(
                hf_attn.register_forward_pre_hook(_mask_pre_hook(mask), with_kwargs=True)
            )
        with model.hooks(fwd_hooks=knockout_hooks(model, scored, heads=heads)):
            yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Knockout:
    """One knockout condition: a window of layers and, per item, the (query, key) cut."""

    source: str
    target: str
    start: int
    stop: int
    kind: str  # "knockout" or "control"
    draw: int
    cut: Bool[Tensor, "batch query key"]
    n_blocked: Int[Tensor, " batch"]


def _cut(src: Tensor, dst: Tensor) -> Tensor:
    seq = src.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=src.device).tril()
    return dst[:, :, None] & src[:, None, :] & causal[None]


def _control_source(
    src: Tensor, dst: Tensor, real: Tensor, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per item, a random group as large as ``src`` (where there is room), visible to the
    target, outside source and target, never the first real position."""
    out = torch.zeros_like(src)
    sizes = torch.zeros(src.shape[0], dtype=torch.long)
    seq = src.shape[1]
    idx = torch.arange(seq, device=src.device)
    for i in range(src.shape[0]):
        first = int(real[i].float().argmax())
        last_q = int(idx[dst[i]].max())
        cand = real[i] & ~src[i] & ~dst[i] & (idx < last_q) & (idx != first)
        pool = idx[cand].cpu()
        n = min(int(src[i].sum()), len(pool))
        pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
        out[i, pick.to(src.device)] = True
        sizes[i] = n
    return out, sizes


def knockout_table(
    model: MultimodalModel,
    batch: MultimodalInput,
    target_ids: Int[Tensor, " batch"] | Sequence[int] | None = None,
    *,
    pairs: Sequence[tuple[Group, Group]] = DEFAULT_PAIRS,
    window: int = 1,
    stride: int = 1,
    windows: Sequence[tuple[int, int]] | None = None,
    heads: Sequence[int] | None = None,
    n_controls: int = 1,
    seed: int = 0,
    chunk_size: int = 16,
    verbose: bool = False,
) -> pd.DataFrame:
    """p(c) at the last position with each pair's flow cut in each window of layers.

    Args:
        model: A multimodal model (either TL API, or a native VLM bridge).
        batch: The input; each item's ``c`` is predicted at its last position.
        target_ids: ``c`` per item (default: the clean run's top token, the greedy caption's
            next word).
        pairs: ``(source, target)`` groups: names from :data:`GROUPS` or ``[batch, pos]`` masks.
        window: Layers per window (sliding by ``stride``), unless ``windows`` is given.
        stride: Step between windows.
        windows: Explicit ``[(start, stop)]`` windows (``stop`` exclusive).
        heads: Knock out these heads only (default: every head).
        n_controls: Random same-size source groups per pair (0: none).
        seed: Seed of the control draws (the same draw in every window of a pair).
        chunk_size: Conditions stacked along the batch in one forward.
        verbose: Show a progress bar.

    Returns:
        One row per (item, pair, window, kind, draw): ``item``, ``target_id`` (c),
        ``from_group`` and ``to_group`` (the pair's source and target), ``start``, ``stop``,
        ``kind`` (``knockout``/``control``), ``draw``, ``n_blocked`` (source positions cut,
        per item), ``p_clean``, ``p_c``, ``delta_p``, ``rel_p`` (p_c / p_clean).
        ``attrs["attention"]`` says how attention ran.

    Raises:
        PositionGroupError: an unknown or empty group for an item, or a pair whose source and
            target overlap.
        LayerRangeError: a window or head outside the model.

    Example:
        >>> table = knockout_table(model, batch, window=3)  # doctest: +SKIP
        >>> keys = ["from_group", "to_group", "start", "kind"]  # doctest: +SKIP
        >>> table.groupby(keys).rel_p.mean()  # doctest: +SKIP
    """
    n_layers = int(model.cfg.n_layers)
    wins = (
        _check_windows(windows, n_layers)
        if windows is not None
        else layer_windows(n_layers, window, stride=stride)
    )
    _check_heads(heads, int(model.cfg.n_heads))
    if n_controls < 0:
        raise ArgumentError(f"n_controls must be >= 0, got {n_controls}")
    batch = batch.to(model.lm_device)
    groups = position_groups(batch)
    real = batch.attention_mask.bool()
    n = len(batch)

    with torch.no_grad():
        clean = last_position_logits(model, batch).float().log_softmax(-1)
    if target_ids is None:
        tids = clean.argmax(-1).cpu()
    else:
        tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1).cpu()
        if tids.shape[0] != n:
            raise InputShapeError(f"need one target id per item ({n}), got {tids.shape[0]}")
    p_clean = clean[torch.arange(n), tids.to(clean.device)].exp().cpu()

    conditions: list[Knockout] = []
    for pi, (source, target) in enumerate(pairs):
        src_name, src = _resolve(source, groups, "source")
        dst_name, dst = _resolve(target, groups, "target")
        for name, mask in ((src_name, src), (dst_name, dst)):
            empty = (~mask.any(1)).nonzero().flatten().tolist()
            if empty:
                raise PositionGroupError(
                    f"the {name!r} group is empty for item(s) {empty[:5]}: drop the pair, or "
                    "build the batch with that group (captions=... for 'caption')"
                )
        overlap = (src & dst).any(1).nonzero().flatten().tolist()
        if overlap:
            raise PositionGroupError(
                f"source {src_name!r} and target {dst_name!r} overlap for item(s) "
                f"{overlap[:5]}: a knockout cuts one group off from another, disjoint one"
            )
        cut = _cut(src, dst)
        sizes = src.sum(1).cpu()
        draws = []
        gen = torch.Generator().manual_seed(seed * 1_000_003 + pi)
        for d in range(n_controls):
            ctrl, ctrl_sizes = _control_source(src, dst, real, gen)
            draws.append((d, _cut(ctrl, dst), ctrl_sizes))
        for start, stop in wins:
            conditions.append(Knockout(src_name, dst_name, start, stop, "knockout", 0, cut, sizes))
            for d, ctrl_cut, ctrl_sizes in draws:
                conditions.append(
                    Knockout(src_name, dst_name, start, stop, "control", d, ctrl_cut, ctrl_sizes)
                )

    rows: list[dict] = []
    per_chunk = max(1, chunk_size)
    n_chunks = math.ceil(len(conditions) / per_chunk)
    for c in tqdm(range(n_chunks), disable=not verbose, desc="attention knockout"):
        chunk = conditions[c * per_chunk : (c + 1) * per_chunk]
        stacked = batch.select([i for _ in chunk for i in range(n)])
        block: dict[int, Tensor] = {}
        for j, cond in enumerate(chunk):
            for layer in range(cond.start, cond.stop):
                if layer not in block:
                    seq = batch.tokens.shape[1]
                    block[layer] = torch.zeros(
                        len(chunk) * n, seq, seq, dtype=torch.bool, device=cond.cut.device
                    )
                block[layer][j * n : (j + 1) * n] = cond.cut
        with torch.no_grad(), knocked_out(model, block, heads=heads):
            logits = last_position_logits(model, stacked)
        logp = logits.float().log_softmax(-1)
        picked = logp[torch.arange(len(stacked)), tids.repeat(len(chunk)).to(logp.device)]
        p = picked.exp().cpu().reshape(len(chunk), n)
        for j, cond in enumerate(chunk):
            for i in range(n):
                rows.append(
                    dict(
                        item=i,
                        target_id=int(tids[i]),
                        from_group=cond.source,
                        to_group=cond.target,
                        start=cond.start,
                        stop=cond.stop,
                        kind=cond.kind,
                        draw=cond.draw,
                        n_blocked=int(cond.n_blocked[i]),
                        p_clean=float(p_clean[i]),
                        p_c=float(p[j, i]),
                    )
                )
    table = pd.DataFrame(rows)
    table["delta_p"] = table["p_c"] - table["p_clean"]
    table["rel_p"] = table["p_c"] / table["p_clean"].clip(lower=np.finfo(float).tiny)
    handed_over = [layer for layer in range(n_layers) if _delegating_attention(model, layer)]
    table.attrs["attention"] = (
        ATTENTION_NOTE
        if not handed_over
        else "the attention mask of the Hugging Face attention modules (TransformerLens hands "
        f"attention over whole in layers {handed_over})"
    )
    table.attrs["heads"] = "all" if heads is None else list(heads)
    return table


def knockout_curve(table: pd.DataFrame, *, value: str = "rel_p") -> pd.DataFrame:
    """Mean ``value`` per (pair, window, kind) over items (control draws averaged per item
    first), with the standard error: what
    :func:`~transformer_lens_mm.report.plotting.plot_knockout` draws.

    Example:
        >>> knockout_curve(table).query("kind == 'knockout'")  # doctest: +SKIP
    """
    keys = ["from_group", "to_group", "start", "stop", "kind"]
    per_item = table.groupby([*keys, "item"], sort=False)[value].mean().reset_index()
    out = per_item.groupby(keys, sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"].fillna(0.0) / np.sqrt(out["count"].clip(lower=1))
    return out.drop(columns="std").rename(columns={"count": "n_items"})
