"""The paper's analysis end to end on real pretrained weights: ``tlmm demo --out DIR``.

SmolLM2-135M (frozen, text-only) sees through EfficientNet-Lite0 (frozen, ImageNet) and the
shipped projection (:func:`~transformer_lens_mm.data.pretrained.load_demo_model`). On held-out scenes
of :class:`~transformer_lens_mm.data.scenes.SceneSet` (and scikit-image's photos, out of the training
distribution) the demo runs every step of the paper:

1. greedy captions and their first noun ``c``;
2. attribution ``Z * dy_c/dZ`` of every MLP unit at every image position; the top ``k`` per
   image, decoded through the unembedding, with the interpretability filter;
3. soft prompts decoded to their nearest tokens, against norm-matched random vectors;
4. the logit lens of ``c`` at the position that predicts it;
5. spatial selectivity: IoU of each top unit's 0.95-quantile patch region with the object mask,
   against random units of the same layers;
6. the ablation sweep (top-k vs random units of the same layers, for every k) and captions
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.data.scenes import SHAPES, SceneSet
from transformer_lens_mm.pipelines.experiments import units_of
from transformer_lens_mm.report.html.html import Report, UnitCard, unit_map_png
from transformer_lens_mm.report.html.plotting import (
    plot_ablation_curves,
    plot_logit_lens,
    plot_top_units_per_layer,
)
from transformer_lens_mm.tools.ablation import (
    ablation_sweep,
    captions_under_ablation,
    random_units_like,
)
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import (
    soft_prompt_table,
    unit_token_ranks,
    vocab_mask,
)
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.spatial import image_mlp_activations, spatial_selectivity
from transformer_lens_mm.tools.targets import Target, target_inputs, targets_from_captions
from transformer_lens_mm.tools.words import is_interpretable, same_word

__all__ = ["DemoConfig", "OutputExistsError", "prepare_output", "run_demo"]

#: scikit-image's bundled photos captioned as out-of-distribution examples.
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
FILES = (
    "summary.json",
    "report.html",
    "captions.csv",
    "units.csv",
    "target_ranks.csv",
    "soft_prompts.csv",
    "logit_lens.csv",
    "spatial.csv",
    "ablation.csv",
    "ablation_captions.csv",
)


class OutputExistsError(FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs (the defaults take a few minutes on 2 CPU cores)."""

    n_scenes: int = 24  # held-out scenes (seen colour/shape pairs, one object each)
    photos: bool = True  # also caption and analyse scikit-image's photos
    k: int = 100  # top (layer, unit, position) entries per image (the paper: 100)
    ks: tuple[int, ...] = (0, 25, 50, 100, 200, 400, 800, 1600)  # ablation sweep
    n_random: int = 2  # random draws per k (ablation) and per image (IoU)
    n_cards: int = 12  # unit cards in the report
    n_ablation_captions: int = 4  # images re-captioned under ablation
    batch_size: int = 8  # images per forward/backward
    max_new_tokens: int = 8  # caption length limit
    quantile: float = 0.95  # spatial region threshold (the paper: 0.95)
    seed: int = 2  # scene-set seed (2: the training record's held-out seen set)
    api: str | None = None  # "hooked" / "bridge" / None: the installed TL's default

    def __post_init__(self) -> None:
        if self.n_scenes < 1 and not self.photos:
            raise ValueError("nothing to analyse: n_scenes must be >= 1 or photos True")
        if self.k < 1 or self.batch_size < 1 or self.n_random < 1:
            raise ValueError("k, batch_size and n_random must be >= 1")
        if any(k < 0 for k in self.ks):
            raise ValueError(f"ablation ks must be >= 0, got {self.ks}")


