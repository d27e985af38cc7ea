"""Reading units and soft prompts as words.

* :func:`decode_units`: a unit's write through the unembedding, top-k tokens (the paper's unit
  decoding ``softmax(W_U W_out[k])``; on gated MLPs the direction the unit actually writes at
  the entry, ``sign(Z) * W_out[k]``, through the norms it passes:
  :mod:`transformer_lens_mm.tools.readout`); :func:`decode_unit_table` adds them to a table of
  units (e.g. ``Attribution.top_k``), one decoding per sign a unit writes with.
* :func:`unit_token_ranks`: where a given token (e.g. the target ``c``) ranks in a unit's
  decoding, for models whose vocabulary is too large for ``c`` to reach any unit's top 10.
* :func:`decode_soft_prompts`: each image token's nearest vocabulary embeddings by cosine
  similarity with ``W_E`` (the paper's soft-prompt decoding), with
  :func:`random_soft_prompts` as the baseline of random vectors of the same norms.

Example:
    >>> decode_units(model, [(12, 9058)], k=3)  # doctest: +SKIP
    [[(' water', 0.031), (' fish', 0.027), (' swimming', 0.019)]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer_lens_mm.core.contract import LanguageModel
from transformer_lens_mm.core.hook_names import resolve_layer
from transformer_lens_mm.core.paper import DECODED_TOKENS, RANDOM_SOFT_PROMPTS, SOFT_PROMPT_TOKENS
from transformer_lens_mm.errors import ArgumentError, ReadoutError, UnitIndexError
from transformer_lens_mm.tools.readout import (
    Readout,
    SignRule,
    entry_signs,
    final_norm_scale,
    readout_for,
    unit_output_weights,
    unit_write_vectors,
)

__all__ = [
    "decode_soft_prompts",
    "decode_unit_table",
    "decode_units",
    "embedding_scale",
    "final_norm_weight",
    "random_soft_prompts",
    "soft_prompt_table",
    "unit_logits",
    "unit_output_weights",
    "unit_token_ranks",
    "vocab_mask",
]


def final_norm_weight(model: LanguageModel) -> Tensor | None:
    """The final norm's *effective* per-channel scale (``1 + w`` for Hugging Face's Gemma
    RMSNorm), or ``None``: :func:`~transformer_lens_mm.tools.readout.final_norm_scale`."""
    return final_norm_scale(model)


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


def _by_layer(model: LanguageModel, units: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """Entry indices per (resolved, checked) layer."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    by_layer: dict[int, list[int]] = {}
    for i, (layer, unit) in enumerate(units):
        if not 0 <= int(unit) < d_mlp:
            raise UnitIndexError(f"unit {unit} is out of range: layers have d_mlp={d_mlp} units")
        by_layer.setdefault(resolve_layer(int(layer), n_layers), []).append(i)
    return by_layer


def _signs_of(signs: Any, n: int) -> list[float] | None:
    if signs is None:
        return None
    values = [float(x) for x in (signs.tolist() if isinstance(signs, Tensor) else signs)]
    if len(values) != n:
        raise ReadoutError(f"got {len(values)} signs for {n} units: pass one per unit")
    return values


#: Entries unembedded at once (a chunk of logits is ``chunk x d_vocab`` fp32: 256 MB for
#: Gemma 3's 262k tokens).
_CHUNK = 256


def _unit_logit_chunks(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    signs: Any,
    readout: Readout,
    keep: Tensor,
) -> Iterator[tuple[list[int], Tensor]]:
    """``(entry indices, their logits)`` in chunks of one layer (undecodable tokens ``-inf``)."""
    values = _signs_of(signs, len(units))
    w_u = model.W_U.detach().float()
    drop = ~keep.to(w_u.device)
    for layer, idxs in _by_layer(model, units).items():
        for start in range(0, len(idxs), _CHUNK):
            part = idxs[start : start + _CHUNK]
            vecs = unit_write_vectors(
                model,
                layer,
                [int(units[i][1]) for i in part],
                None if values is None else [values[i] for i in part],
                readout=readout,
            )
            logits = (vecs.to(w_u.device) @ w_u).masked_fill_(drop, float("-inf"))
            yield part, logits


