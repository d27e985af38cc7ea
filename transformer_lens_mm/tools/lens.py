"""Logit lens: the residual stream after every layer (and mid-layer) read through the final
norm and the unembedding, at chosen positions, as a tidy table.

Built on TransformerLens's ``ActivationCache.accumulated_resid``; each component is passed
through the model's own final norm (``ln_final``, recomputing its scale per layer) and
``unembed``, so the last row (``final_post``) equals the model's logits.

Example:
    >>> table = logit_lens(model, batch, k=3)  # doctest: +SKIP
    >>> table[table.layer_label == "final_post"].head(3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import InputShapeError, OutOfRangeError

__all__ = ["logit_lens", "logit_lens_logits"]


@torch.no_grad()
def logit_lens_logits(
    model: MultimodalModel,
    batch: MultimodalInput,
    *,
    positions: Tensor | Sequence[int] | None = None,
    incl_mid: bool = True,
    cache: Any = None,
) -> tuple[Float[Tensor, "component batch n_pos d_vocab"], list[str], Tensor]:
    """Logits of every residual-stream component at ``positions``.

    Args:
        model: A multimodal model.
        batch: The input (ignored for the forward when ``cache`` is given).
        positions: ``[n]`` or ``[batch, n]`` sequence positions (default: each item's last).
        incl_mid: Include the mid-layer residual where the architecture has one.
        cache: A cache of this batch from ``run_with_cache`` (computed when ``None``).

    Returns:
        ``(logits, labels, positions)``: labels such as ``"3_pre"``, ``"3_mid"``,
        ``"final_post"``; positions as ``[batch, n]``.
    """
    batch = batch.to(model.lm_device)
    if cache is None:
        _, cache = model.run_with_cache(batch)
    seq = batch.tokens.shape[1]
    if positions is None:
        pos = batch.last_positions[:, None]
    else:
        pos = torch.as_tensor(positions, dtype=torch.long, device=batch.tokens.device)
        if pos.ndim == 1:
            pos = pos.expand(len(batch), -1)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= seq):
        raise OutOfRangeError(f"positions must lie in 0..{seq - 1} (the sequence length is {seq})")
    has_mid = "blocks.0.hook_resid_mid" in cache.cache_dict
    resid, labels = cache.accumulated_resid(incl_mid=incl_mid and has_mid, return_labels=True)
    rows = torch.arange(len(batch), device=pos.device)[:, None]
    picked = resid[:, rows, pos]  # [component, batch, n, d_model]
    n_comp, b, n, d = picked.shape
    flat = picked.reshape(n_comp * b, n, d)
    logits = model.unembed(model.ln_final(flat))
    return logits.reshape(n_comp, b, n, -1), list(labels), pos


def logit_lens(
    model: MultimodalModel,
    batch: MultimodalInput,
    *,
    positions: Tensor | Sequence[int] | None = None,
    k: int = 5,
    incl_mid: bool = True,
    target_ids: Sequence[int] | None = None,
    cache: Any = None,
) -> pd.DataFrame:
    """Top-``k`` tokens and probabilities of every residual component, as a tidy table.

    Args:
        model: A multimodal model.
        batch: The input.
        positions: Positions to read (default: each item's last).
        k: Tokens per (component, image, position).
        incl_mid: Include mid-layer components.
        target_ids: When given (one per image), adds ``target_prob`` and ``target_rank``.
        cache: A cache of this batch, to skip the forward.

    Returns:
        Columns ``component, layer, image, position, rank, token, token_id, prob`` (+ target
        columns). ``layer`` is a float: ``l`` before block ``l``, ``l + 0.5`` mid-block,
        ``n_layers`` after the last.
    """
    logits, labels, pos = logit_lens_logits(
        model, batch, positions=positions, incl_mid=incl_mid, cache=cache
    )
    probs = logits.float().softmax(-1)
    top_p, top_i = probs.topk(k, dim=-1)
    n_layers = int(model.cfg.n_layers)
    rows = []
    tids = None if target_ids is None else torch.as_tensor(target_ids, dtype=torch.long)
    if tids is not None and tids.shape[0] != logits.shape[1]:
        raise InputShapeError(f"got {tids.shape[0]} target ids for {logits.shape[1]} images")
    for c, label in enumerate(labels):
        layer = _label_to_layer(label, n_layers)
        for b in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                extra = {}
                if tids is not None:
                    p = probs[c, b, j]
                    extra = {
                        "target_prob": float(p[tids[b]]),
                        "target_rank": int((p > p[tids[b]]).sum()),
                    }
                for r in range(k):
                    tid = int(top_i[c, b, j, r])
                    rows.append(
                        {
                            "component": label,
                            "layer": layer,
                            "image": b,
                            "position": int(pos[b, j]),
                            "rank": r,
                            "token": model.tokenizer.decode([tid]),
                            "token_id": tid,
                            "prob": float(top_p[c, b, j, r]),
                            **extra,
                        }
                    )
    return pd.DataFrame(rows)


def _label_to_layer(label: str, n_layers: int) -> float:
    if label.startswith("final"):
        return float(n_layers)
    num, kind = label.split("_", 1)
    return int(num) + (0.5 if kind == "mid" else 0.0)
