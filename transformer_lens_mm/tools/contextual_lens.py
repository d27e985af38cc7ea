"""Contextual lens: what an image token is, layer by layer, by its nearest *contextual* text
representations, next to the logit lens and the embedding lens.

The paper reads soft prompts by their nearest input embeddings (its Table 2) and units by the
unembedding; LatentLens (Krojer et al., ICML 2026; ``latentlens`` on PyPI) reads a hidden state
at layer ``l`` by its nearest neighbours among the hidden states of *text* tokens at the same
layer, each in its own sentence. This module does the three side by side at the image positions
of a multimodal model, per layer:

* ``"contextual"``: cosine nearest neighbours in a :class:`ContextualIndex` built by
  :func:`build_contextual_index` from a reference corpus
  (:func:`~transformer_lens_mm.data.corpora.reference_corpus`: the demo's scene captions, the
  sentences that ship in the ``latentlens`` package, or your own text);
* ``"logit"``: the residual through the final norm and the unembedding (logit lens);
* ``"embedding"``: cosine nearest rows of the input embedding ``W_E``.

Each lens also reads as many random vectors per layer, drawn with the image tokens' mean and
per-dimension spread at that layer (the baseline: how often a lens names ``c`` by chance).
:func:`lens_shares` gives, per layer and lens, the share of image tokens whose top-``k``
tokens name ``c``.

The index follows LatentLens's construction (``latentlens.extract.build_index``): hidden
states after each block (``blocks.{l}.hook_resid_post``, = Hugging Face ``hidden_states[l+1]``),
the first two positions of each text skipped, each distinct prefix stored once, at most
``max_contexts_per_token`` contexts per token string, vectors L2-normalised; searched per layer
(``latentlens``'s ``search(..., layers=[l + 1])``; it also offers a cross-layer merge, which
answers a different question). Checked against ``latentlens`` itself on a tiny model
(``tests/unit/tools/test_contextual_lens.py``).

Example:
    >>> index = build_contextual_index(model, reference_corpus("scenes", n=200))  # doctest: +SKIP
    >>> table = contextual_lens(model, batch, index, target_ids=c_ids)  # doctest: +SKIP
    >>> lens_shares(table).pivot(index="layer", columns="lens", values="share")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, CorpusError, LayerRangeError, TableError
from transformer_lens_mm.tools.decoding import vocab_mask
from transformer_lens_mm.tools.words import same_word

__all__ = [
    "LENSES",
    "ContextualIndex",
    "build_contextual_index",
    "contextual_lens",
    "lens_shares",
]

LENSES = ("contextual", "logit", "embedding")


@dataclass
class ContextualIndex:
    """Contextual text representations per layer: L2-normalised ``vectors[layer]`` ``[n, d]``,
    and per row the token id, the text it came from and its position there."""

    vectors: dict[int, Float[Tensor, "n d_model"]]
    token_ids: Int[Tensor, " n"]
    text_index: Int[Tensor, " n"]
    positions: Int[Tensor, " n"]
    texts: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def search(
        self, query: Float[Tensor, "q d_model"], layer: int, k: int = 5
    ) -> tuple[Float[Tensor, "q k"], Int[Tensor, "q k"]]:
        """Cosine similarities and row indices of each query's ``k`` nearest rows at ``layer``.

        Raises:
            CorpusError: the index was not built at ``layer``, or has fewer than ``k`` rows.
        """
        self.check(layer, k)
        vecs = self.vectors[layer]
        sims = F.normalize(query.float(), dim=-1).to(vecs.device) @ vecs.T
        return sims.topk(k, dim=-1)

    def check(self, layer: int, k: int) -> None:
        """Refuse a search the index cannot answer.

        Raises:
            CorpusError: the index was not built at ``layer``, or has fewer than ``k`` rows.
        """
        if layer not in self.vectors:
            raise CorpusError(
                f"the index was built at layers {self.layers}, not {layer}: rebuild it with "
                f"layers=[..., {layer}]"
            )
        if k > len(self):
            raise CorpusError(
                f"{k} neighbours asked of an index of {len(self)} contextual vectors: use a "
                "larger reference corpus (reference_corpus(n=...)) or a smaller k"
            )

    def save(self, folder: str | Path) -> None:
        """Write ``index.safetensors`` and ``index.json`` (the texts) to ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer_{layer}": v.contiguous() for layer, v in self.vectors.items()}
        tensors.update(
            token_ids=self.token_ids, text_index=self.text_index, positions=self.positions
        )
        atomic_write(folder / "index.safetensors", lambda tmp: save_file(tensors, tmp))
        text = json.dumps({"texts": self.texts})
        atomic_write(folder / "index.json", lambda tmp: Path(tmp).write_text(text, "utf-8"))

    @classmethod
    def load(cls, folder: str | Path) -> ContextualIndex:
        """Read an index :meth:`save` wrote."""
        from safetensors.torch import load_file

        folder = Path(folder)
        tensors = load_file(str(folder / "index.safetensors"))
        texts = json.loads((folder / "index.json").read_text(encoding="utf-8"))["texts"]
        vectors = {int(k[6:]): v for k, v in tensors.items() if k.startswith("layer_")}
        return cls(
            vectors, tensors["token_ids"], tensors["text_index"], tensors["positions"], texts
        )