@torch.no_grad()
def unit_logits(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    *,
    signs: Any = None,
    readout: Readout | None = None,
    mask_special: bool = True,
) -> Float[Tensor, "n_units d_vocab"]:
    """Each entry's write through the unembedding (:func:`~transformer_lens_mm.tools.readout.
    unit_write_vectors` ``@ W_U``), fp32, with undecodable tokens at ``-inf``.

    Example:
        >>> unit_logits(model, [(3, 7)], signs=[-0.4]).shape  # doctest: +SKIP
        torch.Size([1, 49152])
    """
    readout = readout or readout_for(model)
    keep = vocab_mask(model, special_tokens=mask_special)
    out = torch.empty(len(units), int(keep.shape[0]))
    for part, logits in _unit_logit_chunks(model, units, signs, readout, keep):
        out[part] = logits.cpu()
    return out


@torch.no_grad()
def decode_units(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    *,
    signs: Any = None,
    k: int = DECODED_TOKENS,
    sign: SignRule = "auto",
    final_norm: bool | None = None,
    readout: Readout | None = None,
    mask_special: bool = True,
) -> list[list[tuple[str, float]]]:
    """Top-``k`` tokens of each unit's write through the unembedding (the paper's decoding).

    On an ungated MLP (GPT-J, GPT-2) this is the paper's ``softmax(W_U W_out[k])``. On a gated
    MLP a unit has no sign of its own: pass ``signs`` (its activation ``Z`` at the entry, or
    ``+1``/``-1``) and the direction it actually writes, ``sign(Z) * W_out[k]``, is decoded,
    through the norms it passes (:mod:`transformer_lens_mm.tools.readout`).

    Args:
        model: A multimodal model (either TL API).
        units: ``(layer, unit)`` pairs.
        signs: Per pair, ``Z`` at the entry (only its sign is used). Required on gated MLPs.
        k: Tokens per unit.
        sign: ``"auto"``, ``"activation"`` or ``"weights"`` (:data:`~transformer_lens_mm.tools.
            readout.SignRule`).
        final_norm: Apply the final norm's effective scale (``None``: on gated MLPs only).
        readout: A resolved readout (:func:`~transformer_lens_mm.tools.readout.readout_for`),
            instead of ``sign`` and ``final_norm``.
        mask_special: Never decode special tokens (and always skip unused vocabulary rows).

    Returns:
        For each unit, ``k`` pairs ``(token string, probability)``.

    Raises:
        ReadoutError: a gated MLP without ``signs``, a model without ``W_out``, an unknown norm.
        UnitIndexError: a layer or unit outside the model.
    """
    keep = vocab_mask(model, special_tokens=mask_special)
    if k < 1 or k > int(keep.sum()):
        raise ArgumentError(f"k={k} must be between 1 and the {int(keep.sum())} decodable tokens")
    readout = readout or readout_for(model, sign=sign, final_norm=final_norm)
    results: dict[int, list[tuple[str, float]]] = {}
    text: dict[int, str] = {}  # token id -> its string, decoded once
    for part, logits in _unit_logit_chunks(model, units, signs, readout, keep):
        probs, ids = (t.cpu() for t in logits.softmax(-1).topk(k, dim=-1))
        for i, row_ids, row_probs in zip(part, ids.tolist(), probs.tolist()):
            results[i] = [
                (text[t] if t in text else text.setdefault(t, model.tokenizer.decode([t])), p)
                for t, p in zip(row_ids, row_probs)
            ]
    return [results[i] for i in range(len(units))]


