"""The paper's per-batch search, written once: caption, target, attribute, top-k, decode.

:func:`search_batch` runs on one batch of images: greedy captions (or given captions, or
explicit targets), the first noun of each caption as the target ``c``, attribution of ``y_c``
to every MLP unit at the image positions, each image's top ``k`` ``(layer, unit, position)``
entries, their decodings through the unembedding and the interpretability filter, and (on
request) each entry's patch map. Items that cannot be used (an unreadable image, a caption
without a noun, a target outside the vocabulary) are recorded as failures; the others go on.

Its two tables have the one schema every pipeline writes and every experiment reads:

* ``items``: one row per item: ``index`` (position in the data set or input list), ``item``
  (its id), ``caption``, ``target`` (c as a string), ``target_id``, ``noun``, ``failure``,
  ``target_prefix`` (the caption's token ids before c: what :func:`revisit_batch` rebuilds the
  batch's inputs from);
* ``units``: the top-k rows: ``item``, ``index``, ``target``, ``rank``, ``layer``, ``unit``,
  ``position``, ``score``, ``activation`` (``Z``), ``sign`` (the orientation of the row's
  readout: ``sign(Z)`` on gated MLPs, ``+1`` on ungated ones; :mod:`~transformer_lens_mm.tools.
  readout`), ``tokens`` (the row's write decoded), ``interpretable``, ``decodes_to_target``
  (c is among the decoded tokens).

The patch ``maps`` are each row's signed activation ``sign * Z`` over the image positions.

:func:`find_multimodal_neurons` loops it over a list of images; ``tlmm analyze``
(:mod:`transformer_lens_mm.pipelines.analyze`) and ``tlmm demo`` call it per batch, and the
steps after it (ablation, captions under ablation, soft prompts) are in
:mod:`transformer_lens_mm.pipelines.steps`.

Example:
    >>> found = find_multimodal_neurons(model, images, k=100)  # doctest: +SKIP
    >>> found.units.query("interpretable").head()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.core.images import ImageLike, to_rgb_image
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.paper import DECODED_TOKENS, MIN_WORDS, TOP_K
from transformer_lens_mm.errors import ArgumentError, ConfigError, ModelSetupError
from transformer_lens_mm.tools.attribution import Attribution, attribute
from transformer_lens_mm.tools.decoding import decode_unit_table
from transformer_lens_mm.tools.readout import SignRule, readout_for
from transformer_lens_mm.tools.targets import (
    NounFinder,
    Target,
    target_inputs,
    targets_from_captions,
    token_id_of,
)
from transformer_lens_mm.tools.words import is_interpretable, same_word

__all__ = [
    "BatchSearch",
    "NeuronSearch",
    "SearchSettings",
    "find_multimodal_neurons",
    "revisit_batch",
    "search_batch",
    "tag_rows",
]

#: ``(item id, index, target string)`` of each usable item of a batch, in batch order.
Row = tuple[Hashable, int, str]


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """What :func:`search_batch` computes (defaults: the paper's)."""

    k: int = TOP_K  # top (layer, unit, position) entries kept per image
    layers: Sequence[int] | None = None  # layers to score (None: all)
    rank_units: int | None = None  # also rank each image's best (layer, unit) pairs (ablations)
    n_tokens: int = DECODED_TOKENS  # decoded tokens per unit
    min_words: int = MIN_WORDS  # interpretability filter: dictionary words among them
    dictionary: str = "scowl"  # the filter's word list: "scowl" (the paper's) or "web2"
    max_new_tokens: int = 20  # caption length limit
    noun_finder: NounFinder | None = None  # None: spaCy if installed, else the lexicon
    maps: bool = True  # each top-k row's patch map (recorded by the attribution forward)
    sign: SignRule = "auto"  # how entries are oriented (tools.readout: sign(Z) on gated MLPs)
    final_norm: bool | None = None  # decode through the final norm's scale (None: gated only)

    def __post_init__(self) -> None:
        if self.k < 1 or self.n_tokens < 1 or self.max_new_tokens < 1:
            raise ConfigError(
                f"k, n_tokens and max_new_tokens must be >= 1, got {self.k}, {self.n_tokens}, "
                f"{self.max_new_tokens}"
            )
        if self.rank_units is not None and self.rank_units < 1:
            raise ConfigError(f"rank_units must be >= 1 or None, got {self.rank_units}")
        if self.dictionary not in ("scowl", "web2"):
            raise ConfigError(f"dictionary must be 'scowl' or 'web2', got {self.dictionary!r}")
        if self.sign not in ("auto", "activation", "weights"):
            raise ConfigError(f"sign must be 'auto', 'activation' or 'weights', got {self.sign!r}")


@dataclass
class BatchSearch:
    """What :func:`search_batch` found in one batch (usable items in batch order)."""

    items: pd.DataFrame  # one row per item given (failures included)
    units: pd.DataFrame  # top-k rows of the usable items
    maps: Tensor | None = None  # [len(units), n_image_tokens]: maps[i] of units.iloc[i]
    base: MultimodalInput | None = None  # usable items: [image][prompt], right-padded
    inputs: MultimodalInput | None = None  # + each caption's tokens before c (y_c at the end)
    attribution: Attribution | None = None  # of the usable items
    targets: list[Target] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)  # (item, index, target) per usable item
    captions: list[str] = field(default_factory=list)  # caption per usable item
    # p(c), logit(c) of the ablation forwards already run on ``inputs`` (by row, c, mode and
    # unit set): the ablation steps of one batch share them instead of rerunning them
    ablations: dict[Hashable, tuple[float, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of usable items."""
        return len(self.rows)


def tag_rows(table: pd.DataFrame, rows: Sequence[Row]) -> pd.DataFrame:
    """Replace a batch-local ``image`` column (a tool's table) by ``item``, ``index``,
    ``target`` of the search's usable items (``rows``), in front.

    Example:
        >>> tag_rows(pd.DataFrame({"image": [1, 0], "x": [5, 6]}), [("a", 0, " c"), ("b", 3, " d")])
          item  index target  x
        0    b      3      d  5
        1    a      0      c  6
    """
    table = table.copy()
    local = table.pop("image").tolist()
    table.insert(0, "target", [rows[i][2] for i in local])
    table.insert(0, "index", [rows[i][1] for i in local])
    table.insert(0, "item", [rows[i][0] for i in local])
    return table


def _item_row(index: int, item: Hashable, caption: str | None, target: Target | None, failure):
    return {
        "index": index,
        "item": item,
        "caption": caption,
        "target": None if target is None else target.token,
        "target_id": None if target is None else target.token_id,
        "noun": None if target is None else target.word,
        "failure": failure,
        "target_prefix": None if target is None else [int(t) for t in target.prefix_ids],
    }


def _explicit_targets(
    model: MultimodalModel, targets: Sequence[int | str]
) -> tuple[list[Target | None], dict[int, str]]:
    found: list[Target | None] = []
    why: dict[int, str] = {}
    for j, target in enumerate(targets):
        try:
            tid = token_id_of(model.tokenizer, target)
            found.append(Target(tid, model.tokenizer.decode([tid]), None, []))
        except ValueError as err:
            found.append(None)
            why[j] = str(err)
    return found, why


def search_batch(
    model: MultimodalModel,
    *,
    indices: Sequence[int],
    ids: Sequence[Hashable] | None = None,
    images: Sequence[ImageLike] | None = None,
    pixel_values: Tensor | None = None,
    image_features: Tensor | None = None,
    captions: Sequence[str] | None = None,
    targets: Sequence[int | str] | None = None,
    prompts: str | Sequence[str] | None = None,
    unreadable: Sequence[tuple[int, Hashable, str]] = (),
    settings: SearchSettings | None = None,
    decoded: dict | None = None,
) -> BatchSearch:
    """The paper's search on one batch: caption -> first noun -> attribution -> top-k.

    Args:
        model: A multimodal model (either TL API).
        indices: Position of each item in the data set (or input list).
        ids: Id of each item (default: its index).
        images: Raw images (unreadable ones are recorded as failures), or ...
        pixel_values: ... preprocessed images ``[batch, 3, H, W]``, or ...
        image_features: ... the encoder's output ``[batch, n_image_tokens, d_image]``.
        captions: Given captions (the data set's) instead of greedy ones; c = first noun.
        targets: Explicit targets (token ids or words) instead of caption nouns.
        prompts: One prompt, one per item, or ``None`` for the model's.
        unreadable: ``(index, id, why)`` of items that could not even be loaded (recorded
            as failure rows after the others).
        settings: What to compute (:class:`SearchSettings`; default the paper's).
        decoded: A decoding cache shared by the batches of one run (a unit seen in an
            earlier batch is not decoded again; see
            :func:`~transformer_lens_mm.tools.decoding.decode_unit_table`).

    Returns:
        A :class:`BatchSearch`: the ``items`` and ``units`` tables (schema in the module
        docstring), the patch ``maps``, and what the later steps need (inputs, attribution).
    """
    settings = settings or SearchSettings()
    indices = [int(i) for i in indices]
    ids = list(indices) if ids is None else list(ids)
    if len(ids) != len(indices):
        raise ArgumentError(f"got {len(ids)} ids for {len(indices)} items: pass one per item")
    if indices and sum(x is not None for x in (images, pixel_values, image_features)) != 1:
        raise ArgumentError(
            "pass exactly one of images=..., pixel_values=... or image_features=..."
        )
    n = len(indices)
    for name, given in (("captions", captions), ("targets", targets)):
        if given is not None and len(given) != n:
            raise ArgumentError(f"got {len(given)} {name} for {n} items: pass one per item")
    if captions is not None and targets is not None:
        raise ArgumentError("pass captions=... or targets=..., not both")
    if isinstance(prompts, (list, tuple)) and len(prompts) != n:
        raise ArgumentError(f"got {len(prompts)} prompts for {n} items: pass one or one per item")
    failed = list(unreadable)
    if images is not None:  # read what can be read; the rest become failure rows
        readable, pil = [], []
        for j, image in enumerate(images):
            try:
                pil.append(to_rgb_image(image))
                readable.append(j)
            except (OSError, ValueError, TypeError) as err:
                failed.append((indices[j], ids[j], f"unreadable image: {err}"))
        pick = lambda seq: None if seq is None else [seq[j] for j in readable]  # noqa: E731
        indices, ids = pick(indices), pick(ids)
        captions, targets = pick(captions), pick(targets)
        if isinstance(prompts, (list, tuple)):
            prompts = pick(prompts)
        if readable:
            encoder = model.image_encoder
            if encoder is None:
                raise ModelSetupError("this model has no image encoder: pass image_features=...")
            pixel_values = encoder.preprocess(pil)
    failure_rows = [_item_row(i, key, None, None, why) for i, key, why in failed]
    if not indices:
        return BatchSearch(items=pd.DataFrame(failure_rows), units=pd.DataFrame())
    # the encoder runs once per image: every later input of this batch carries its features
    features = image_features if pixel_values is None else model.encode_pixels(pixel_values)
    assert features is not None

    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    why: dict[int, str] = {}
    texts: list[str | None]
    if targets is not None:
        found, why = _explicit_targets(model, targets)
        texts = [None] * len(indices)
    else:
        if captions is None:
            caps = generate_captions(
                model,
                image_features=features,
                prompts=prompts,
                max_new_tokens=settings.max_new_tokens,
            )
            texts, token_lists = list(caps.texts), caps.tokens.tolist()
        else:
            texts = list(captions)
            token_lists = [
                tokenizer.encode(" " + t.strip(), add_special_tokens=False) for t in captions
            ]
        found = targets_from_captions(
            tokenizer, token_lists, finder=settings.noun_finder, eos_token_id=eos
        )
        why = {j: f"no noun in the caption {texts[j]!r}" for j, t in enumerate(found) if t is None}
    keep = [j for j, t in enumerate(found) if t is not None]
    item_rows = [
        _item_row(indices[j], ids[j], texts[j], found[j], why.get(j)) for j in range(len(indices))
    ]
    result = BatchSearch(items=pd.DataFrame(item_rows + failure_rows), units=pd.DataFrame())
    if not keep:
        return result

    kept: list[Target] = [found[j] for j in keep]  # type: ignore[misc]
    item_prompts = [prompts[j] for j in keep] if isinstance(prompts, (list, tuple)) else prompts
    base = model.prepare_inputs(image_features=features[keep], prompts=item_prompts)
    batch = target_inputs(model, base, kept)
    attr = attribute(
        model,
        batch,
        [t.token_id for t in kept],
        layers=settings.layers,
        top_k=settings.k,
        rank_units=settings.rank_units,
        keep_maps=settings.maps,
    )
    assert attr.best_scores is not None
    n_rows = attr.best_scores.shape[1]
    readout = readout_for(model, sign=settings.sign, final_norm=settings.final_norm)
    table = decode_unit_table(
        model, attr.top_k(n_rows), k=settings.n_tokens, cache=decoded, readout=readout
    )
    table["interpretable"] = [
        is_interpretable(t, min_words=settings.min_words, dictionary=settings.dictionary)
        for t in table["tokens"]
    ]
    table["decodes_to_target"] = [
        any(same_word(tok, kept[i].token) for tok in toks)
        for i, toks in zip(table["image"], table["tokens"])
    ]
    # each row's unit over the image patches, recorded by the attribution's own forward, as
    # the row's signed activation sign * Z (the same map whichever sign the weights give k)
    maps = attr.top_k_maps(n_rows) if settings.maps else None
    if maps is not None:
        maps = maps * torch.tensor(table["sign"].tolist(), dtype=maps.dtype)[:, None]
    rows: list[Row] = [(ids[j], indices[j], t.token) for j, t in zip(keep, kept)]
    result.units = tag_rows(table, rows)
    result.maps = maps
    result.base, result.inputs, result.attribution = base, batch, attr
    result.targets, result.rows = kept, rows
    result.captions = [str(texts[j]) for j in keep]
    return result


def revisit_batch(
    model: MultimodalModel,
    items: pd.DataFrame,
    *,
    pixel_values: Float[Tensor, "batch 3 height width"] | None = None,
    image_features: Float[Tensor, "batch n_image_tokens d_image"] | None = None,
    prompts: str | Sequence[str] | None = None,
) -> BatchSearch:
    """A searched batch rebuilt from its rows of a run's ``items`` table, without captioning or
    attributing again: the inputs a step after the merge runs its forwards on (the same tokens
    as the search's: the stored target ids and caption prefixes, not re-tokenised text).

    Args:
        model: The model the run searched with.
        items: The batch's rows of the ``items`` table (failures are skipped).
        pixel_values: The batch's images, one per row of ``items``, or ...
        image_features: ... their encoder features.
        prompts: The prompt(s) the search used (``None``: the model's).

    Returns:
        A :class:`BatchSearch` with ``base``, ``inputs``, ``targets``, ``rows`` and
        ``captions`` (no ``attribution``, ``units`` or ``maps``).

    Example:
        >>> rows = items[items.batch == 3]  # doctest: +SKIP
        >>> found = revisit_batch(model, rows, pixel_values=pixels)  # doctest: +SKIP
    """
    if (pixel_values is None) == (image_features is None):
        raise ArgumentError("pass exactly one of pixel_values=... or image_features=...")
    given = pixel_values if pixel_values is not None else image_features
    assert given is not None
    if len(given) != len(items):
        raise ArgumentError(f"got {len(given)} images for {len(items)} item rows: one each")
    if "target_prefix" not in items:
        raise ConfigError(
            "this items table has no target_prefix column (written before it existed): "
            "re-run the search to revisit its batches"
        )
    keep = [j for j, tid in enumerate(items["target_id"]) if pd.notna(tid)]
    result = BatchSearch(items=items.reset_index(drop=True), units=pd.DataFrame())
    if not keep:
        return result
    rows_of = items.iloc[keep]
    features = image_features if pixel_values is None else model.encode_pixels(pixel_values)
    assert features is not None
    targets = [
        Target(int(tid), str(tok), noun, [int(t) for t in prefix], caption)
        for tid, tok, noun, prefix, caption in zip(
            rows_of["target_id"],
            rows_of["target"],
            rows_of["noun"],
            rows_of["target_prefix"],
            rows_of["caption"],
        )
    ]
    item_prompts = [prompts[j] for j in keep] if isinstance(prompts, (list, tuple)) else prompts
    base = model.prepare_inputs(image_features=features[keep], prompts=item_prompts)
    result.base, result.inputs = base, target_inputs(model, base, targets)
    result.targets = targets
    result.rows = [
        (item, int(index), str(tok))
        for item, index, tok in zip(rows_of["item"], rows_of["index"], rows_of["target"])
    ]
    result.captions = [str(c) for c in rows_of["caption"]]
    return result


@dataclass
class NeuronSearch:
    """Result of :func:`find_multimodal_neurons` (dictionary keys are positions in the input)."""

    units: pd.DataFrame  # top-k rows per image (schema of search_batch)
    items: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per image
    maps: Tensor | None = None  # with maps=True: maps[i] of units.iloc[i]
    captions: dict[int, str] = field(default_factory=dict)  # greedy caption per image
    targets: dict[int, Target] = field(default_factory=dict)  # target per usable image
    failures: dict[int, str] = field(default_factory=dict)  # image -> why it was skipped
    attributions: list[tuple[list[int], Attribution]] = field(default_factory=list)
    inputs: list[MultimodalInput] = field(default_factory=list)  # the attributed inputs

    def summary(self) -> str:
        n_ok = len(self.targets)
        share = (
            self.units.groupby("item")["interpretable"].mean().mean() if len(self.units) else 0.0
        )
        return (
            f"{n_ok} images attributed, {len(self.failures)} failed; "
            f"{share:.0%} of top units pass the interpretability filter"
        )


def find_multimodal_neurons(
    model: MultimodalModel,
    images: Sequence[ImageLike],
    *,
    targets: Sequence[int | str] | None = None,
    prompts: str | Sequence[str] | None = None,
    ids: Sequence[Hashable] | None = None,
    k: int = TOP_K,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    noun_finder: NounFinder | None = None,
    n_tokens: int = DECODED_TOKENS,
    min_words: int = MIN_WORDS,
    maps: bool = False,
    sign: SignRule = "auto",
    final_norm: bool | None = None,
    dictionary: str = "scowl",
    verbose: bool = True,
) -> NeuronSearch:
    """Find each image's top-``k`` MLP units for its caption's first noun.

    Args:
        model: A multimodal model (either TL API).
        images: Images (any ``ImageLike``).
        targets: Explicit target per image (token id or word); default: first caption noun.
        prompts: Prompt(s) (default: the model's).
        ids: An id per image for the tables' ``item`` column (default: its position).
        k: Units kept per image (the paper: 100).
        layers: Layers to score (default all).
        batch_size: Images per forward/backward.
        max_new_tokens: Caption length limit.
        noun_finder: Noun finder for captions (default: spaCy if installed, else lexicon).
        n_tokens: Decoded tokens per unit (the paper: 10).
        min_words: Interpretability filter: dictionary words needed among ``n_tokens``.
        maps: Also keep each row's patch map (``sign * Z``, from the attribution's forward).
        sign: How entries are oriented for decoding and maps (``"auto"``: ``sign(Z)`` on gated
            MLPs, ``+W_out`` on ungated ones; :mod:`~transformer_lens_mm.tools.readout`).
        final_norm: Decode through the final norm's scale (``None``: on gated MLPs only).
        dictionary: The filter's word list: ``"scowl"`` (the paper's, S.2) or ``"web2"``.
        verbose: Progress bar.

    Example:
        >>> found = find_multimodal_neurons(model, images)  # doctest: +SKIP
        >>> found.units[["item", "layer", "unit", "tokens"]].head()  # doctest: +SKIP
    """
    n = len(images)
    for name, given in (("targets", targets), ("ids", ids)):
        if given is not None and len(given) != n:
            raise ArgumentError(f"got {len(given)} {name} for {n} images: pass one per image")
    if isinstance(prompts, (list, tuple)) and len(prompts) != n:
        raise ArgumentError(f"got {len(prompts)} prompts for {n} images")
    settings = SearchSettings(
        k=k,
        layers=layers,
        n_tokens=n_tokens,
        min_words=min_words,
        max_new_tokens=max_new_tokens,
        noun_finder=noun_finder,
        maps=maps,
        sign=sign,
        final_norm=final_norm,
        dictionary=dictionary,
    )
    result = NeuronSearch(units=pd.DataFrame())
    units, items, map_parts, decoded = [], [], [], {}
    for start in tqdm(range(0, n, batch_size), disable=not verbose, desc="finding neurons"):
        idx = list(range(start, min(start + batch_size, n)))
        found = search_batch(
            model,
            indices=idx,
            ids=None if ids is None else [ids[i] for i in idx],
            images=[images[i] for i in idx],
            targets=None if targets is None else [targets[i] for i in idx],
            prompts=[prompts[i] for i in idx] if isinstance(prompts, (list, tuple)) else prompts,
            settings=settings,
            decoded=decoded,
        )
        items.append(found.items)
        for row in found.items.itertuples():
            if row.failure is not None and not pd.isna(row.failure):
                result.failures[int(row.index)] = row.failure
            if targets is None and isinstance(row.caption, str):
                result.captions[int(row.index)] = row.caption
        if not len(found):
            continue
        kept = [index for _, index, _ in found.rows]
        result.targets.update(zip(kept, found.targets))
        assert found.attribution is not None and found.inputs is not None
        result.attributions.append((kept, found.attribution))
        result.inputs.append(found.inputs)
        units.append(found.units)
        if found.maps is not None:
            map_parts.append(found.maps)
    result.items = pd.concat(items, ignore_index=True) if items else pd.DataFrame()
    if units:
        result.units = pd.concat(units, ignore_index=True)
    if map_parts:
        result.maps = torch.cat(map_parts)
    return result
