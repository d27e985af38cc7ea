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

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from transformer_lens_mm.core.contract import LanguageModel, MultimodalModel
from transformer_lens_mm.core.paper import REGION_QUANTILE
from transformer_lens_mm.data.datasets import Item
from transformer_lens_mm.tools.decoding import unit_token_ranks, vocab_mask
from transformer_lens_mm.tools.spatial import image_mlp_activations, spatial_selectivity
from transformer_lens_mm.tools.specificity import specificity_ratio
from transformer_lens_mm.tools.stats import ci_half_width
from transformer_lens_mm.tools.units import random_units_like, units_of
from transformer_lens_mm.tools.words import is_dictionary_word, same_word

__all__ = [
    "ablation_caption_summary",
    "category_selectivity",
    "controls_summary",
    "decoding_target_ranks",
    "layer_distribution",
    "score_texts",
    "soft_prompt_summary",
    "soft_prompt_texts",
    "spatial_iou_by_category",
    "unit_decoding_texts",
]


def layer_distribution(units: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Count and share of top-k entries per layer (all images pooled)."""
    if "layer" not in units:
        raise ValueError("units needs a 'layer' column (a run's units.parquet)")
    counts = units["layer"].value_counts().sort_index()
    layers = range(n_layers) if n_layers is not None else counts.index
    table = pd.DataFrame({"layer": list(layers)})
    table["count"] = [int(counts.get(layer, 0)) for layer in table["layer"]]
    table["share"] = table["count"] / max(int(table["count"].sum()), 1)
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
    favours ``c`` (a high percentile) without ``c`` reaching its top 10.

    Args:
        model: The model whose weights decode the units.
        units: A units table (``item``, ``rank``, ``layer``, ``unit``).
        targets: ``item -> c``'s token id, for the items to rank (in this order).
        seed: Seed of the random units (item ``i`` in ``targets``'s order draws ``seed + i``).

    Returns:
        One row per (item, kind, unit): ``kind`` (``top``/``random``), ``layer``, ``unit``,
        ``target_rank`` (0: c is the first decoded token) and ``target_percentile`` (100: c
        first, over the decodable vocabulary).
    """
    rows = []
    for i, (item, tid) in enumerate(targets.items()):
        top = units_of(units, item)
        for kind, us in (("top", top), ("random", random_units_like(model, top, seed=seed + i))):
            ranks = unit_token_ranks(model, us, [tid] * len(us)) if us else torch.zeros(0)
            rows += [(item, kind, la, u, int(r)) for (la, u), r in zip(us, ranks.tolist())]
    table = pd.DataFrame(rows, columns=["item", "kind", "layer", "unit", "target_rank"])
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
    seed: int = 0,
) -> pd.DataFrame:
    """IoU of each image's top units with the mask of the category its caption's noun names.

    Images whose noun matches none of their annotated categories are left out (counted in the
    ``attrs["unmatched"]`` of the result). Random units: as many, from the same layers.

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
        todo.append((item, cat, masks[cat], units_of(units, row.item)))
    tables = []
    for start in range(0, len(todo), batch_size):
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


def category_selectivity(
    model: MultimodalModel,
    units: pd.DataFrame,
    items: pd.DataFrame,
    held_out: Sequence[Item],
    *,
    n_units: int = 5,
    category_of: str = "noun",
    batch_size: int = 8,
) -> pd.DataFrame:
    """Mean activation of each class's most frequent top units on held-out images of each class.

    Args:
        model: The analysed model.
        units: A run's top-k table (``item``, ``layer``, ``unit``).
        items: A run's items table (maps an item to its class via ``category_of``).
        held_out: Images not in the run, with ``categories`` (their first one is the class).
        n_units: Units per class (the most frequent in that class's top-k lists).
        category_of: Column of ``items`` naming the class (``noun`` or ``target``).
        batch_size: Images per forward.

    Returns:
        One row per (unit class, unit, image class): ``mean_activation``, ``n_images``; a unit
        is selective when its own class's row is the largest.
    """
    classes = items.set_index("item")[category_of].dropna()
    tagged = units[units["item"].isin(classes.index)].copy()
    tagged["class"] = tagged["item"].map(classes)
    chosen: dict[str, list[tuple[int, int]]] = {}
    for cls, group in tagged.groupby("class"):
        freq = group.groupby(["layer", "unit"])["item"].nunique().sort_values(ascending=False)
        chosen[str(cls)] = [(int(a), int(b)) for a, b in freq.index[:n_units]]
    pairs = sorted({u for us in chosen.values() for u in us})
    if not pairs:
        return pd.DataFrame()
    layers = sorted({layer for layer, _ in pairs})
    slot = {layer: s for s, layer in enumerate(layers)}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    usable = [it for it in held_out if it.categories]
    for start in range(0, len(usable), batch_size):
        chunk = usable[start : start + batch_size]
        batch = model.prepare_inputs([it.image() for it in chunk])
        acts = image_mlp_activations(model, batch, layers)  # [n, L, n_img, d_mlp]
        idx_l = torch.tensor([slot[layer] for layer, _ in pairs])
        idx_u = torch.tensor([u for _, u in pairs])
        # advanced indices split by a slice: the pair dimension comes first
        peak = acts[:, idx_l, :, idx_u].amax(-1).T  # [n, n_pairs]
        for j, it in enumerate(chunk):
            cls = it.categories[0]
            sums[cls] = sums.get(cls, torch.zeros(len(pairs))) + peak[j]
            counts[cls] = counts.get(cls, 0) + 1
    rows = []
    for unit_cls, us in chosen.items():
        for u in us:
            p = pairs.index(u)
            for img_cls, total in sums.items():
                rows.append(
                    (
                        unit_cls,
                        u[0],
                        u[1],
                        img_cls,
                        float(total[p] / counts[img_cls]),
                        counts[img_cls],
                    )
                )
    return pd.DataFrame(
        rows, columns=["unit_class", "layer", "unit", "image_class", "mean_activation", "n_images"]
    )


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
        raise ValueError(f"captions needs columns {sorted(need)} (a run's ablation_captions)")
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
        raise ValueError(f"soft needs columns {sorted(need)} (a run's soft_prompts table)")
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


def _text_of(tokens: Sequence[str]) -> str:
    return " ".join(t.strip() for t in tokens if t.strip())


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
        raise ValueError(f"no soft-prompt rows of kind {kind!r} and rank {rank}")
    rows = rows.sort_values(["item", "patch"], kind="stable")
    texts = rows.groupby("item", sort=False)["token"].agg(lambda t: _text_of(t.tolist()))
    return texts.rename("text")


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
        raise ValueError("CLIPScore needs the images: pass data=<the run's data set>")
    captions = items.set_index("item")["caption"]
    table = pd.DataFrame({"item": texts.index, "text": texts.to_numpy()})
    table = table[table["item"].isin(captions.dropna().index)].reset_index(drop=True)
    table["caption"] = table["item"].map(captions)
    n = len(table)
    if n < 2:
        raise ValueError(f"need at least 2 items with a text and a caption, got {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    other = np.empty(n, dtype=int)
    other[perm] = np.roll(perm, 1)  # a derangement: nobody keeps its own partner
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
    * ``category_selectivity``: the share of concept units whose peak activation is highest on
      their own concept's held-out images.

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
        by_concept = {
            str(c): {
                "top": _r(row.get("top")),
                "random": _r(row.get("random")),
                "n_images": int(n_img[c]),
            }
            for c, row in per.iterrows()
        }
        above = [c for c, v in by_concept.items() if (v["top"] or 0) > (v["random"] or 0)]
        out["iou_by_concept"] = by_concept
        out["concepts_iou_top_above_random"] = f"{len(above)} of {len(by_concept)}"
        out["concepts_iou_top_not_above_random"] = sorted(set(by_concept) - set(above))
    if selectivity is not None and len(selectivity):
        best = selectivity.loc[
            selectivity.groupby(["unit_class", "layer", "unit"])["mean_activation"].idxmax()
        ]
        own = best["unit_class"].astype(str) == best["image_class"].astype(str)
        out["category_selectivity"] = {
            "units": len(best),
            "share_peaking_on_own_concept": _r(own.mean()),
            "chance": _r(1 / max(selectivity["image_class"].nunique(), 1)),
        }
    return out
