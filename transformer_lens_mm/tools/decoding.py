"""Reading units and soft prompts as words.

* :func:`decode_units`: a unit's output weights through the unembedding,
  ``softmax(W_U^T W_out[layer, unit])``, top-k tokens (the paper's unit decoding);
  :func:`decode_unit_table` adds them to a table of units (e.g. ``Attribution.top_k``).
* :func:`unit_token_ranks`: where a given token (e.g. the target ``c``) ranks in a unit's
  decoding, for models whose vocabulary is too large for ``c`` to reach any unit's top 10.
* :func:`decode_soft_prompts`: each image token's nearest vocabulary embeddings by cosine
  similarity with ``W_E`` (the paper's soft-prompt decoding), with
  :func:`random_soft_prompts` as the baseline of random vectors of the same norms.

Example:
    >>> decode_units(model, [(5, 9058)], k=3)  # doctest: +SKIP
    [[(' water', 0.031), (' fish', 0.027), (' swimming', 0.019)]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer_lens_mm.core.contract import LanguageModel
from transformer_lens_mm.core.hook_names import resolve_layer
from transformer_lens_mm.core.paper import DECODED_TOKENS, RANDOM_SOFT_PROMPTS, SOFT_PROMPT_TOKENS

__all__ = [
    "decode_soft_prompts",
    "decode_unit_table",
    "decode_units",
    "embedding_scale",
    "final_norm_weight",
    "random_soft_prompts",
    "soft_prompt_table",
    "unit_output_weights",
    "unit_token_ranks",
    "vocab_mask",
]


def unit_output_weights(model: LanguageModel, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of one layer's MLP (rows are units), on either TL API."""
    layer = resolve_layer(layer, int(model.cfg.n_layers))
    mlp = model.blocks[layer].mlp
    w = getattr(mlp, "W_out", None)
    if w is None:
        raise ValueError(f"layer {layer} has no MLP output weights (attention-only model?)")
    return w


def final_norm_weight(model: LanguageModel) -> Tensor | None:
    """The final norm's elementwise scale (``None`` when the model has none)."""
    ln = getattr(model, "ln_final", None)
    for name in ("w", "weight"):
        w = getattr(ln, name, None) if ln is not None else None
        if isinstance(w, Tensor):
            return w
    return None


def vocab_mask(model: LanguageModel, *, special_tokens: bool = True) -> Tensor:
    """Boolean mask over ``d_vocab``: True for rows that may be decoded.

    Rows beyond the tokenizer's vocabulary (GPT-J has 50400 rows for 50257 tokens) are never
    decoded; special tokens are excluded when ``special_tokens`` is True.
    """
    d_vocab = int(model.cfg.d_vocab)
    keep = torch.zeros(d_vocab, dtype=torch.bool)
    keep[: min(d_vocab, len(model.tokenizer))] = True
    if special_tokens:
        for tid in getattr(model.tokenizer, "all_special_ids", []):
            if 0 <= tid < d_vocab:
                keep[tid] = False
    return keep


@torch.no_grad()
def decode_units(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    *,
    k: int = DECODED_TOKENS,
    final_norm: bool = False,
    mask_special: bool = True,
) -> list[list[tuple[str, float]]]:
    """Top-``k`` tokens of ``softmax(W_out[layer, unit] @ W_U)`` for each ``(layer, unit)``.

    Args:
        model: A multimodal model (either TL API).
        units: ``(layer, unit)`` pairs.
        k: Tokens per unit.
        final_norm: Multiply by the final norm's scale before unembedding.
        mask_special: Never decode special tokens (and always skip unused vocabulary rows).

    Returns:
        For each unit, ``k`` pairs ``(token string, probability)``.
    """
    d_mlp = int(model.cfg.d_mlp)
    keep = vocab_mask(model, special_tokens=mask_special)
    if k < 1 or k > int(keep.sum()):
        raise ValueError(f"k={k} must be between 1 and the {int(keep.sum())} decodable tokens")
    w_u = model.W_U.detach()
    scale = final_norm_weight(model) if final_norm else None
    out: list[list[tuple[str, float]]] = []
    by_layer: dict[int, list[int]] = {}
    for i, (layer, unit) in enumerate(units):
        if not 0 <= int(unit) < d_mlp:
            raise IndexError(f"unit {unit} is out of range: layers have d_mlp={d_mlp} units")
        by_layer.setdefault(resolve_layer(int(layer), int(model.cfg.n_layers)), []).append(i)
    results: dict[int, list[tuple[str, float]]] = {}
    text: dict[int, str] = {}  # token id -> its string, decoded once
    for layer, idxs in by_layer.items():
        w_out = unit_output_weights(model, layer).detach()
        vecs = w_out[[int(units[i][1]) for i in idxs]].float()
        if scale is not None:
            vecs = vecs * scale.detach().float()
        logits = vecs @ w_u.float()
        logits[:, ~keep.to(logits.device)] = float("-inf")
        probs, ids = logits.softmax(-1).topk(k, dim=-1)
        for row, i in enumerate(idxs):
            results[i] = [
                (text[t] if t in text else text.setdefault(t, model.tokenizer.decode([t])), p)
                for t, p in zip(ids[row].tolist(), probs[row].tolist())
            ]
    out = [results[i] for i in range(len(units))]
    return out