def decode_unit_table(
    model: LanguageModel,
    table: pd.DataFrame,
    *,
    k: int = DECODED_TOKENS,
    cache: dict[tuple, list[str]] | None = None,
    readout: Readout | None = None,
) -> pd.DataFrame:
    """``table`` with ``sign`` and ``tokens`` columns: each row's write decoded
    (:func:`decode_units`).

    Under a signed readout (gated MLPs) each row's ``sign`` is that of its ``activation``, and a
    unit that writes with both signs across rows gets a decoding per sign; otherwise ``sign`` is
    ``+1``. Each distinct ``(layer, unit, sign)`` is decoded once, however many rows it has;
    with ``cache`` (a dict kept across calls, e.g. the batches of one run), once across calls.

    Args:
        model: The model whose weights decode the units (the cache assumes they stay the same).
        table: Rows with ``layer``, ``unit`` and, on gated MLPs, ``activation`` (e.g.
            ``Attribution.top_k``).
        k: Tokens per unit (the paper: 10).
        cache: ``(layer, unit, sign, k, readout) -> tokens``, filled as units are decoded.
        readout: The readout (default :func:`~transformer_lens_mm.tools.readout.readout_for`).

    Returns:
        A copy of ``table`` with ``sign`` (+1/-1) and ``tokens`` (the ``k`` decoded token
        strings, best first).
    """
    readout = readout or readout_for(model)
    if readout.signed and len(table) and "activation" not in table:
        raise ReadoutError(
            "this model's MLP is gated: each row's readout needs the sign of its activation, and "
            "the table has no 'activation' column (attribute(..., keep_activations=True))"
        )
    cache = {} if cache is None else cache
    signs = (
        entry_signs(readout, table["activation"].to_numpy())
        if len(table) and "activation" in table
        else torch.ones(len(table), dtype=torch.long)
    )
    keys = list(zip(table["layer"].astype(int), table["unit"].astype(int), signs.tolist()))
    todo = sorted({key for key in keys if (*key, k, readout) not in cache})
    if todo:
        decoded = decode_units(
            model,
            [(la, u) for la, u, _ in todo],
            signs=[s for *_, s in todo] if readout.signed else None,
            k=k,
            readout=readout,
        )
        for key, toks in zip(todo, decoded):
            cache[(*key, k, readout)] = [t for t, _ in toks]
    out = table.copy()
    out["sign"] = np.asarray(signs.tolist(), dtype=np.int8)
    out["tokens"] = [cache[(*key, k, readout)] for key in keys]
    return out


@torch.no_grad()
def unit_token_ranks(
    model: LanguageModel,
    units: Sequence[tuple[int, int]],
    token_ids: Sequence[int],
    *,
    signs: Any = None,
    sign: SignRule = "auto",
    final_norm: bool | None = None,
    readout: Readout | None = None,
    mask_special: bool = True,
) -> Int[Tensor, " n_units"]:
    """Rank (0 = first) of ``token_ids[i]`` in the decoding of ``units[i]``'s write (with its
    sign ``signs[i]`` on gated MLPs; ``sign``, ``final_norm`` or ``readout`` as in
    :func:`decode_units`).

    Only decodable tokens are ranked (special tokens and unused rows are skipped, as in
    :func:`decode_units`), so rank 0 means ``decode_units(...)[i][0]`` is that token.

    Example:
        >>> water = model.to_single_token(" water")  # doctest: +SKIP
        >>> unit_token_ranks(model, [(12, 9058)], [water], signs=[2.1])  # doctest: +SKIP
        tensor([0])
    """
    if len(units) != len(token_ids):
        raise ArgumentError(
            f"got {len(units)} units and {len(token_ids)} tokens: pass one per unit"
        )
    keep = vocab_mask(model, special_tokens=mask_special)
    d_vocab = int(keep.shape[0])
    tids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(tids) and (int(tids.min()) < 0 or int(tids.max()) >= d_vocab):
        raise ArgumentError(f"token ids must lie in 0..{d_vocab - 1}")
    if len(tids) and not bool(keep[tids].all()):
        raise ArgumentError("a token id is a special or unused token that decodings never rank")
    if not len(units):
        return torch.zeros(0, dtype=torch.long)
    readout = readout or readout_for(model, sign=sign, final_norm=final_norm)
    ranks = torch.zeros(len(units), dtype=torch.long)
    for part, logits in _unit_logit_chunks(model, units, signs, readout, keep):
        own = logits.gather(1, tids[part, None].to(logits.device))
        ranks[part] = (logits > own).sum(1).cpu()
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