def prepare_output(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out``; refuse an existing one unless ``overwrite`` (nothing is ever deleted:
    the demo's own files are replaced, other files are left alone)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already exists: choose a new --out, or pass --overwrite to replace the demo's "
            f"files in it ({', '.join(FILES)}); other files are never touched"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


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


def _mean_ci(values: Sequence[float], ci: float = 0.95) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    half = NormalDist().inv_cdf(0.5 + ci / 2) * arr.std(ddof=1) / np.sqrt(len(arr))
    return float(arr.mean()), float(half if len(arr) > 1 else float("nan"))


@dataclass
class _Item:
    name: str  # "scene-003" or "photo-chelsea"
    image: Any
    truth: str | None = None  # the scene's short caption
    colour: str | None = None
    shape: str | None = None
    mask: np.ndarray | None = None  # object mask (scenes)
    caption: str = ""
    target: Target | None = None
    failure: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


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


def _caption(model: Any, items: list[_Item], config: DemoConfig) -> pd.DataFrame:
    rows = []
    for start in range(0, len(items), config.batch_size):
        chunk = items[start : start + config.batch_size]
        caps = generate_captions(
            model, [it.image for it in chunk], max_new_tokens=config.max_new_tokens
        )
        targets = targets_from_captions(
            model.tokenizer, caps.tokens.tolist(), eos_token_id=model.tokenizer.eos_token_id
        )
        for it, text, tgt in zip(chunk, caps.texts, targets):
            it.caption, it.target = text, tgt
            if tgt is None:
                it.failure = f"no noun in the caption {text!r}"
            words = text.lower().replace(".", " ").split()
            rows.append(
                {
                    "image": it.name,
                    "caption": text,
                    "truth": it.truth,
                    "target": None if tgt is None else tgt.token,
                    "noun": None if tgt is None else tgt.word,
                    "colour_right": None if it.colour is None else it.colour in words,
                    "shape_right": None if it.shape is None else it.shape in words,
                    "failure": it.failure,
                }
            )
    return pd.DataFrame(rows)


def _attribute(
    model: Any, items: list[_Item], config: DemoConfig
) -> tuple[pd.DataFrame, list[list[tuple[int, int]]], list[Any]]:
    """Top-k table, ranked units (for the sweep) and the target inputs, per usable item."""
    tables, ranked, batches = [], [], []
    limit = max(max(config.ks, default=0), config.k)
    for start in range(0, len(items), config.batch_size):
        chunk = items[start : start + config.batch_size]
        targets = [it.target for it in chunk]
        assert all(t is not None for t in targets)
        base = model.prepare_inputs([it.image for it in chunk])
        batch = target_inputs(model, base, targets)  # type: ignore[arg-type]
        attr = attribute(model, batch, [t.token_id for t in targets])  # type: ignore[union-attr]
        table = attr.top_k(config.k, model=model, n_tokens=10)
        table["image"] = [chunk[i].name for i in table["image"]]
        names = {it.name: it for it in chunk}
        table["target"] = [names[n].target.token for n in table["image"]]  # type: ignore[union-attr]
        table["interpretable"] = [is_interpretable(t) for t in table["tokens"]]
        table["decodes_to_target"] = [
            any(same_word(tok, names[n].target.token) for tok in toks)  # type: ignore[union-attr]
            for n, toks in zip(table["image"], table["tokens"])
        ]
        tables.append(table)
        ranked += attr.ranked_units("max", limit=limit)
        batches.append(batch)
    return pd.concat(tables, ignore_index=True), ranked, batches


def _target_ranks(model: Any, items: list[_Item], units: pd.DataFrame, seed: int = 0):
    """Rank of c in the decoding of each image's top units and of random same-layer units."""
    rows = []
    for i, it in enumerate(items):
        top = units_of(units, it.name, column="image")
        for kind, us in (("top", top), ("random", random_units_like(model, top, seed=seed + i))):
            tid = it.target.token_id  # type: ignore[union-attr]
            ranks = unit_token_ranks(model, us, [tid] * len(us)) if us else torch.zeros(0)
            rows += [(it.name, kind, la, u, int(r)) for (la, u), r in zip(us, ranks.tolist())]
    table = pd.DataFrame(rows, columns=["image", "kind", "layer", "unit", "target_rank"])
    n_vocab = int(vocab_mask(model).sum())
    table["target_percentile"] = 100.0 * (1 - table["target_rank"] / n_vocab)
    return table


def _soft_prompts(
    model: Any, items: list[_Item], batches: list[Any]
) -> tuple[pd.DataFrame, dict[str, float]]:
    embeds = torch.cat([model.embed_images(b).detach().cpu() for b in batches])
    both = soft_prompt_table(model, embeds, k=5, seed=0)
    both["image"] = [items[i].name for i in both["image"]]
    targets = {it.name: it.target.token for it in items}  # type: ignore[union-attr]
    both["is_target"] = [same_word(t, targets[n]) for t, n in zip(both["token"], both["image"])]
    stats = {}
    for kind, group in both.groupby("kind"):
        top1 = group[group["rank"] == 0]["cosine"]
        hit = group.groupby("image")["is_target"].any()
        stats[f"{kind}_top1_cosine"] = float(top1.mean())
        stats[f"{kind}_images_with_target_nearby"] = float(hit.mean())
    return both, stats


def _lens(model: Any, items: list[_Item], batches: list[Any]) -> pd.DataFrame:
    tables = []
    offset = 0
    for batch in batches:
        n = len(batch)
        chunk = items[offset : offset + n]
        table = logit_lens(
            model,
            batch,
            k=3,
            incl_mid=False,
            target_ids=[it.target.token_id for it in chunk],  # type: ignore[union-attr]
        )
        table["image"] = [chunk[i].name for i in table["image"]]
        tables.append(table)
        offset += n
    return pd.concat(tables, ignore_index=True)


def _spatial(model: Any, scenes: list[_Item], units: pd.DataFrame, config: DemoConfig):
    tables = []
    for start in range(0, len(scenes), config.batch_size):
        chunk = scenes[start : start + config.batch_size]
        batch = model.prepare_inputs([it.image for it in chunk])
        table = spatial_selectivity(
            model,
            batch,
            [units_of(units, it.name, column="image") for it in chunk],
            [it.mask for it in chunk],
            q=config.quantile,
            n_random=config.n_random,
            seed=start,
        )
        table["image"] = [chunk[i].name for i in table["image"]]
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _sweep(model, items, ranked, batches, config: DemoConfig) -> pd.DataFrame:
    tables = []
    offset = 0
    for batch in batches:
        n = len(batch)
        chunk = items[offset : offset + n]
        ks = [k for k in config.ks if k <= min(len(r) for r in ranked[offset : offset + n])]
        table = ablation_sweep(
            model,
            batch,
            [it.target.token_id for it in chunk],  # type: ignore[union-attr]
            ranked[offset : offset + n],
            ks=ks,
            n_random=config.n_random,
            seed=offset,
            chunk_size=16,
        )
        table["image"] = [chunk[i].name for i in table["image"]]
        tables.append(table)
        offset += n
    return pd.concat(tables, ignore_index=True)


def _ablation_captions(model, items, ranked, config: DemoConfig) -> pd.DataFrame:
    k = max(config.ks, default=0)
    rows = []
    for i, it in enumerate(items[: config.n_ablation_captions]):
        top = ranked[i][:k]
        rnd = random_units_like(model, top, seed=i)
        for kind, units in (("none", []), ("top", top), ("random", rnd)):
            caps = captions_under_ablation(
                model, [it.image], units, max_new_tokens=config.max_new_tokens
            )
            rows.append(
                {"image": it.name, "ablated": kind, "k": len(units), "caption": caps.texts[0]}
            )
    return pd.DataFrame(rows)


def _cards(model, items: list[_Item], units: pd.DataFrame, config: DemoConfig) -> list[UnitCard]:
    if not len(units) or config.n_cards < 1:
        return []
    per_unit = (
        units.groupby(["layer", "unit"])
        .agg(
            images=("image", "nunique"),
            score=("score", "sum"),
            interpretable=("interpretable", "first"),
            target_hits=("decodes_to_target", "sum"),
        )
        .reset_index()
        .sort_values(["target_hits", "images", "score"], ascending=False)
    )
    chosen = per_unit.head(config.n_cards)
    by_name = {it.name: it for it in items}
    grid = tuple(model.image_encoder.grid_size)
    shown: dict[tuple[int, int], list[str]] = {}  # card -> its 3 best images
    for row in chosen.itertuples():
        rows = units[(units.layer == row.layer) & (units.unit == row.unit)]
        best = rows.sort_values("score", ascending=False)["image"].drop_duplicates().head(3)
        shown[(int(row.layer), int(row.unit))] = list(best)
    # one forward over every shown image, for every card's layer
    names = sorted({n for best in shown.values() for n in best})
    layers = sorted({layer for layer, _ in shown})
    acts = image_mlp_activations(
        model, model.prepare_inputs([by_name[n].image for n in names]), layers
    )
    cards = []
    for row in chosen.itertuples():
        layer, unit = int(row.layer), int(row.unit)
        rows = units[(units.layer == layer) & (units.unit == unit)]
        maps = [
            (
                unit_map_png(
                    by_name[n].image,
                    acts[names.index(n), layers.index(layer), :, unit],
                    grid,
                    quantile=config.quantile,
                ),
                f"{n}: {by_name[n].caption}",
            )
            for n in shown[(layer, unit)]
        ]
        tokens = rows.iloc[0]["tokens"]
        targets = sorted({by_name[n].target.token for n in rows["image"]})  # type: ignore[union-attr]
        cards.append(
            UnitCard(
                layer,
                unit,
                list(tokens),
                maps,
                facts={
                    "top-k of": f"{int(row.images)} images (targets: {', '.join(targets)})",
                    "interpretable": str(bool(row.interpretable)),
                    "summed attribution": f"{row.score:.3g}",
                },
                highlight=[t.strip() for t in targets] + list(SHAPES),
            )
        )
    return cards


def _lens_figure(lens: pd.DataFrame) -> go.Figure:
    first = lens[lens["rank"] == 0]
    per_layer = first.groupby("layer")[["target_prob", "target_rank"]].median().reset_index()
    fig = go.Figure(
        go.Scatter(x=per_layer["layer"], y=per_layer["target_prob"], mode="lines+markers")
    )
    fig.update_layout(
        title="Logit lens: median p(c) at the position that predicts c, by layer",
        xaxis_title="residual stream before layer (n_layers: final)",
        yaxis_title="median p(c)",
    )
    return fig


def _iou_figure(spatial: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for kind, colour in (("top", "crimson"), ("random", "grey")):
        values = spatial[spatial.kind == kind]["iou"]
        fig.add_trace(go.Histogram(x=values, name=kind, marker_color=colour, opacity=0.6))
    fig.update_layout(
        barmode="overlay",
        title="IoU of each unit's 0.95-quantile region with the object mask",
        xaxis_title="IoU",
        yaxis_title="units",
    )
    return fig


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    overwrite: bool = False,
    model: Any = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the whole analysis, write results and the report into ``out``; return the summary.

    Args:
        out: Output folder; must not exist unless ``overwrite``.
        config: What to run (:class:`DemoConfig`).
        overwrite: Replace the demo's files in an existing folder (nothing else is touched).
        model: A loaded model (default: :func:`~transformer_lens_mm.data.pretrained.load_demo_model`).
        verbose: Progress bars and the printed summary.

    Returns:
        The content of ``summary.json``.
    """
    config = config or DemoConfig()
    out = prepare_output(out, overwrite)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    steps = tqdm(total=8, desc="tlmm demo", disable=not verbose)

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
    items = _load_items(config)
    captions = step("captions", lambda: _caption(model, items, config))
    _write_csv(out, "captions.csv", captions)
    usable = [it for it in items if it.target is not None]
    if not usable:
        raise RuntimeError("no image got a caption with a noun: nothing to attribute")
    scenes = [it for it in usable if it.mask is not None]

    units, ranked, batches = step("attribution", lambda: _attribute(model, usable, config))
    _write_csv(out, "units.csv", units)
    target_ranks = _target_ranks(model, usable, units)
    _write_csv(out, "target_ranks.csv", target_ranks)
    soft, soft_stats = step("soft prompts", lambda: _soft_prompts(model, usable, batches))
    _write_csv(out, "soft_prompts.csv", soft)
    lens = step("logit lens", lambda: _lens(model, usable, batches))
    _write_csv(out, "logit_lens.csv", lens)
    spatial = step(
        "spatial",
        lambda: _spatial(model, scenes, units, config) if scenes else pd.DataFrame(),
    )
    _write_csv(out, "spatial.csv", spatial)
    sweep = step("ablation", lambda: _sweep(model, usable, ranked, batches, config))
    _write_csv(out, "ablation.csv", sweep)
    abl_caps = step("ablation captions", lambda: _ablation_captions(model, usable, ranked, config))
    _write_csv(out, "ablation_captions.csv", abl_caps)
    cards = _cards(model, usable, units, config)
    steps.close()

    summary = _summary(config, items, captions, units, soft_stats, lens, spatial, sweep)
    summary["target_in_decoding"] = {
        str(kind): {
            "median_percentile_of_c": round(float(g["target_percentile"].median()), 2),
            "share_with_c_in_top_1_percent": round(float((g["target_percentile"] >= 99).mean()), 4),
            "n_units": len(g),
        }
        for kind, g in target_ranks.groupby("kind")
    }
    summary["seconds"] = {**timings, "total": round(time.perf_counter() - t_start, 1)}
    summary["model"] = {
        "api": type(model).__name__,
        "n_layers": int(model.cfg.n_layers),
        "d_mlp": int(model.cfg.d_mlp),
        "n_image_tokens": int(model.image_encoder.n_tokens),
        "prompt": model.prompt,
    }
    _write_json(out / "summary.json", summary)
    _report(
        out, model, config, summary, captions, units, soft, lens, spatial, sweep, abl_caps, cards
    )
    if verbose:
        print(summary_text(summary))
        print(f"report: {out / 'report.html'}")
    return summary


def _summary(config, items, captions, units, soft_stats, lens, spatial, sweep) -> dict[str, Any]:
    scenes = captions[captions.truth.notna()]
    per_image_hit = units[units["rank"] < config.k].groupby("image")["decodes_to_target"].any()
    scene_names = set(scenes["image"])
    scene_hits = per_image_hit[per_image_hit.index.isin(scene_names)]
    ablation: dict[str, dict[str, float]] = {}
    for kind, group in sweep.groupby("kind"):
        per_k = group.groupby(["k", "image"])["rel_p"].mean().groupby("k").mean()
        ablation[str(kind)] = {str(int(k)): round(float(v), 4) for k, v in per_k.items()}
    iou = {}
    if len(spatial):
        for kind, group in spatial.groupby("kind"):
            per_image = group.groupby("image")["iou"].mean()
            mean, half = _mean_ci(per_image.tolist())
            iou[str(kind)] = {
                "mean": round(mean, 4),
                "ci95": round(half, 4),
                "n_images": len(per_image),
            }
    final = lens[(lens["rank"] == 0) & (lens["layer"] == lens["layer"].max())]
    first_top1 = (
        lens[(lens["rank"] == 0) & (lens["target_rank"] == 0)].groupby("image")["layer"].min()
    )
    return {
        "n_images": len(items),
        "n_scenes": len(scenes),
        "failures": {r.image: r.failure for r in captions.itertuples() if r.failure},
        "captions": {
            "scenes_colour_and_shape_right": float(
                (scenes.colour_right.astype(bool) & scenes.shape_right.astype(bool)).mean()
            )
            if len(scenes)
            else None,
            "scenes_shape_right": float(scenes.shape_right.astype(bool).mean())
            if len(scenes)
            else None,
            "scenes_target_is_the_shape": float(
                (scenes.noun.fillna("") == scenes.truth.str.split().str[-1]).mean()
            )
            if len(scenes)
            else None,
        },
        "top_units": {
            "k": config.k,
            "interpretable_share": round(float(units["interpretable"].mean()), 4),
            "share_of_units_decoding_to_target": round(float(units["decodes_to_target"].mean()), 4),
            "scenes_with_a_top_unit_decoding_to_target": round(float(scene_hits.mean()), 4)
            if len(scene_hits)
            else None,
            "images_with_a_top_unit_decoding_to_target": round(float(per_image_hit.mean()), 4),
            "layer_histogram": {
                str(k): int(v) for k, v in units["layer"].value_counts().sort_index().items()
            },
        },
        "soft_prompts": {k: round(v, 4) for k, v in soft_stats.items()},
        "logit_lens": {
            "median_final_p_c": round(float(final["target_prob"].median()), 4),
            "median_first_layer_c_is_top1": float(first_top1.median()) if len(first_top1) else None,
        },
        "spatial_iou": iou,
        "ablation_rel_p": ablation,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    }


def summary_text(summary: dict[str, Any]) -> str:
    """The short printed summary of a demo run."""
    cap = summary["captions"]
    top = summary["top_units"]
    soft = summary["soft_prompts"]
    lines = [f"images: {summary['n_images']} ({summary['n_scenes']} scenes)"]
    if cap["scenes_colour_and_shape_right"] is not None:
        lines.append(
            f"captions: colour+shape right {cap['scenes_colour_and_shape_right']:.0%}, "
            f"shape right {cap['scenes_shape_right']:.0%}"
        )
    lines.append(
        f"top-{top['k']} units: {top['interpretable_share']:.0%} interpretable; "
        f"scenes with a top unit decoding to c: {top['scenes_with_a_top_unit_decoding_to_target']}"
    )
    ranks = summary.get("target_in_decoding", {})
    if "top" in ranks and "random" in ranks:
        lines.append(
            "c in the unit's decoding (median percentile over the vocabulary): top units "
            f"{ranks['top']['median_percentile_of_c']:.1f} vs random "
            f"{ranks['random']['median_percentile_of_c']:.1f}"
        )
    real = soft.get("image_images_with_target_nearby", 0.0)
    rand = soft.get("random_images_with_target_nearby", 0.0)
    lines.append(
        f"soft prompts: images with c among nearest tokens {real:.0%} vs random {rand:.0%}"
    )
    iou = summary["spatial_iou"]
    if iou:
        lines.append(
            f"spatial IoU: top {iou['top']['mean']:.3f} +- {iou['top']['ci95']:.3f} vs random "
            f"{iou['random']['mean']:.3f} +- {iou['random']['ci95']:.3f}"
        )
    abl = summary["ablation_rel_p"]
    if "top" in abl:
        ks = [k for k in abl["top"] if k != "0"]
        lines.append(
            "p(c) kept after ablating k units (top / random): "
            + ", ".join(
                f"k={k}: {abl['top'][k]:.2f}/{abl['random'].get(k, float('nan')):.2f}" for k in ks
            )
        )
    lines.append(f"time: {summary['seconds']['total']:.0f} s")
    return "\n".join(lines)


def _report(
    out, model, config, summary, captions, units, soft, lens, spatial, sweep, abl_caps, cards
):
    report = Report("Multimodal neurons in SmolLM2-135M (tlmm demo)")
    report.text(
        "A frozen text-only LM (SmolLM2-135M-Instruct) given sight by a frozen ImageNet encoder "
        "(EfficientNet-Lite0, 7x7 = 49 patch tokens) and one trained linear projection. The "
        "analysis follows Schwettmann et al. (2023), 'Multimodal Neurons in Pretrained Text-Only "
        "Transformers'. Scenes are held out from the projection's training; the photos are out of "
        "its training distribution (it only ever saw coloured shapes)."
    )
    report.key_values({"summary": summary_text(summary).replace("\n", " | ")})
    report.section("Captions", "Greedy captions; c is the first token of the first noun.")
    report.table(captions, max_rows=60)
    report.section(
        "Top units",
        f"Each image's top {config.k} (layer, unit, position) entries by Z * d logit_c / dZ, "
        "decoded through the unembedding (W_U W_out, top 10 tokens). Interpretable: >= 7 of 10 "
        "tokens are dictionary words.",
    )
    report.key_values(summary["top_units"] | {"layer_histogram": "see figure"})
    report.figure(plot_top_units_per_layer(units, n_layers=int(model.cfg.n_layers)))
    shown = units.copy()
    shown["tokens"] = [" ".join(repr(t) for t in toks) for toks in shown["tokens"]]
    report.table(shown.sort_values(["image", "rank"]).groupby("image").head(5), max_rows=60)
    report.text(
        "Where c ranks in each unit's decoding (percentile over the vocabulary; 100 = c is the "
        "unit's first token), for each image's top units and for as many random units of the "
        "same layers:"
    )
    report.key_values({k: str(v) for k, v in summary.get("target_in_decoding", {}).items()})
    report.section("Unit cards", "Units most often in the top-k (those decoding to c first).")
    report.cards(cards)
    report.section(
        "Soft prompts",
        "Nearest vocabulary tokens (cosine with W_E) of the 49 image tokens, against random "
        "vectors with the same norms.",
    )
    report.key_values(summary["soft_prompts"])
    report.table(soft[(soft.kind == "image") & (soft["rank"] == 0)], max_rows=20)
    report.section("Logit lens", "p(c) read from the residual stream with the final norm + W_U.")
    report.figure(_lens_figure(lens))
    report.figure(plot_logit_lens(lens[lens.image == lens.image.iloc[0]].assign(image=0)))
    report.section(
        "Spatial selectivity",
        f"IoU of each top unit's {config.quantile}-quantile patch region (upsampled) with the "
        "object mask, against the same number of random units from the same layers.",
    )
    if len(spatial):
        report.key_values({k: str(v) for k, v in summary["spatial_iou"].items()})
        report.figure(_iou_figure(spatial))
    report.section(
        "Ablation",
        "p(c) relative to the unablated run when each image's top-k units (ranked by their best "
        "position) are zeroed at all image positions, against k random units of the same layers.",
    )
    report.figure(plot_ablation_curves(sweep))
    report.key_values({k: str(v) for k, v in summary["ablation_rel_p"].items()})
    report.section("Captions under ablation")
    report.table(abl_caps)
    report.section("Run")
    report.key_values(
        {"seconds": json.dumps(summary["seconds"]), "model": json.dumps(summary["model"])}
    )
    report.write(out / "report.html")