def decode_unit_table(
    model: LanguageModel,
    table: pd.DataFrame,
    *,
    k: int = DECODED_TOKENS,
    cache: dict[tuple[int, int, int], list[str]] | None = None,
) -> pd.DataFrame:
    """``table`` with a ``tokens`` column: each row's unit decoded (:func:`decode_units`).

    Each distinct ``(layer, unit)`` is decoded once, however many rows it has; with ``cache``
    (a dict kept across calls, e.g. the batches of one run), once across calls too.

    Args:
        model: The model whose weights decode the units (the cache assumes they stay the same).
        table: Rows with ``layer`` and ``unit`` (e.g. ``Attribution.top_k``).
        k: Tokens per unit (the paper: 10).
        cache: ``(layer, unit, k) -> tokens``, filled as units are decoded.

    Returns:
        A copy of ``table`` with ``tokens``: the ``k`` decoded token strings, best first.
    """
    cache = {} if cache is None else cache
    pairs = sorted(set(zip(table["layer"].tolist(), table["unit"].tolist())))
    todo = [pair for pair in pairs if (*pair, k) not in cache]
    for pair, toks in zip(todo, decode_units(model, todo, k=k) if todo else []):
        cache[(*pair, k)] = [t for t, _ in toks]
    out = table.copy()
    out["tokens"] = [cache[(int(la), int(u), k)] for la, u in zip(table["layer"], table["unit"])]
    return out


@torch.no_grad()
def unit_token_ranks(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    token_ids: Sequence[int],
    *,
    final_norm: bool = False,
    mask_special: bool = True,
) -> Int[Tensor, " n_units"]:
    """Rank (0 = first) of ``token_ids[i]`` in the decoding of ``units[i]`` (``W_out @ W_U``).

    Only decodable tokens are ranked (special tokens and unused rows are skipped, as in
    :func:`decode_units`), so rank 0 means ``decode_units(...)[i][0]`` is that token.

    Example:
        >>> water = model.to_single_token(" water")  # doctest: +SKIP
        >>> unit_token_ranks(model, [(5, 9058)], [water])  # doctest: +SKIP
        tensor([0])
    """
    if len(units) != len(token_ids):
        raise ValueError(f"got {len(units)} units and {len(token_ids)} tokens: pass one per unit")
    keep = vocab_mask(model, special_tokens=mask_special)
    d_vocab = int(keep.shape[0])
    tids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(tids) and (int(tids.min()) < 0 or int(tids.max()) >= d_vocab):
        raise ValueError(f"token ids must lie in 0..{d_vocab - 1}")
    if len(tids) and not bool(keep[tids].all()):
        raise ValueError("a token id is a special or unused token that decodings never rank")
    w_u = model.W_U.detach().float()
    scale = final_norm_weight(model) if final_norm else None
    ranks = torch.zeros(len(units), dtype=torch.long)
    by_layer: dict[int, list[int]] = {}
    for i, (layer, unit) in enumerate(units):
        if not 0 <= int(unit) < int(model.cfg.d_mlp):
            raise IndexError(f"unit {unit} is out of range: layers have d_mlp={model.cfg.d_mlp}")
        by_layer.setdefault(resolve_layer(int(layer), int(model.cfg.n_layers)), []).append(i)
    for layer, idxs in by_layer.items():
        vecs = unit_output_weights(model, layer).detach()[[int(units[i][1]) for i in idxs]].float()
        if scale is not None:
            vecs = vecs * scale.detach().float()
        logits = vecs @ w_u.to(vecs.device)
        logits[:, ~keep.to(logits.device)] = float("-inf")
        own = logits.gather(1, tids[idxs, None].to(logits.device))
        ranks[idxs] = (logits > own).sum(1).cpu()
    return ranks


