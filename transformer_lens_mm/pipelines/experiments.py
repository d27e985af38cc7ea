"""Experiments over the tables of a run (``tlmm analyze``, ``tlmm demo``, a search).

Each function reads tables in the search's schema (``item``, ``index``, ...; see
:mod:`transformer_lens_mm.pipelines.search`), so it serves a dataset run and the demo alike:

* :func:`layer_distribution`: where the top units sit, per layer.
* :func:`spatial_iou_by_category`: each image's top units against the mask of the object its
  caption names (COCO category = the caption's noun), vs random units of the same layers.
* :func:`category_selectivity`: per class, its most frequent top units and their mean activation
  (max over image positions) on held-out images of every class.
* :func:`decoding_target_ranks`: where ``c`` ranks in the decodings of each image's top units
  and of as many random units of the same layers.
* :func:`~transformer_lens_mm.tools.ablation.ablation_curve` (of a run's ``ablation`` table,
  ``by="item"``): p(c) kept per k, top vs random units, with confidence intervals.
* :func:`ablation_caption_summary`: captions regenerated under top-k vs random-k ablation.
* :func:`soft_prompt_summary`: soft prompts' nearest tokens vs norm-matched random vectors.
* :func:`controls_summary`: the controls that tell concept-specific units from generic ones
  (generic units, same- vs cross-concept ablation, IoU per concept, category selectivity) as
  numbers (:mod:`transformer_lens_mm.tools.specificity`).
* :func:`unit_decoding_texts`, :func:`soft_prompt_texts`, :func:`score_texts`: decodings vs
  captions by BERTScore and CLIPScore (the paper's Tables 1 and 2; scorers from
  :mod:`transformer_lens_mm.tools.metrics`), against randomly re-paired captions.

The figures are in :mod:`transformer_lens_mm.report.plotting`; a run's page is
:func:`~transformer_lens_mm.pipelines.analyze.report.analysis_report`.

Example:
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
    >>> iou = spatial_iou_by_category(model, data, items, units)  # doctest: +SKIP
    >>> iou.groupby(["category", "kind"]).iou.mean().unstack()  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transformer_lens_mm.core.contract import LanguageModel, MultimodalModel
from transformer_lens_mm.core.paper import CATEGORY_UNITS, PAPER_RESULTS, REGION_QUANTILE
from transformer_lens_mm.data.datasets import Item
from transformer_lens_mm.errors import TableError
from transformer_lens_mm.tools.ablation import ablation_curve
from transformer_lens_mm.tools.decoding import unit_token_ranks, vocab_mask
from transformer_lens_mm.tools.readout import readout_for
from transformer_lens_mm.tools.spatial import (
    image_mlp_activations,
    spatial_ceiling,
    spatial_selectivity,
)
from transformer_lens_mm.tools.specificity import selectivity_by_class, specificity_ratio
from transformer_lens_mm.tools.stats import ci_half_width
from transformer_lens_mm.tools.units import random_units_like, units_of
from transformer_lens_mm.tools.words import is_dictionary_word, same_word

__all__ = [
    "ablation_caption_summary",
    "add_spatial_ceiling",
    "category_selectivity",
    "controls_summary",
    "decoding_target_ranks",
    "layer_distribution",
    "paper_comparison_table",
    "score_texts",
    "selectivity_by_class",
    "soft_prompt_ks",
    "soft_prompt_scores",
    "soft_prompt_summary",
    "soft_prompt_texts",
    "spatial_iou_by_category",
    "unit_decoding_scores",
    "unit_decoding_texts",
]


def layer_distribution(units: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Where the top units sit, per layer (all images pooled).

    Counts both ways: ``count``/``share`` count top-k *entries* (a unit in 40 images' top-k
    counts 40 times), ``unique_units`` counts distinct units, as the paper's Figure S.4 does
    (S.6: "unique multimodal neurons per layer"); ``unique_interpretable`` the distinct units
    that pass the interpretability filter (when the table has ``interpretable``).

    Example:
        >>> t = pd.DataFrame({"layer": [0, 0, 2], "unit": [5, 5, 1],
        ...                   "interpretable": [True, True, False]})
        >>> cols = ["count", "unique_units", "unique_interpretable"]
        >>> layer_distribution(t, 3)[cols].values.tolist()
        [[2, 1, 1], [0, 0, 0], [1, 1, 0]]
    """
    if "layer" not in units:
        raise TableError("units needs a 'layer' column (a run's units.parquet)")
    counts = units["layer"].value_counts().sort_index()
    layers = range(n_layers) if n_layers is not None else counts.index
    table = pd.DataFrame({"layer": list(layers)})
    table["count"] = [int(counts.get(layer, 0)) for layer in table["layer"]]
    table["share"] = table["count"] / max(int(table["count"].sum()), 1)
    if "unit" in units:
        distinct = units.drop_duplicates(["layer", "unit"])["layer"].value_counts()
        table["unique_units"] = [int(distinct.get(layer, 0)) for layer in table["layer"]]
        if "interpretable" in units:
            rows = units[units["interpretable"].astype(bool)]
            good = rows.drop_duplicates(["layer", "unit"])["layer"].value_counts()
            table["unique_interpretable"] = [int(good.get(layer, 0)) for layer in table["layer"]]
    return table


