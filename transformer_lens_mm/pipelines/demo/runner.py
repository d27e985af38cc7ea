"""The paper's analysis end to end on real pretrained weights: ``tlmm demo --out DIR``.

A frozen text-only LM (SmolLM2-135M by default, or Gemma 3 270M) sees through EfficientNet-Lite0
(frozen, ImageNet) and a shipped projection
(:func:`~transformer_lens_mm.data.pretrained.load_demo_model`; any other model can be passed).
On held-out natural-object scenes (:class:`~transformer_lens_mm.data.natural_scenes.
NaturalSceneSet`: the training record's held-out set of seen combinations; or the shape scenes)
and scikit-image's photos (out of the training distribution), the demo runs every step of the
paper with the same search step and steps as ``tlmm analyze``, then the controls that tell
concept-specific units from generic ones:

1. per batch, the search (:func:`~transformer_lens_mm.pipelines.search.search_batch`): greedy
   captions, their first noun ``c``, attribution ``Z * dy_c/dZ`` of every MLP unit at every
   image position, the top ``k`` per image decoded through the unembedding, the
   interpretability filter, and where ``c`` ranks in those decodings (vs random units);
2. soft prompts decoded to their nearest tokens, against norm-matched random vectors;
3. the logit lens of ``c`` at the position that predicts it;
4. spatial selectivity per concept: IoU of each top unit's 0.95-quantile patch region with the
   mask of the object ``c`` names, against random same-layer units; and the same for background
   concepts (each scene's largest region, sky/grass/water/wall/floor, as the explicit ``c``);
5. category selectivity (supplement S.4): each concept's 20 most frequent interpretable units,
   their mean signed activation over the patches of held-out one-object images of every
   concept;
6. the ablation sweep (top-k vs random units of the same layers, for every k);
7. same- vs cross-concept ablation: each image's top-k zeroed on images of other concepts;
8. generic units (top for the images of most concepts) and per-concept specificity;
9. single-unit ablation of the report's card units, and captions regenerated under ablation;
10. where translation happens, two more ways: attention knockout of image -> last in windows
    of layers (against random same-size position groups), and the contextual
    lens (each image token's nearest contextual text representations per layer, beside the
    logit and embedding lenses and random vectors).

Every table is written as CSV the moment it is computed (atomically); ``summary.json`` holds the
headline numbers and ``report.html`` a headline panel, the unit cards, figures and tables.

Example:
    >>> summary = run_demo("runs/demo", DemoConfig(n_scenes=8))  # doctest: +SKIP
    >>> summary["controls"]["specificity_ratio"]["100"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.corpora import reference_corpus
from transformer_lens_mm.data.datasets import Item
from transformer_lens_mm.data.demo_set import DemoSet
from transformer_lens_mm.data.natural_scenes import NOUNS
from transformer_lens_mm.data.pretrained import demo_projection_path, load_demo_model
from transformer_lens_mm.errors import NoUsableItemError
from transformer_lens_mm.pipelines.demo.config import DemoConfig, prepare_output
from transformer_lens_mm.pipelines.demo.report import card_groups, write_report
from transformer_lens_mm.pipelines.demo.summary import (
    describe_model,
    summarise,
    summary_text,
    where_translation,
)
from transformer_lens_mm.pipelines.demo.tables import DemoTables
from transformer_lens_mm.pipelines.experiments import (
    add_spatial_ceiling,
    category_selectivity,
    decoding_target_ranks,
    spatial_iou_by_category,
)
from transformer_lens_mm.pipelines.search import BatchSearch, SearchSettings, search_batch, tag_rows
from transformer_lens_mm.pipelines.steps import (
    ablation_captions_step,
    ablation_step,
    contextual_lens_step,
    cross_concept_step,
    knockout_step,
    soft_prompt_step,
    unit_effect_step,
)
from transformer_lens_mm.pipelines.steps.spatial import background_spatial
from transformer_lens_mm.report.cards import card_units
from transformer_lens_mm.tools.contextual_lens import build_contextual_index, lens_shares
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.specificity import concept_specificity, generic_units

__all__ = ["run_demo"]


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _search(
    model: MultimodalModel,
    items: list[Item],
    truths: dict[str, tuple[str, str, str]],
    config: DemoConfig,
) -> tuple[list[BatchSearch], pd.DataFrame]:
    """The search step per batch; the captions table (search items + scene truth)."""
    settings = SearchSettings(
        k=config.k,
        rank_units=max(max(config.ks, default=0), max(config.cross_ks, default=0), config.k),
        max_new_tokens=config.max_new_tokens,
    )
    searches, tables, decoded = [], [], {}
    for start in range(0, len(items), config.batch_size):
        chunk = items[start : start + config.batch_size]
        found = search_batch(
            model,
            indices=range(start, start + len(chunk)),
            ids=[it.id for it in chunk],
            images=[it.image() for it in chunk],
            settings=settings,
            decoded=decoded,
        )
        searches.append(found)
        tables.append(found.items)
    captions = pd.concat(tables, ignore_index=True)
    truth = [truths.get(n, (None, None, None)) for n in captions["item"]]
    captions["truth"] = [t[0] for t in truth]
    words = [str(c or "").lower().replace(".", " ").split() for c in captions["caption"]]
    # a noun drawn in one colour only is captioned without it (the natural scenes' captions)
    captions["colour_right"] = [
        None if c is None else (c in w or len(NOUNS.get(noun, (c, c))) == 1)
        for (_, c, noun), w in zip(truth, words)
    ]
    captions["object_right"] = [
        None if noun is None else noun in w for (_, _, noun), w in zip(truth, words)
    ]
    return searches, captions


def _lens(model: MultimodalModel, searches: list[BatchSearch]) -> pd.DataFrame:
    tables = []
    for found in searches:
        if not len(found):
            continue
        assert found.inputs is not None
        table = logit_lens(
            model,
            found.inputs,
            k=3,
            incl_mid=False,
            target_ids=[t.token_id for t in found.targets],
        )
        tables.append(tag_rows(table, found.rows))
    return pd.concat(tables, ignore_index=True)


def _contextual_lens(
    model: MultimodalModel, searches: list[BatchSearch], config, verbose: bool = False
) -> pd.DataFrame:
    """Per layer and lens, the share of image tokens whose 5 nearest tokens name c."""
    n_layers = int(model.cfg.n_layers)
    layers = sorted({*range(0, n_layers, config.lens_every), n_layers - 1})
    # seed + 1000: with "scenes", other scenes than the demo's, whose captions do not describe
    # its images
    texts = reference_corpus(config.lens_corpus, n=config.lens_texts, seed=config.seed + 1000)
    index = build_contextual_index(model, texts, layers=layers, verbose=verbose)
    tables = [contextual_lens_step(model, found, index) for found in searches if len(found)]
    shares = lens_shares(pd.concat(tables, ignore_index=True))
    shares.attrs["corpus"] = f"{config.lens_corpus}: {len(texts)} texts, {len(index)} vectors"
    return shares


def _per_batch(
    searches: list[BatchSearch],
    step: Callable[[BatchSearch, int], pd.DataFrame],
    *,
    desc: str = "",
    verbose: bool = False,
) -> pd.DataFrame:
    """A step over every batch with a usable item, seeded by the batch's first usable item's
    position among all usable items; ``verbose`` shows its own progress (images done, of how
    many) under the demo's bar."""
    tables, offset = [], 0
    total = sum(len(found) for found in searches)
    bar = tqdm(total=total, desc=f"  {desc}", unit="img", leave=False, disable=not verbose)
    for found in searches:
        if len(found):
            tables.append(step(found, offset))
        offset += len(found)
        bar.update(len(found))
    bar.close()
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _ablation_captions(
    model: MultimodalModel, searches: list[BatchSearch], config, verbose: bool = False
) -> pd.DataFrame:
    """Captions under ablation of the first ``n_ablation_captions`` usable images."""

    def step(found: BatchSearch, offset: int) -> pd.DataFrame:
        only = [j for j in range(len(found)) if offset + j < config.n_ablation_captions]
        if not only:
            return pd.DataFrame()
        return ablation_captions_step(
            model,
            found,
            k=max(config.ks, default=0),
            seeds=[offset + j for j in range(len(found))],
            max_new_tokens=config.max_new_tokens,
            only=only,
        )

    return _per_batch(searches, step, desc="ablation captions", verbose=verbose)


