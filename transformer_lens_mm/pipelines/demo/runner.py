"""The paper's analysis end to end on real pretrained weights: ``tlmm demo --out DIR``.

SmolLM2-135M (frozen, text-only) sees through EfficientNet-Lite0 (frozen, ImageNet) and the
shipped projection (:func:`~transformer_lens_mm.data.pretrained.load_demo_model`; any other
model can be passed). On held-out scenes of :class:`~transformer_lens_mm.data.scenes.SceneSet`
(and scikit-image's photos, out of the training distribution) the demo runs every step of the
paper, with the same search step and steps as ``tlmm analyze``:

1. per batch, the search (:func:`~transformer_lens_mm.pipelines.search.search_batch`): greedy
   captions, their first noun ``c``, attribution ``Z * dy_c/dZ`` of every MLP unit at every
   image position, the top ``k`` per image decoded through the unembedding, the
   interpretability filter, and where ``c`` ranks in those decodings (vs random units);
2. soft prompts decoded to their nearest tokens, against norm-matched random vectors;
3. the logit lens of ``c`` at the position that predicts it;
4. spatial selectivity: IoU of each top unit's 0.95-quantile patch region with the object mask,
   against random units of the same layers;
5. the ablation sweep (top-k vs random units of the same layers, for every k) and captions
   regenerated under ablation.

Every table is written as CSV the moment it is computed (atomically); ``summary.json`` holds the
headline numbers and ``report.html`` the figures, tables and a card per unit.

Example:
    >>> summary = run_demo("runs/demo", DemoConfig(n_scenes=8))  # doctest: +SKIP
    >>> summary["ablation"]["top"]["400"], summary["ablation"]["random"]["400"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.pipelines.demo.config import PHOTOS, DemoConfig, prepare_output
from transformer_lens_mm.pipelines.demo.report import write_report
from transformer_lens_mm.pipelines.demo.summary import describe_model, summarise, summary_text
from transformer_lens_mm.pipelines.experiments import decoding_target_ranks
from transformer_lens_mm.pipelines.search import BatchSearch, SearchSettings, search_batch, tag_rows
from transformer_lens_mm.pipelines.steps import (
    ablation_captions_step,
    ablation_step,
    soft_prompt_step,
)
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.spatial import spatial_selectivity
from transformer_lens_mm.tools.units import units_of

__all__ = ["run_demo"]


def _write_csv(out: Path, name: str, df: pd.DataFrame) -> None:
    atomic_write(out / name, lambda tmp: df.to_csv(tmp, index=False))


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, default=float)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _photos() -> list[tuple[str, Any]]:
    try:
        import skimage.data
    except ImportError:
        return []
    return [(name, getattr(skimage.data, name)()) for name in PHOTOS]


@dataclass
class _Item:
    name: str  # "scene-003" or "photo-chelsea"
    image: Any
    truth: str | None = None  # the scene's short caption
    colour: str | None = None
    shape: str | None = None
    mask: np.ndarray | None = None  # object mask (scenes)


def _load_items(config: DemoConfig) -> list[_Item]:
    seen, _ = SceneSet.split_pairs(8, seed=0)
    scenes = SceneSet(config.n_scenes, seed=config.seed, max_objects=1, pairs=seen)
    items = [
        _Item(
            f"scene-{i:03d}",
            s.image,
            s.short_caption.strip(" ."),
            s.objects[0].colour,
            s.objects[0].shape,
            s.masks[0],
        )
        for i, s in enumerate(scenes)
    ]
    if config.photos:
        items += [_Item(f"photo-{name}", img) for name, img in _photos()]
    return items


def _search(
    model: MultimodalModel, items: list[_Item], config: DemoConfig
) -> tuple[list[BatchSearch], pd.DataFrame]:
    """The search step per batch; the captions table (search items + scene truth)."""
    settings = SearchSettings(
        k=config.k,
        rank_units=max(max(config.ks, default=0), config.k),
        max_new_tokens=config.max_new_tokens,
    )
    searches, tables, decoded = [], [], {}
    for start in range(0, len(items), config.batch_size):
        chunk = items[start : start + config.batch_size]
        found = search_batch(
            model,
            indices=range(start, start + len(chunk)),
            ids=[it.name for it in chunk],
            images=[it.image for it in chunk],
            settings=settings,
            decoded=decoded,
        )
        searches.append(found)
        tables.append(found.items)
    captions = pd.concat(tables, ignore_index=True)
    by_name = {it.name: it for it in items}
    captions["truth"] = [by_name[n].truth for n in captions["item"]]
    words = [str(c or "").lower().replace(".", " ").split() for c in captions["caption"]]
    for column, attr in (("colour_right", "colour"), ("shape_right", "shape")):
        captions[column] = [
            None if getattr(by_name[n], attr) is None else getattr(by_name[n], attr) in w
            for n, w in zip(captions["item"], words)
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


def _spatial(
    model: MultimodalModel, scenes: list[tuple[_Item, int, str]], units: pd.DataFrame, config
) -> pd.DataFrame:
    """IoU of each scene's top units (and random same-layer units) with its object mask."""
    tables = []
    for start in range(0, len(scenes), config.batch_size):
        chunk = scenes[start : start + config.batch_size]
        table = spatial_selectivity(
            model,
            model.prepare_inputs([it.image for it, _, _ in chunk]),
            [units_of(units, it.name) for it, _, _ in chunk],
            [it.mask for it, _, _ in chunk],
            q=config.quantile,
            n_random=config.n_random,
            seed=start,
        )
        tables.append(tag_rows(table, [(it.name, index, t) for it, index, t in chunk]))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _sweep(model: MultimodalModel, searches: list[BatchSearch], config) -> pd.DataFrame:
    """The ablation sweep per batch (seeded by the batch's first usable item's position)."""
    total = int(model.cfg.n_layers) * int(model.cfg.d_mlp)
    ks = [k for k in config.ks if k <= total]
    tables, offset = [], 0
    for found in searches:
        if len(found):
            tables.append(
                ablation_step(
                    model, found, ks=ks, n_random=config.n_random, seed=offset, chunk_size=16
                )
            )
        offset += len(found)
    return pd.concat(tables, ignore_index=True)