def decoding_target_ranks(
    model: LanguageModel,
    units: pd.DataFrame,
    targets: Mapping[Hashable, int],
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Where each image's target ``c`` ranks in the decodings of its top units, and of as many
    random units of the same layers (the control).

    A model whose vocabulary is far larger than its top-10 decodings can show a unit that
    favours ``c`` (a high percentile) without ``c`` reaching its top 10. Each top entry is read
    with its ``sign`` (the table's; :mod:`~transformer_lens_mm.tools.readout`). A random unit
    has no entry: on a gated MLP, where its sign is not defined, both its orientations are
    ranked (two rows, ``sign`` +1 and -1; their pooled distribution is the control), on an
    ungated one its ``+W_out`` as in the paper.

    Args:
        model: The model whose weights decode the units.
        units: A units table (``item``, ``rank``, ``layer``, ``unit``, and ``sign`` from the
            search; without it every entry reads ``+W_out``, which a gated MLP refuses).
        targets: ``item -> c``'s token id, for the items to rank (in this order).
        seed: Seed of the random units (item ``i`` in ``targets``'s order draws ``seed + i``).

    Returns:
        One row per (item, kind, unit, sign): ``kind`` (``top``/``random``), ``layer``, ``unit``,
        ``sign``, ``target_rank`` (0: c is the first decoded token) and ``target_percentile``
        (100: c first, over the decodable vocabulary).
    """
    readout = readout_for(model)
    todo: list[tuple[Hashable, str, int, int, float]] = []
    tids: list[int] = []
    for i, (item, tid) in enumerate(targets.items()):
        top = units_of(units, item, signed=True)
        pairs = list(dict.fromkeys((la, u) for la, u, _ in top))
        rnd = random_units_like(model, pairs, seed=seed + i)
        orientations = (1, -1) if readout.signed else (1,)
        mine = [(item, "top", la, u, sg) for la, u, sg in top]
        mine += [(item, "random", la, u, sg) for la, u in rnd for sg in orientations]
        todo += mine
        tids += [tid] * len(mine)
    # every item's units in one call: each layer's entries are unembedded together
    ranks = unit_token_ranks(
        model,
        [(la, u) for _, _, la, u, _ in todo],
        tids,
        signs=[sg for *_, sg in todo],
        readout=readout,
    )
    rows = [(*entry, int(r)) for entry, r in zip(todo, ranks.tolist())]
    table = pd.DataFrame(rows, columns=["item", "kind", "layer", "unit", "sign", "target_rank"])
    n_vocab = int(vocab_mask(model).sum())
    table["target_percentile"] = 100.0 * (1 - table["target_rank"] / n_vocab)
    return table


def _matching_category(noun: str | None, categories: dict[str, np.ndarray]) -> str | None:
    if not noun:
        return None
    for name in categories:
        if same_word(noun, name) or same_word(noun, name.split()[-1]):
            return name
    return None


def spatial_iou_by_category(
    model: MultimodalModel,
    data: Sequence[Item],
    items: pd.DataFrame,
    units: pd.DataFrame,
    *,
    q: float = REGION_QUANTILE,
    n_random: int = 1,
    batch_size: int = 8,
    verbose: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    """IoU of each image's top units with the mask of the category its caption's noun names
    (the paper's Figure 5, sec. 3.2).

    Images whose noun matches none of their annotated categories are left out (counted in the
    ``attrs["unmatched"]`` of the result). Random units: as many, from the same layers. Each top
    entry's map is its signed activation ``sign * Z`` (the table's ``sign``), each random
    unit's is oriented by its strongest activation on the image
    (:func:`~transformer_lens_mm.tools.spatial.spatial_selectivity`). ``verbose``: a progress
    bar over the batches.

    Returns:
        :func:`~transformer_lens_mm.tools.spatial.spatial_selectivity`'s columns + ``item`` and
        ``category``.
    """
    by_id = {data[i].id: i for i in range(len(data))}
    todo = []
    unmatched = 0
    for row in items[items["failure"].isna()].itertuples():
        item = data[by_id[row.item]]
        masks = item.masks()
        cat = _matching_category(row.noun, masks)
        if cat is None:
            unmatched += 1
            continue
        todo.append((item, cat, masks[cat], units_of(units, row.item, signed=True)))
    tables = []
    starts = range(0, len(todo), batch_size)
    for start in tqdm(starts, disable=not verbose, desc="spatial IoU", leave=False):
        chunk = todo[start : start + batch_size]
        batch = model.prepare_inputs([it.image() for it, _, _, _ in chunk])
        table = spatial_selectivity(
            model,
            batch,
            [top for *_, top in chunk],
            [mask for _, _, mask, _ in chunk],
            q=q,
            n_random=n_random,
            seed=seed + start,
        )
        table["item"] = [chunk[i][0].id for i in table["image"]]
        table["category"] = [chunk[i][1] for i in table["image"]]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    out.attrs["unmatched"] = unmatched
    return out


def add_spatial_ceiling(
    spatial: pd.DataFrame,
    data: Sequence[Item],
    grid_size: tuple[int, int],
    *,
    q: float = REGION_QUANTILE,
) -> pd.DataFrame:
    """``spatial`` (a :func:`spatial_iou_by_category` table) with each image's ceilings: the
    best IoU a patch map on ``grid_size`` reaches on its mask (``map_ceiling``) and the bound of
    a ``1 - q`` region (``size_ceiling``; :func:`~transformer_lens_mm.tools.spatial.
    spatial_ceiling`), to read the measured IoUs against.
    """
    if spatial.empty:
        return spatial
    by_id = {d.id: d for d in data}
    pairs = spatial[["item", "category"]].drop_duplicates().reset_index(drop=True)
    masks = [by_id[i].masks()[c] for i, c in zip(pairs["item"], pairs["category"])]
    ceilings = spatial_ceiling(masks, grid_size, q=q)[["map_ceiling", "size_ceiling"]]
    pairs = pd.concat([pairs, ceilings], axis=1)
    out = spatial.drop(columns=["map_ceiling", "size_ceiling"], errors="ignore")
    merged = out.merge(pairs, on=["item", "category"], how="left")
    merged.attrs = spatial.attrs
    return merged


def category_selectivity(
    model: MultimodalModel,
    units: pd.DataFrame,
    items: pd.DataFrame,
    held_out: Sequence[Item],
    *,
    n_units: int = CATEGORY_UNITS,
    interpretable_only: bool = True,
    category_of: str = "noun",
    batch_size: int = 8,
    verbose: bool = False,
) -> pd.DataFrame:
    """The paper's category selectivity (supplement S.4, Figure S.2): per class, the
    ``n_units`` interpretable units that appear in the top-k of the most images of that class,
    and their mean activation over all patches of held-out images of every class.

    Activations are read as each unit's signed activation ``sign * Z`` with the sign of its
    entries (the table's ``sign``; a unit whose entries in a class have both signs is two
    units, one per sign), so a unit reads the same whichever sign the weights give it
    (:mod:`~transformer_lens_mm.tools.readout`). :func:`selectivity_by_class` turns the result
    into the paper's class x class matrix normalised by each row's maximum.

    Args:
        model: The analysed model.
        units: A run's top-k table (``item``, ``layer``, ``unit``; ``sign``, ``interpretable``).
        items: A run's items table (maps an item to its class via ``category_of``).
        held_out: Images not in the run, with ``categories`` (their first one is the class).
        n_units: Units per class (the paper: 20), the most frequent in that class's top-k lists
            (ties: larger summed score first).
        interpretable_only: Only units that pass the interpretability filter (the paper).
        category_of: Column of ``items`` naming the class (``noun`` or ``target``).
        batch_size: Images per forward.
        verbose: A progress bar over the held-out images' batches.

    Returns:
        One row per (unit class, unit, sign, image class): ``n_train_images`` (images of its
        class whose top-k it is in), ``mean_activation`` (mean of ``sign * Z`` over the patches
        and held-out images of ``image_class``), ``n_images``; a unit is selective when its own
        class's row is the largest.
    """
    columns = ["unit_class", "layer", "unit", "sign", "n_train_images", "image_class"]
    columns += ["mean_activation", "n_images"]
    classes = items.set_index("item")[category_of].dropna()
    tagged = units[units["item"].isin(classes.index)].copy()
    if interpretable_only and "interpretable" in tagged:
        tagged = tagged[tagged["interpretable"].astype(bool)]
    if "sign" not in tagged:
        tagged["sign"] = 1
    tagged["class"] = tagged["item"].map(classes)
    chosen: dict[str, list[tuple[int, int, int, int]]] = {}
    for cls, group in tagged.groupby("class"):
        freq = (
            group.groupby(["layer", "unit", "sign"])
            .agg(n=("item", "nunique"), score=("score", "sum"))
            .reset_index()
            .sort_values(["n", "score", "layer", "unit"], ascending=[False, False, True, True])
            .head(n_units)
        )
        chosen[str(cls)] = [
            (int(r.layer), int(r.unit), int(r.sign), int(r.n)) for r in freq.itertuples()
        ]
    keys = sorted({u[:3] for us in chosen.values() for u in us})
    if not keys:
        return pd.DataFrame(columns=columns)
    layers = sorted({layer for layer, _, _ in keys})
    slot = {layer: s for s, layer in enumerate(layers)}
    idx_l = torch.tensor([slot[layer] for layer, _, _ in keys])
    idx_u = torch.tensor([u for _, u, _ in keys])
    signs = torch.tensor([float(sg) for _, _, sg in keys])
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    usable = [it for it in held_out if it.categories]
    starts = range(0, len(usable), batch_size)
    for start in tqdm(starts, disable=not verbose, desc="category selectivity", leave=False):
        chunk = usable[start : start + batch_size]
        batch = model.prepare_inputs([it.image() for it in chunk])
        acts = image_mlp_activations(model, batch, layers)  # [n, L, n_img, d_mlp]
        # advanced indices split by a slice: the unit dimension comes first
        mean = acts[:, idx_l, :, idx_u].mean(-1).T * signs  # [n, n_keys]
        for j, it in enumerate(chunk):
            cls = it.categories[0]
            sums[cls] = sums.get(cls, torch.zeros(len(keys))) + mean[j]
            counts[cls] = counts.get(cls, 0) + 1
    position = {key: p for p, key in enumerate(keys)}
    rows = [
        (unit_cls, *u, img_cls, float(total[position[u[:3]]] / counts[img_cls]), counts[img_cls])
        for unit_cls, us in chosen.items()
        for u in us
        for img_cls, total in sums.items()
    ]
    return pd.DataFrame(rows, columns=columns)


def ablation_caption_summary(captions: pd.DataFrame, *, bert: Any = None) -> pd.DataFrame:
    """Captions regenerated under ablation (a run's ``ablation_captions`` table), per kind
    (``none``, ``top``, ``random``): the share that still names ``c``, the share unchanged, and
    with ``bert`` the mean BERTScore against the unablated caption (the paper's check).

    Example:
        >>> t = pd.DataFrame({"item": ["a"] * 3, "kind": ["none", "top", "random"], "k": 9,
        ...     "caption": ["a dog.", "a cat.", "a dog."], "keeps_target": [True, False, True]})
        >>> ablation_caption_summary(t)[["kind", "keeps_target", "unchanged"]].values.tolist()
        [['none', 1.0, 1.0], ['random', 1.0, 1.0], ['top', 0.0, 0.0]]
    """
    need = {"item", "kind", "caption", "keeps_target"}
    if not need <= set(captions.columns):
        raise TableError(f"captions needs columns {sorted(need)} (a run's ablation_captions)")
    original = captions[captions["kind"] == "none"].set_index("item")["caption"]
    table = captions.assign(original=captions["item"].map(original))
    table["unchanged"] = table["caption"] == table["original"]
    if bert is not None:
        table["bertscore_vs_original"] = np.asarray(
            bert(table["caption"].tolist(), table["original"].tolist())
        )
    cols = ["keeps_target", "unchanged"] + (["bertscore_vs_original"] if bert else [])
    out = table.groupby("kind")[cols].mean().reset_index()
    out["n_images"] = table.groupby("kind")["item"].nunique().to_numpy()
    return out


def soft_prompt_summary(soft: pd.DataFrame, *, ci: float = 0.95) -> pd.DataFrame:
    """Soft prompts' nearest tokens vs those of norm-matched random vectors (a run's
    ``soft_prompts`` table).

    Returns:
        One row per kind (``image``, ``random``): mean top-1 cosine (with ``ci`` half-width over
        images), share of images whose target ``c`` is among some vector's nearest tokens, and
        share of nearest tokens that are dictionary words.

    Example:
        >>> t = pd.DataFrame({"item": ["a", "a", "b", "b"], "kind": ["image", "random"] * 2,
        ...     "rank": 0, "cosine": [0.5, 0.1, 0.3, 0.1], "token": [" dog", "xq", " cat", "zz"],
        ...     "is_target": [True, False, False, False]})
        >>> soft_prompt_summary(t)["images_with_target_nearby"].tolist()
        [0.5, 0.0]
    """
    need = {"item", "kind", "rank", "cosine", "token", "is_target"}
    if not need <= set(soft.columns):
        raise TableError(f"soft needs columns {sorted(need)} (a run's soft_prompts table)")
    words = {t: is_dictionary_word(t) for t in soft["token"].unique()}
    rows = []
    for kind, group in soft.groupby("kind"):
        top1 = group[group["rank"] == 0].groupby("item")["cosine"].mean()
        half = ci_half_width(float(top1.std(ddof=1)), len(top1), ci) if len(top1) > 1 else np.nan
        rows.append(
            {
                "kind": kind,
                "top1_cosine": float(top1.mean()),
                "top1_cosine_ci": half,
                "images_with_target_nearby": float(group.groupby("item")["is_target"].any().mean()),
                "word_share": float(group["token"].map(words).mean()),
                "n_images": int(group["item"].nunique()),
            }
        )
    return pd.DataFrame(rows)


def _text_of(tokens: Sequence[str] | np.ndarray) -> str:
    """A unit's decoded tokens as one text (a list, or the array a parquet round trip gives)."""
    return " ".join(str(t).strip() for t in tokens if str(t).strip())


def unit_decoding_texts(units: pd.DataFrame, *, interpretable_only: bool = True) -> pd.Series:
    """Per item, its best unit's decoded tokens as one text (the paper's Table 1 input).

    Args:
        units: A run's units table (``item``, ``rank``, ``tokens``, ``interpretable``).
        interpretable_only: The best unit passing the interpretability filter (items with none
            are left out).

    Example:
        >>> t = pd.DataFrame({"item": ["a", "a"], "rank": [0, 1], "interpretable": [False, True],
        ...                   "tokens": [["xq"], [" dog", " dogs"]]})
        >>> unit_decoding_texts(t).to_dict()
        {'a': 'dog dogs'}
    """
    rows = units[units["interpretable"]] if interpretable_only else units
    best = rows.sort_values(["item", "rank"], kind="stable").drop_duplicates("item")
    return pd.Series(
        [_text_of(t) for t in best["tokens"]], index=best["item"].tolist(), name="text"
    )


def soft_prompt_texts(soft: pd.DataFrame, kind: str = "image", *, rank: int = 0) -> pd.Series:
    """Per item, the ``rank``-th nearest token of each of its soft-prompt vectors (patch order)
    as one text (the paper's Table 2 input); ``kind="random"`` for the random baseline."""
    rows = soft[(soft["kind"] == kind) & (soft["rank"] == rank)]
    if rows.empty:
        raise TableError(f"no soft-prompt rows of kind {kind!r} and rank {rank}")
    rows = rows.sort_values(["item", "patch"], kind="stable")
    texts = rows.groupby("item", sort=False)["token"].agg(lambda t: _text_of(t.tolist()))
    return texts.rename("text")


def _derangement(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    other = np.empty(n, dtype=int)
    other[perm] = np.roll(perm, 1)  # nobody keeps its own partner
    return other


def score_texts(
    texts: pd.Series,
    items: pd.DataFrame,
    *,
    bert: Any = None,
    clip: Any = None,
    data: Sequence[Item] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Score each item's text against its caption (BERTScore) and image (CLIPScore), and against
    another item's caption/image (a random derangement: the baseline).

    Args:
        texts: ``item -> text`` (:func:`unit_decoding_texts`, :func:`soft_prompt_texts`).
        items: A run's items table (``item``, ``caption``).
        bert: ``score(preds, refs) -> Tensor``
            (:func:`~transformer_lens_mm.tools.metrics.bert_scorer`).
        clip: ``score(images, texts) -> Tensor``
            (:func:`~transformer_lens_mm.tools.metrics.clip_scorer`); needs ``data``.
        data: The run's data set.
        seed: Seed of the random pairing.

    Returns:
        One row per item: ``text``, ``caption`` and, per scorer given, ``bertscore`` /
        ``bertscore_random_pair`` and ``clipscore`` / ``clipscore_random_pair``.
    """
    if clip is not None and data is None:
        raise TableError("CLIPScore needs the images: pass data=<the run's data set>")
    captions = items.set_index("item")["caption"]
    table = pd.DataFrame({"item": texts.index, "text": texts.to_numpy()})
    table = table[table["item"].isin(captions.dropna().index)].reset_index(drop=True)
    table["caption"] = table["item"].map(captions)
    n = len(table)
    if n < 2:
        raise TableError(f"need at least 2 items with a text and a caption, got {n}")
    other = _derangement(n, seed)
    if bert is not None:
        table["bertscore"] = np.asarray(bert(table["text"].tolist(), table["caption"].tolist()))
        table["bertscore_random_pair"] = np.asarray(
            bert(table["text"].tolist(), table["caption"].to_numpy()[other].tolist())
        )
    if clip is not None:
        assert data is not None
        by_id = {data[i].id: i for i in range(len(data))}
        images = [data[by_id[i]].image() for i in table["item"]]
        table["clipscore"] = np.asarray(clip(images, table["text"].tolist()))
        table["clipscore_random_pair"] = np.asarray(
            clip(images, table["text"].to_numpy()[other].tolist())
        )
    return table


def _references(item: Item, items: pd.DataFrame | None) -> list[str]:
    refs = [c for c in item.captions if c]
    if not refs and items is not None:
        cap = items.set_index("item")["caption"].get(item.id)
        refs = [cap] if isinstance(cap, str) and cap else []
    return refs


def unit_decoding_scores(
    units: pd.DataFrame,
    data: Sequence[Item],
    *,
    bert: Any = None,
    clip: Any = None,
    interpretable_only: bool = True,
    items: pd.DataFrame | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's Table 1 protocol (sec. 2.2): every top unit's decoding scored against its
    image, and per image the max over its units.

    Each distinct ``(layer, unit, sign)`` of an image's top-k (interpretable only, by default)
    is one text (its decoded tokens joined). Its BERTScore is the mean F1 over the image's
    reference captions (COCO's five human captions; ``Item.captions``), its CLIPScore that of
    the text against the image; each image keeps the max over its units. The baseline
    re-pairs images and decoded units at random (a derangement): the units of another image
    against this image's captions and image, max over those units.

    Args:
        units: A run's units table (``item``, ``layer``, ``unit``, ``tokens``; ``sign``,
            ``interpretable``).
        data: The run's data set (reference captions, images for CLIPScore).
        bert: ``score(preds, refs) -> Tensor`` (:func:`~transformer_lens_mm.tools.metrics.
            bert_scorer`).
        clip: ``score(images, texts) -> Tensor`` (:func:`~transformer_lens_mm.tools.metrics.
            clip_scorer`).
        interpretable_only: Units passing the interpretability filter only (the paper).
        items: A run's items table: its ``caption`` is the reference of items without
            captions of their own.
        seed: Seed of the random pairing.

    Returns:
        One row per image with units and references: ``n_units``, and per scorer given
        ``bertscore`` / ``bertscore_random_pair`` and ``clipscore`` / ``clipscore_random_pair``.
    """
    rows = units[units["interpretable"].astype(bool)] if interpretable_only else units
    if "sign" not in rows:
        rows = rows.assign(sign=1)
    rows = rows.drop_duplicates(["item", "layer", "unit", "sign"])
    by_id = {d.id: d for d in data}
    texts: dict[Hashable, list[str]] = {}
    for item, group in rows.groupby("item", sort=False):
        found = [_text_of(t) for t in group["tokens"]]
        found = [t for t in found if t]
        if item in by_id and found:
            texts[item] = list(dict.fromkeys(found))
    keys = [k for k in texts if bert is None or _references(by_id[k], items)]
    if len(keys) < 2:
        raise TableError(
            f"need at least 2 images with decoded units and references, got {len(keys)}"
        )
    other = _derangement(len(keys), seed)
    table = pd.DataFrame({"item": keys, "n_units": [len(texts[k]) for k in keys]})

    def best_bert(unit_texts: list[str], refs: list[str]) -> float:
        preds = [t for t in unit_texts for _ in refs]
        scores = np.asarray(bert(preds, refs * len(unit_texts)), dtype=float)
        return float(scores.reshape(len(unit_texts), len(refs)).mean(1).max())

    if bert is not None:
        refs = [_references(by_id[k], items) for k in keys]
        table["bertscore"] = [best_bert(texts[k], r) for k, r in zip(keys, refs)]
        table["bertscore_random_pair"] = [
            best_bert(texts[keys[other[j]]], refs[j]) for j in range(len(keys))
        ]
    if clip is not None:
        images = [by_id[k].image() for k in keys]

        def best_clip(unit_texts: list[str], image: Any) -> float:
            return float(np.asarray(clip([image] * len(unit_texts), unit_texts)).max())

        table["clipscore"] = [best_clip(texts[k], im) for k, im in zip(keys, images)]
        table["clipscore_random_pair"] = [
            best_clip(texts[keys[other[j]]], images[j]) for j in range(len(keys))
        ]
    return table


def soft_prompt_scores(
    soft: pd.DataFrame,
    data: Sequence[Item],
    *,
    bert: Any = None,
    clip: Any = None,
    items: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The paper's Table 2 / Figure 3 protocol (sec. 3.1, S.3): each soft-prompt vector's nearest
    tokens (5 in the paper) as one text, scored against its image (CLIPScore) and the image's
    reference captions (BERTScore: mean over them), for the image's vectors and for the random
    vectors the table pairs with it.

    Args:
        soft: A run's ``soft_prompts`` table (``item``, ``kind``, ``patch``, ``rank``,
            ``token``).
        data: The run's data set.
        bert: ``score(preds, refs) -> Tensor``.
        clip: ``score(images, texts) -> Tensor``.
        items: A run's items table (references for items without captions).

    Returns:
        One row per (item, kind, patch): ``text`` and the scores asked for; compare the kinds
        with :func:`soft_prompt_ks`.
    """
    need = {"item", "kind", "patch", "rank", "token"}
    if not need <= set(soft.columns):
        raise TableError(f"soft needs columns {sorted(need)} (a run's soft_prompts table)")
    by_id = {d.id: d for d in data}
    ordered = soft.sort_values(["item", "kind", "patch", "rank"], kind="stable")
    table = (
        ordered.groupby(["item", "kind", "patch"], sort=False)["token"]
        .agg(lambda t: _text_of(t.tolist()))
        .rename("text")
        .reset_index()
    )
    table = table[table["item"].isin(by_id.keys())].reset_index(drop=True)
    if bert is not None:
        refs = {k: _references(by_id[k], items) for k in table["item"].unique()}
        table = table[[bool(refs[k]) for k in table["item"]]].reset_index(drop=True)
        preds = [t for t, k in zip(table["text"], table["item"]) for _ in refs[k]]
        flat = [r for k in table["item"] for r in refs[k]]
        scores = np.asarray(bert(preds, flat), dtype=float)
        sizes = [len(refs[k]) for k in table["item"]]
        bounds = np.cumsum([0, *sizes])
        table["bertscore"] = [scores[a:b].mean() for a, b in itertools.pairwise(bounds)]
    if clip is not None:
        images = {k: by_id[k].image() for k in table["item"].unique()}
        table["clipscore"] = np.asarray(
            clip([images[k] for k in table["item"]], table["text"].tolist()), dtype=float
        )
    return table


def soft_prompt_ks(
    scores: pd.DataFrame, metric: str = "clipscore", *, reduce: str | None = None
) -> dict[str, float]:
    """The paper's Kolmogorov-Smirnov test (sec. 3.1) between the score distributions of the
    images' soft prompts and of the random vectors (:func:`soft_prompt_scores`).

    Args:
        scores: :func:`soft_prompt_scores`' table.
        metric: ``"clipscore"`` (the paper's) or ``"bertscore"``.
        reduce: ``None``: every vector is a sample; ``"mean"`` / ``"max"``: one sample per image
            (Figure 3 shows the mean over patches and the per-image max).

    Returns:
        ``statistic`` (D), ``pvalue``, ``mean_image``, ``mean_random``, ``n_image``,
        ``n_random``.

    Example:
        >>> t = pd.DataFrame({"item": [0, 0, 1, 1], "kind": ["image", "random"] * 2,
        ...                   "clipscore": [20.0, 20.5, 19.0, 19.5]})
        >>> soft_prompt_ks(t)["statistic"]
        0.5
    """
    from scipy.stats import ks_2samp

    if metric not in scores:
        raise TableError(f"no {metric!r} column: run soft_prompt_scores with that scorer")
    values = {}
    for kind in ("image", "random"):
        rows = scores[scores["kind"] == kind]
        if reduce is not None:
            rows = rows.groupby("item")[metric].agg(reduce).reset_index()
        values[kind] = rows[metric].to_numpy(dtype=float)
    if min(len(v) for v in values.values()) < 1:
        raise TableError("need scores of both kinds ('image' and 'random')")
    test = ks_2samp(values["image"], values["random"])
    return {
        "statistic": float(test.statistic),
        "pvalue": float(test.pvalue),
        "mean_image": float(values["image"].mean()),
        "mean_random": float(values["random"].mean()),
        "n_image": len(values["image"]),
        "n_random": len(values["random"]),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def paper_comparison_table(units: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's reported results (:data:`~transformer_lens_mm.core.paper.PAPER_RESULTS`)
    beside a run's, one row per quantity the run measured: ``what``, ``paper``, ``where`` (in
    the paper), ``this run``.

    Args:
        units: The run's top-k table.
        tables: The run's other tables by name (``decoding_scores``, ``soft_prompt_scores``,
            ``soft_prompt_ks``, ``spatial``, ``ablation``; each optional).

    Example:
        >>> paper_comparison_table(units, {"ablation": sweep})  # doctest: +SKIP
    """
    ours: dict[str, str] = {}
    if len(units) and "interpretable" in units:
        ours["interpretable_share"] = _pct(float(units["interpretable"].mean()))
    if len(units):
        layers = units["layer"].astype(int)
        lo, hi = layers.quantile(0.25), layers.quantile(0.75)
        ours["top_layers"] = (
            f"half of top entries in layers {lo:g}-{hi:g} (median {layers.median():g})"
        )
    scores = tables.get("decoding_scores")
    if scores is not None and len(scores):
        for metric in ("bertscore", "clipscore"):
            if metric in scores:
                fmt = "{:.4f}" if metric == "bertscore" else "{:.2f}"
                ours[f"{metric}_units"] = fmt.format(scores[metric].mean())
                ours[f"{metric}_units_random"] = fmt.format(scores[f"{metric}_random_pair"].mean())
    soft = tables.get("soft_prompt_scores")
    if soft is not None and len(soft):
        for metric in ("bertscore", "clipscore"):
            if metric in soft:
                fmt = "{:.4f}" if metric == "bertscore" else "{:.2f}"
                means = soft.groupby("kind")[metric].mean()
                ours[f"{metric}_prompts"] = fmt.format(means.get("image", float("nan")))
                ours[f"{metric}_prompts_random"] = fmt.format(means.get("random", float("nan")))
    ks = tables.get("soft_prompt_ks")
    if ks is not None and len(ks) and (ks["metric"] == "clipscore").any():
        row = ks[ks["metric"] == "clipscore"].iloc[0]
        ours["prompts_ks"] = f"D = {row['statistic']:.3f}, p = {row['pvalue']:.3g}"
    spatial = tables.get("spatial")
    if spatial is not None and "category" in spatial and len(spatial):
        means = spatial.groupby(["category", "kind"])["iou"].mean().unstack()
        if {"top", "random"} <= set(means.columns):
            better = int((means["top"] > means["random"]).sum())
            ours["iou_top_beats_random"] = f"{better} of {len(means)}"
    sweep = tables.get("ablation")
    if sweep is not None and len(sweep):
        curve = ablation_curve(sweep, by="item")
        k = int(curve["k"].max())
        for kind in ("top", "random"):
            rows = curve[(curve["kind"] == kind) & (curve["k"] == k)]
            if len(rows):
                lost = 1 - float(rows["mean"].iloc[0])
                ours[f"ablation_{kind}"] = f"{_pct(lost)} on average (k = {k})"
    return pd.DataFrame(
        [
            {"what": what, "paper": value, "where": where, "this run": ours[key]}
            for key, (what, value, where) in PAPER_RESULTS.items()
            if key in ours
        ]
    )


def _r(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else round(float(x), 4)


def controls_summary(
    units: pd.DataFrame,
    spatial: pd.DataFrame | None = None,
    generic: pd.DataFrame | None = None,
    cross: pd.DataFrame | None = None,
    selectivity: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The controls that tell concept-specific units from generic ones, as numbers.

    * ``generic``: how many units are generic, the share of top entries they make up, the most
      widespread ones;
    * ``specificity_ratio``: per k, the mean drop of p(c) with each image's top-k zeroed on the
      image itself and on other-concept images, and their ratio (random units too);
    * ``iou_by_concept``: mean IoU per concept (the object or background region ``c`` names),
      top units vs random units, and in how many concepts top > random;
    * ``category_selectivity``: the share of concept units whose mean (signed) activation is
      highest on their own concept's held-out images, and of concepts whose units, taken
      together, are (the paper's S.4 reading).

    Example:
        >>> units = pd.DataFrame({"item": [0, 1, 2], "target": ["dog", "cat", "sun"],
        ...                       "layer": [0, 0, 0], "unit": [3, 3, 4]})
        >>> from transformer_lens_mm.tools.specificity import generic_units
        >>> controls_summary(units, generic=generic_units(units))["generic"]["n_generic_units"]
        1
    """
    out: dict[str, Any] = {}
    if generic is not None and len(generic):
        flags = generic.set_index(["layer", "unit"])["generic"]
        is_generic = [bool(flags.get((a, b), False)) for a, b in zip(units.layer, units.unit)]
        out["generic"] = {
            "n_generic_units": int(generic["generic"].sum()),
            "n_units": len(generic),
            "share_of_top_entries_generic": _r(sum(is_generic) / max(len(units), 1)),
            "most_widespread": [
                f"L{r.layer}.u{r.unit} ({r.n_concepts} concepts, {r.n_items} images)"
                for r in generic.head(5).itertuples()
            ],
        }
    if cross is not None and len(cross):
        ratios = specificity_ratio(cross)
        out["specificity_ratio"] = {
            str(int(r.k)): {
                "same_drop": _r(r.same_drop),
                "cross_drop": _r(r.cross_drop),
                "ratio": _r(r.ratio),
                "random_same_drop": _r(r.random_same_drop),
                "random_cross_drop": _r(r.random_cross_drop),
                "n_cross_pairs": int(r.n_cross),
            }
            for r in ratios.itertuples()
            if r.k > 0
        }
    if spatial is not None and len(spatial) and "category" in spatial:
        per = (
            spatial.groupby(["category", "kind", "item"])["iou"]
            .mean()
            .groupby(["category", "kind"])
            .mean()
            .unstack("kind")
        )
        n_img = spatial.groupby("category")["item"].nunique()
        ceiling = (
            spatial.drop_duplicates(["item", "category"]).groupby("category")["map_ceiling"].mean()
            if "map_ceiling" in spatial
            else pd.Series(dtype=float)
        )
        by_concept = {
            str(c): {
                "top": _r(row.get("top")),
                "random": _r(row.get("random")),
                "n_images": int(n_img[c]),
                **({"map_ceiling": _r(ceiling[c])} if c in ceiling else {}),
            }
            for c, row in per.iterrows()
        }
        above = [c for c, v in by_concept.items() if (v["top"] or 0) > (v["random"] or 0)]
        out["iou_by_concept"] = by_concept
        out["concepts_iou_top_above_random"] = f"{len(above)} of {len(by_concept)}"
        out["concepts_iou_top_not_above_random"] = sorted(set(by_concept) - set(above))
    if selectivity is not None and len(selectivity):
        key = ["unit_class", "layer", "unit"] + (["sign"] if "sign" in selectivity else [])
        best = selectivity.loc[selectivity.groupby(key)["mean_activation"].idxmax()]
        own = best["unit_class"].astype(str) == best["image_class"].astype(str)
        grid = selectivity_by_class(selectivity)
        own_class = [
            bool(c in grid.columns and grid.loc[c].notna().any() and grid.loc[c].idxmax() == c)
            for c in grid.index
        ]
        out["category_selectivity"] = {
            "units": len(best),
            "share_of_units_most_active_on_own_class": _r(own.mean()),
            "classes_whose_units_peak_on_own_class": f"{sum(own_class)} of {len(own_class)}",
            "share_of_classes_peaking_on_own_class": _r(np.mean(own_class) if own_class else None),
            "chance": _r(1 / max(selectivity["image_class"].nunique(), 1)),
        }
    return out