def _check_layers(model: MultimodalModel, layers: Sequence[int] | None) -> list[int]:
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n_layers))
    out = sorted({int(layer) for layer in layers})
    if not out or out[0] < 0 or out[-1] >= n_layers:
        raise LayerRangeError(f"layers must lie in 0..{n_layers - 1}, got {list(layers)}")
    return out


def _resid_hooks(layers: Sequence[int], store: dict[int, Tensor]) -> list:
    def capture(layer: int):
        def hook(resid: Tensor, hook: object) -> None:
            store[layer] = resid.detach()

        return hook

    return [(hook_names.resid_post(layer), capture(layer)) for layer in layers]


@torch.no_grad()
def build_contextual_index(
    model: MultimodalModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    max_contexts_per_token: int = 50,
    skip_first: int = 2,
    batch_size: int = 16,
    max_tokens: int = 128,
    verbose: bool = False,
) -> ContextualIndex:
    """Run the language model on ``texts`` and keep each token's hidden state per layer.

    Args:
        model: A multimodal model (its language model reads the texts alone).
        texts: The reference corpus
            (:func:`~transformer_lens_mm.data.corpora.reference_corpus`).
        layers: Blocks whose output (``hook_resid_post``) is kept (default: all).
        max_contexts_per_token: At most this many contexts per token string (first come).
        skip_first: Positions skipped at the start of each text (BOS-like, atypical norms).
        batch_size: Texts per forward.
        max_tokens: Texts are cut to this many tokens.
        verbose: Show a progress bar.

    Raises:
        CorpusError: no contextual vector was kept (texts too short for ``skip_first``).
        LayerRangeError: a layer outside the model.

    Example:
        >>> index = build_contextual_index(model, ["a dog on grass"], layers=[3])  # doctest: +SKIP
    """
    layers = _check_layers(model, layers)
    tok = model.tokenizer
    ids = [tok(t)["input_ids"][:max_tokens] for t in texts]
    # which (text, position) each vector is, in corpus order: the first ``max_contexts_per_token``
    # contexts of each token string, each distinct prefix once (token ids alone decide)
    kept: list[list[int]] = [[] for _ in texts]
    token_ids: list[int] = []
    text_index: list[int] = []
    positions: list[int] = []
    seen: set[tuple[int, ...]] = set()
    counts: dict[str, int] = {}
    words: dict[int, str] = {}
    for t, row in enumerate(ids):
        for pos in range(skip_first, len(row)):
            prefix = tuple(row[: pos + 1])
            if prefix in seen:
                continue
            if row[pos] not in words:
                words[row[pos]] = tok.decode([row[pos]])
            word = words[row[pos]]
            if counts.get(word, 0) >= max_contexts_per_token:
                continue
            seen.add(prefix)
            counts[word] = counts.get(word, 0) + 1
            kept[t].append(len(token_ids))
            token_ids.append(row[pos])
            text_index.append(t)
            positions.append(pos)
    if not token_ids:
        raise CorpusError(
            f"no contextual vector kept: every text has at most skip_first={skip_first} tokens; "
            "use longer texts or a smaller skip_first"
        )
    # the forwards take the texts by length (little padding), each vector goes to its slot
    d_model = int(model.cfg.d_model)
    rows = {layer: torch.zeros(len(token_ids), d_model) for layer in layers}
    todo = sorted((t for t in range(len(texts)) if kept[t]), key=lambda t: len(ids[t]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    starts = range(0, len(todo), batch_size)
    for start in tqdm(starts, disable=not verbose, desc="contextual index"):
        chunk = todo[start : start + batch_size]
        tokens = torch.full((len(chunk), max(len(ids[t]) for t in chunk)), pad, dtype=torch.long)
        for i, t in enumerate(chunk):
            tokens[i, : len(ids[t])] = torch.tensor(ids[t])
        store: dict[int, Tensor] = {}
        # right padding needs no mask: a causal model's real positions never see the padding
        with model.hooks(fwd_hooks=_resid_hooks(layers, store)):
            model.lm_blocks(tokens.to(model.lm_device))
        r = torch.tensor([i for i, t in enumerate(chunk) for _ in kept[t]])
        p = torch.tensor([positions[slot] for t in chunk for slot in kept[t]])
        slots = torch.tensor([slot for t in chunk for slot in kept[t]])
        for layer in layers:
            rows[layer][slots] = store[layer][r.to(store[layer].device), p].float().cpu()
    vectors = {layer: F.normalize(v, dim=-1) for layer, v in rows.items()}
    return ContextualIndex(
        vectors,
        torch.tensor(token_ids),
        torch.tensor(text_index),
        torch.tensor(positions),
        list(texts),
    )


def _random_like(x: Tensor, gen: torch.Generator) -> Tensor:
    """Gaussian vectors with ``x``'s per-dimension mean and standard deviation."""
    mean, std = x.mean(0), x.std(0) if len(x) > 1 else x.abs().mean(0)
    noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return mean + std * noise


@torch.no_grad()
def contextual_lens(
    model: MultimodalModel,
    batch: MultimodalInput,
    index: ContextualIndex,
    *,
    target_ids: Int[Tensor, " batch"] | Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    k: int = 5,
    lenses: Sequence[str] = LENSES,
    random_baseline: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Each image token of ``batch`` read by each lens at each layer.

    Args:
        model: A multimodal model.
        batch: The input.
        index: A :class:`ContextualIndex` of the same model (at least at ``layers``).
        target_ids: ``c`` per item; ``names_c`` says whether a token's top-``k`` names it.
        layers: Blocks to read (default: the index's layers).
        k: Tokens per lens (neighbours, top logits, nearest embeddings).
        lenses: Which of :data:`LENSES`.
        random_baseline: Also read as many random vectors with the image tokens' mean and
            spread per layer (``kind="random"``).
        seed: Seed of the random vectors.

    Returns:
        One row per (item, image token ``index``, layer, lens, kind): ``tokens`` (the top-``k``
        decoded, best first), ``token_ids``, ``top_score`` (cosine, or logit for the logit
        lens), ``names_c`` (when ``target_ids`` is given).

    Raises:
        CorpusError: the index lacks a layer, or has fewer than ``k`` vectors.
        LayerRangeError: a layer outside the model.

    Example:
        >>> table = contextual_lens(model, batch, index, target_ids=c_ids, k=5)  # doctest: +SKIP
    """
    layers = _check_layers(model, layers if layers is not None else index.layers)
    unknown = [name for name in lenses if name not in LENSES]
    if unknown:
        raise ArgumentError(f"unknown lens {unknown}: use some of {LENSES}")
    if "contextual" in lenses:  # refuse before the forward: a layer missing, too few vectors
        for layer in layers:
            index.check(layer, k)
    batch = batch.to(model.lm_device)
    n = len(batch)
    tids = None
    if target_ids is not None:
        tids = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1).tolist()
        if len(tids) != n:
            raise ArgumentError(f"need one target id per item ({n}), got {len(tids)}")
    store: dict[int, Tensor] = {}
    with model.hooks(fwd_hooks=_resid_hooks(layers, store)):
        model(batch)
    img = batch.image_positions
    rows_ix = torch.arange(n, device=img.device)[:, None]
    keep = vocab_mask(model, special_tokens=True).to(model.lm_device)
    w_e = F.normalize(model.W_E.detach().float(), dim=-1)
    tok = model.tokenizer
    words: dict[int, str] = {}
    hits: dict[tuple[int, int], bool] = {}

    def word_of(t: int) -> str:
        if t not in words:
            words[t] = tok.decode([t])
        return words[t]

    def names(t: int, c: int) -> bool:
        """Whether token ``t`` is ``c`` (its id, or the same word)."""
        if (t, c) not in hits:
            hits[(t, c)] = t == c or same_word(word_of(t), word_of(c))
        return hits[(t, c)]

    gen = torch.Generator().manual_seed(seed)
    out: list[pd.DataFrame] = []
    n_img = img.shape[1]
    item_of = np.repeat(np.arange(n), n_img)
    index_of = np.tile(np.arange(n_img), n)
    targets = sorted(set(tids)) if tids is not None else []
    target_row = np.array([targets.index(t) for t in tids])[item_of] if tids is not None else None
    for layer in layers:
        hidden = store[layer][rows_ix, img].float()  # [batch, n_img, d]
        flat = hidden.reshape(n * n_img, -1)
        kinds = [("image", flat)]
        if random_baseline:
            kinds.append(("random", _random_like(flat, gen)))
        for kind, vecs in kinds:
            for lens in lenses:
                if lens == "contextual":
                    score, rows = index.search(vecs, layer, k)
                    ids = index.token_ids[rows.cpu()]
                elif lens == "logit":
                    logits = model.unembed(model.ln_final(vecs[None].to(model.W_E.dtype)))[0]
                    logits = logits.float().masked_fill(~keep, float("-inf"))
                    score, ids = logits.topk(k, dim=-1)
                else:
                    sims = F.normalize(vecs, dim=-1) @ w_e.T
                    score, ids = sims.masked_fill(~keep, float("-inf")).topk(k, dim=-1)
                id_array = ids.cpu().numpy()
                uniq, inverse = np.unique(id_array, return_inverse=True)
                inverse = inverse.reshape(id_array.shape)
                spelled = np.array([word_of(int(t)) for t in uniq], dtype=object)
                block = pd.DataFrame(
                    {
                        "item": item_of, "index": index_of, "layer": layer, "lens": lens,
                        "kind": kind, "tokens": spelled[inverse].tolist(),
                        "token_ids": id_array.tolist(),
                        "top_score": score[:, 0].double().cpu().numpy(),
                    }
                )  # fmt: skip
                if target_row is not None:
                    named = np.array([[names(int(t), c) for t in uniq] for c in targets])
                    block["names_c"] = named[target_row[:, None], inverse].any(1)
                out.append(block)
    return pd.concat(out, ignore_index=True)


def lens_shares(table: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, lens, kind): the share of image tokens (or random vectors) whose top-``k``
    names ``c``, and how many were read.

    Example:
        >>> lens_shares(table).query("kind == 'image'")  # doctest: +SKIP
    """
    if "names_c" not in table:
        raise TableError("the table has no names_c: run contextual_lens(..., target_ids=...)")
    out = table.groupby(["layer", "lens", "kind"])["names_c"].agg(["mean", "size"]).reset_index()
    return out.rename(columns={"mean": "share", "size": "n_tokens"})