def _ablation_captions(model: MultimodalModel, searches: list[BatchSearch], config) -> pd.DataFrame:
    """Captions under ablation of the first ``n_ablation_captions`` usable images."""
    tables, offset = [], 0
    for found in searches:
        only = [j for j in range(len(found)) if offset + j < config.n_ablation_captions]
        if only:
            tables.append(
                ablation_captions_step(
                    model,
                    found,
                    k=max(config.ks, default=0),
                    seeds=[offset + j for j in range(len(found))],
                    max_new_tokens=config.max_new_tokens,
                    only=only,
                )
            )
        offset += len(found)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


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
        model: A loaded model (default:
            :func:`~transformer_lens_mm.data.pretrained.load_demo_model`).
        verbose: Progress bars and the printed summary.

    Returns:
        The content of ``summary.json``.
    """
    config = config or DemoConfig()
    out = prepare_output(out, overwrite)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    steps = tqdm(total=7, desc="tlmm demo", disable=not verbose)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        steps.set_postfix_str(name)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        steps.update()
        return result

    if model is None:
        from transformer_lens_mm.data.pretrained import load_demo_model

        model = step("load", lambda: load_demo_model(config.api))
    else:
        steps.update()
    assert model is not None
    items = _load_items(config)
    searches, captions = step("search", lambda: _search(model, items, config))
    _write_csv(out, "captions.csv", captions)
    if not any(len(found) for found in searches):
        raise RuntimeError("no image got a caption with a noun: nothing to attribute")
    units = pd.concat([f.units for f in searches if len(f)], ignore_index=True)
    maps = torch.cat([f.maps for f in searches if f.maps is not None])
    _write_csv(out, "units.csv", units)
    target_ids = {row[0]: t.token_id for f in searches for row, t in zip(f.rows, f.targets)}
    target_ranks = decoding_target_ranks(model, units, target_ids)
    _write_csv(out, "target_ranks.csv", target_ranks)
    soft = step("soft prompts", lambda: soft_prompt_step(model, searches, seed=0))
    _write_csv(out, "soft_prompts.csv", soft)
    lens = step("logit lens", lambda: _lens(model, searches))
    _write_csv(out, "logit_lens.csv", lens)
    by_name = {it.name: it for it in items}
    scenes = [
        (by_name[item], index, target)
        for f in searches
        for item, index, target in f.rows
        if by_name[item].mask is not None
    ]
    spatial = step("spatial", lambda: _spatial(model, scenes, units, config))
    _write_csv(out, "spatial.csv", spatial)
    sweep = step("ablation", lambda: _sweep(model, searches, config))
    _write_csv(out, "ablation.csv", sweep)
    abl_caps = step("ablation captions", lambda: _ablation_captions(model, searches, config))
    _write_csv(out, "ablation_captions.csv", abl_caps)
    steps.close()

    summary = summarise(config, captions, units, target_ranks, soft, lens, spatial, sweep)
    summary["seconds"] = {**timings, "total": round(time.perf_counter() - t_start, 1)}
    summary["model"] = describe_model(model)
    _write_json(out / "summary.json", summary)
    captions_by_item = dict(zip(captions["item"], captions["caption"]))
    write_report(
        out / "report.html",
        model,
        config,
        summary,
        tables={
            "captions": captions,
            "units": units,
            "soft_prompts": soft,
            "logit_lens": lens,
            "spatial": spatial,
            "ablation": sweep,
            "ablation_captions": abl_caps,
        },
        maps=maps,
        image_of=lambda name: by_name[name].image,
        caption_of=lambda name: str(captions_by_item.get(name, "")),
    )
    if verbose:
        print(summary_text(summary))
        print(f"report: {out / 'report.html'}")
    return summary