def _controls(units: pd.DataFrame, config: DemoConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generic units (top for the images of most concepts) and per-concept specificity, from
    the top-k table; the units table gets ``generic`` and ``breadth`` columns."""
    generic = generic_units(units, min_share=config.generic_share)
    per_unit = generic.set_index(["layer", "unit"])
    key = list(zip(units.layer, units.unit))
    units["generic"] = per_unit["generic"].reindex(key).to_numpy(dtype=bool)
    units["breadth"] = per_unit["breadth"].reindex(key).to_numpy()
    return generic, concept_specificity(units)


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    overwrite: bool = False,
    model: MultimodalModel | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the whole analysis, write results and the report into ``out``; return the summary.

    Args:
        out: Output folder; must not exist unless ``overwrite``.
        config: What to run (:class:`DemoConfig`).
        overwrite: Replace the demo's files in an existing folder (nothing else is touched).
        model: A loaded model (default: ``config.lm`` with the projection shipped for
            ``config.scene_set``, :func:`~transformer_lens_mm.data.pretrained.load_demo_model`).
        verbose: Progress bars and the printed summary.

    Returns:
        The content of ``summary.json``.
    """
    config = config or DemoConfig()
    if model is None:  # a pair without a shipped projection fails before anything is written
        demo_projection_path(config.lm, config.scene_set)
    out = prepare_output(out, overwrite)
    tables = DemoTables()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    steps = tqdm(total=14, desc="tlmm demo", disable=not verbose)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        steps.set_postfix_str(name)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        with open(out / "run.log", "a") as log:  # the run's log: each step's seconds
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {timings[name]} s\n")
        steps.update()
        return result

    if model is None:
        model = step(
            "load", lambda: load_demo_model(config.api, lm=config.lm, scenes=config.scene_set)
        )
    else:
        steps.update()
    assert model is not None
    data = DemoSet(
        config.scene_set,
        config.n_scenes,
        photos=config.photos,
        n_selectivity=config.n_selectivity,
        seed=config.seed,
    )
    items, truths = data.searched, data.truths
    by_id = {it.id: it for it in items}
    searches, captions = step("search", lambda: _search(model, items, truths, config))
    tables.set(out, "captions", captions)
    if not any(len(found) for found in searches):
        raise NoUsableItemError("no image got a caption with a noun: nothing to attribute")
    units = pd.concat([f.units for f in searches if len(f)], ignore_index=True)
    maps = torch.cat([f.maps for f in searches if f.maps is not None])
    generic, specificity = _controls(units, config)
    tables.set(out, "units", units)
    tables.set(out, "generic_units", generic)
    tables.set(out, "concept_specificity", specificity)
    target_ids = {row[0]: t.token_id for f in searches for row, t in zip(f.rows, f.targets)}
    target_ranks = decoding_target_ranks(model, units, target_ids)
    tables.set(out, "target_ranks", target_ranks)
    soft = step("soft prompts", lambda: soft_prompt_step(model, searches, seed=0))
    tables.set(out, "soft_prompts", soft)
    lens = step("logit lens", lambda: _lens(model, searches))
    tables.set(out, "logit_lens", lens)
    knockout = pd.DataFrame()
    if config.knockout_window:
        knockout = step(
            "attention knockout",
            lambda: _per_batch(
                searches,
                lambda f, seed: knockout_step(model, f, window=config.knockout_window, seed=seed),
                desc="attention knockout",
                verbose=verbose,
            ),
        )
        tables.set(out, "knockout", knockout)
    else:
        steps.update()
    shares = pd.DataFrame()
    if config.lens_every:
        shares = step("contextual lens", lambda: _contextual_lens(model, searches, config, verbose))
        tables.set(out, "lens_shares", shares)
    else:
        steps.update()
    spatial = step(
        "spatial",
        lambda: spatial_iou_by_category(
            model,
            items,
            captions,
            units,
            q=config.quantile,
            n_random=config.n_random,
            batch_size=config.batch_size,
            verbose=verbose,
        ),
    )
    if config.scene_set == "natural":
        background = step(
            "background IoU",
            lambda: background_spatial(
                model,
                items,
                k=config.k,
                q=config.quantile,
                n_random=config.n_random,
                batch_size=config.batch_size,
                verbose=verbose,
            ),
        )
        spatial = pd.concat(
            [spatial.assign(target_from="caption"), background.assign(target_from="background")],
            ignore_index=True,
        )
    else:
        steps.update()
    if model.image_encoder is not None:  # the best IoU a map on the grid reaches on each mask
        spatial = add_spatial_ceiling(
            spatial, items, tuple(model.image_encoder.grid_size), q=config.quantile
        )
    tables.set(out, "spatial", spatial)
    selectivity = step(
        "category selectivity",
        lambda: category_selectivity(
            model,
            units,
            captions,
            data.selectivity,
            batch_size=config.batch_size,
            verbose=verbose,
        ),
    )
    tables.set(out, "category_selectivity", selectivity)
    total = int(model.cfg.n_layers) * int(model.cfg.d_mlp)
    ks = [k for k in config.ks if k <= total]
    sweep = step(
        "ablation",
        lambda: _per_batch(
            searches,
            lambda f, seed: ablation_step(
                model, f, ks=ks, n_random=config.n_random, seed=seed, chunk_size=16
            ),
            desc="ablation",
            verbose=verbose,
        ),
    )
    tables.set(out, "ablation", sweep)
    cross_ks = [k for k in config.cross_ks if k <= total]
    cross = step(
        "cross-concept ablation",
        lambda: _per_batch(
            searches,
            lambda f, seed: cross_concept_step(
                model, f, ks=cross_ks, seed=seed, max_others=config.cross_others, chunk_size=16
            ),
            desc="cross-concept ablation",
            verbose=verbose,
        ),
    )
    tables.set(out, "cross_concept", cross)
    cards = pd.concat(
        [card_units(rows, n_cards=n) for _, rows, n in card_groups(units, config.n_cards)]
    )
    tested = {(int(a), int(b)) for a, b in zip(cards.layer, cards.unit)}
    per_item = (
        units[[(a, b) in tested for a, b in zip(units.layer, units.unit)]]
        .drop_duplicates(["item", "layer", "unit"])
        .groupby("item")
        .apply(lambda g: list(zip(g.layer, g.unit)), include_groups=False)
        .to_dict()
    )
    effects = step(
        "unit effects",
        lambda: _per_batch(
            searches,
            lambda f, seed: unit_effect_step(model, f, per_item, seed=seed),
            desc="unit effects",
            verbose=verbose,
        ),
    )
    tables.set(out, "unit_effects", effects)
    abl_caps = step(
        "ablation captions", lambda: _ablation_captions(model, searches, config, verbose)
    )
    tables.set(out, "ablation_captions", abl_caps)
    steps.close()

    summary = summarise(config, tables)
    summary.update(where_translation(knockout, shares))
    summary["seconds"] = {**timings, "total": round(time.perf_counter() - t_start, 1)}
    summary["model"] = describe_model(model)
    _write_json(out / "summary.json", summary)
    captions_by_item = dict(zip(captions["item"], captions["caption"]))
    write_report(
        out / "report.html",
        model,
        config,
        summary,
        tables=tables,
        maps=maps,
        image_of=lambda name: by_id[name].image(),
        caption_of=lambda name: str(captions_by_item.get(name, "")),
    )
    if verbose:
        print(summary_text(summary))
        print(f"report: {out / 'report.html'}")
    return summary