@torch.no_grad()
def decode_soft_prompts(
    model: LanguageModel,
    embeds: Float[Tensor, "... d_model"],
    *,
    k: int = SOFT_PROMPT_TOKENS,
    mask_special: bool = True,
) -> pd.DataFrame:
    """Nearest vocabulary tokens (cosine similarity with ``W_E``) of each soft-prompt vector.

    Args:
        model: A multimodal model.
        embeds: Soft-prompt tokens, e.g. ``cache["hook_image_embed"][i]`` (``[n, d_model]`` or
            ``[batch, n, d_model]``).
        k: Tokens per vector.
        mask_special: Skip special tokens and unused vocabulary rows.

    Returns:
        Columns ``index`` (flat vector index), ``rank``, ``token``, ``token_id``, ``cosine``.
    """
    vecs = embeds.detach().reshape(-1, embeds.shape[-1]).float()
    w_e = model.W_E.detach().float().to(vecs.device)
    sims = (
        torch.nn.functional.normalize(vecs, dim=-1) @ torch.nn.functional.normalize(w_e, dim=-1).T
    )
    keep = vocab_mask(model, special_tokens=mask_special).to(sims.device)
    sims[:, ~keep] = float("-inf")
    vals, ids = (t.cpu() for t in sims.topk(k, dim=-1))
    flat = ids.reshape(-1).tolist()
    text = {tid: model.tokenizer.decode([tid]) for tid in set(flat)}  # each token decoded once
    n = vecs.shape[0]
    return pd.DataFrame(
        {
            "index": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(k), n),
            "token": [text[tid] for tid in flat],
            "token_id": flat,
            "cosine": vals.reshape(-1).double().numpy(),
        }
    )


@torch.no_grad()
def embedding_scale(model: LanguageModel, token_ids: Sequence[int] | None = None) -> float:
    """How much the model scales token embeddings before the first block (``hook_embed``
    output over the ``W_E`` row): 1 for GPT-2/Llama, ``sqrt(d_model)`` for Gemma.

    Soft-prompt tokens are placed at ``hook_embed``, so compare their norms with
    ``W_E`` row norms times this (cosine decodings do not depend on it).

    Example:
        >>> embedding_scale(gemma_model)  # doctest: +SKIP
        25.298221
    """
    if token_ids is None:  # a few rows with a non-zero embedding (a pad row may be zero)
        head = model.W_E.detach()[:256].float().norm(dim=-1)
        token_ids = torch.nonzero(head > 0).flatten()[:8].tolist()
    ids = list(token_ids)
    tokens = torch.tensor([ids], device=model.W_E.device)
    seen: list[Tensor] = []

    def keep(x: Tensor, hook: object) -> None:
        seen.append(x.detach())

    with model.hooks(fwd_hooks=[("hook_embed", keep)]):
        try:
            model.lm_forward(tokens)  # type: ignore[attr-defined]
        except AttributeError:
            model(tokens)
    ratio = seen[0][0].float().norm(dim=-1) / model.W_E.detach()[ids].float().norm(dim=-1)
    return float(ratio.median())


def random_soft_prompts(
    like: Float[Tensor, "... d_model"], n: int = RANDOM_SOFT_PROMPTS, *, seed: int = 0
) -> Float[Tensor, "n d_model"]:
    """``n`` random Gaussian directions with norms drawn from ``like``'s norms (the baseline).

    Example:
        >>> random_soft_prompts(torch.ones(4, 8) * 3, n=2).norm(dim=-1)
        tensor([8.4853, 8.4853])
    """
    flat = like.detach().reshape(-1, like.shape[-1]).float().cpu()
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, flat.shape[-1], generator=gen), dim=-1)
    norms = flat.norm(dim=-1)[torch.randint(0, flat.shape[0], (n,), generator=gen)]
    return dirs * norms[:, None]


def soft_prompt_table(
    model: LanguageModel,
    embeds: Float[Tensor, "batch n_image_tokens d_model"],
    *,
    k: int = SOFT_PROMPT_TOKENS,
    seed: int = 0,
) -> pd.DataFrame:
    """Nearest tokens of each image's soft prompts and of as many norm-matched random vectors.

    The paper's check that soft prompts do not decode to their image's concept by themselves:
    compare the ``"image"`` rows with the ``"random"`` baseline (:func:`random_soft_prompts`).

    Args:
        model: A multimodal model.
        embeds: Soft prompts per image, e.g. ``model.embed_images(batch)``.
        k: Nearest tokens per vector.
        seed: Seed of the random baseline.

    Returns:
        Columns ``kind`` (``"image"`` or ``"random"``), ``rank``, ``token``, ``token_id``,
        ``cosine``, ``image`` (row of ``embeds``), ``patch``.

    Example:
        >>> table = soft_prompt_table(model, model.embed_images(batch), k=3)  # doctest: +SKIP
        >>> table.groupby("kind")["cosine"].mean()  # doctest: +SKIP
    """
    embeds = embeds.detach().float()
    n, n_tok = embeds.shape[:2]
    rnd = random_soft_prompts(embeds, n=n * n_tok, seed=seed).to(embeds.device)
    # one decoding of both sets (W_E normalised once, one product)
    both = decode_soft_prompts(model, torch.cat([embeds.reshape(-1, embeds.shape[-1]), rnd]), k=k)
    is_random = both["index"] >= n * n_tok
    index = both["index"] - np.where(is_random, n * n_tok, 0)
    both.insert(0, "kind", np.where(is_random, "random", "image"))
    both["image"] = index // n_tok
    both["patch"] = index % n_tok
    return both.drop(columns=["index"])
