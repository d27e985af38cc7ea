"""How often the paper's tests find multimodal neurons that are known to be there.

A null result needs a measured power. :func:`power_check` plants units that behave like the
paper's multimodal neurons into a real LM with sight (:mod:`~transformer_lens_mm.tools.planting`:
each reads a concept's direction in the image tokens of a middle layer and writes ``c``'s
unembedding direction, at the activations and output norms of the layer's real units; for each
concept one with ``sign=+1`` and one with ``sign=-1``, the same unit with its up and output rows
negated), runs the unchanged pipeline on held-out scenes with and without them, and counts how
often each test recovers a planted unit:

* ``in_top_k``: the unit is among the image's top-``k`` entries (``Z * dy_c/dZ``);
* ``decodes_to_c``: ... and that entry is interpretable and its decoding holds ``c`` (the
  demo's first target);
* ``iou_above_random``: ... and its patch region's IoU with the object's mask beats the mean IoU
  of the image's random same-layer units (the paper's Figure 5 reading, per image);
* ``category_selective``: the unit is among its concept's 20 most frequent interpretable units
  and its mean activation is highest on held-out images of that concept (supplement S.4);
* ``ablation_3x``: zeroing it drops ``p(c)`` on its concept's images at least 3x more than
  ``p(c')`` on other concepts' images (the demo's third target).

The image-level tests count, per planted unit, the evaluation images of its concept whose
caption's first noun is the concept; the unit-level tests count planted units. The same tests
on the same unit slots of the unplanted model give the false-positive rates, and the share of
images where *any* unit passes gives the base rate the demo reports.

Example:
    >>> result = power_check(load_demo_model(lm="smollm2"))  # doctest: +SKIP
    >>> result.recovery  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.atomic import atomic_csv, atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.paper import CATEGORY_UNITS, TOP_K
from transformer_lens_mm.data.datasets import Item, SceneDataset
from transformer_lens_mm.data.natural_scenes import NOUNS, NaturalSceneSet
from transformer_lens_mm.errors import ConfigError
from transformer_lens_mm.pipelines.experiments import (
    category_selectivity,
    spatial_iou_by_category,
)
from transformer_lens_mm.pipelines.search import BatchSearch, SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import unit_effect_step
from transformer_lens_mm.tools.attribution import frozen_parameters, last_position_metric
from transformer_lens_mm.tools.decoding import unit_token_ranks
from transformer_lens_mm.tools.planting import (
    Plant,
    design_plant,
    image_mlp_inputs,
    patch_coverage,
    planted,
)
from transformer_lens_mm.tools.targets import token_id_of

__all__ = ["QUICK_POWER", "PowerConfig", "PowerResult", "power_check"]

TESTS = ("in_top_k", "decodes_to_c", "iou_above_random", "category_selective", "ablation_3x")


@dataclass(frozen=True, kw_only=True)
class PowerConfig:
    """What :func:`power_check` plants and where it looks for it (defaults: ~5 minutes for
    SmolLM2-135M on 2 CPU cores)."""

    concepts: tuple[str, ...] = ("car", "boat", "house", "tree")  # nouns with planted units
    depths: tuple[float, float] = (0.35, 0.5)  # layers (share of depth) of the +1 / -1 units
    n_calibration: int = 12  # one-object scenes per concept to find its direction (not scored)
    n_calibration_other: int = 24  # scenes of the other nouns for the same
    n_per_concept: int = 6  # evaluation scenes per planted concept
    n_other: int = 12  # evaluation scenes of other nouns
    n_selectivity: int = 2  # held-out one-object scenes per noun (category selectivity)
    k: int = TOP_K  # top entries per image (the paper: 100)
    # the planted runs: (what the units write, |Z| where they fire in units of the median |Z| of
    # the top-k entries the pipeline picks on the calibration scenes). "unembedding": c's
    # unembedding direction (the paper's reading of a multimodal neuron); "unembedding+carried":
    # plus, in equal part, the direction later layers carry from the object's patches to c
    plants: tuple[tuple[str, float], ...] = (
        ("unembedding", 4.0),
        ("unembedding+carried", 1.0),
        ("unembedding+carried", 4.0),
    )
    n_random: int = 2  # random same-layer units per image (IoU; the ablation uses one)
    max_new_tokens: int = 8  # caption length
    batch_size: int = 8
    seed: int = 0  # which unit slots are replaced
    sign: str = "auto"  # the readout under test ("weights": the sign-blind one, for comparison)

    def __post_init__(self) -> None:
        unknown = [c for c in self.concepts if c not in NOUNS]
        if unknown or not self.concepts:
            raise ConfigError(f"concepts must be nouns of {sorted(NOUNS)}, got {unknown or '()'}")
        if len(self.depths) != 2 or not all(0 < d < 1 for d in self.depths):
            raise ConfigError(
                f"depths must be two shares of the depth in (0, 1), got {self.depths}"
            )
        writes = ("unembedding", "unembedding+carried")
        if not self.plants or any(w not in writes or x <= 0 for w, x in self.plants):
            raise ConfigError(
                f"plants must be (write, strength) pairs with write in {writes} and a positive "
                f"strength, got {self.plants}"
            )
        if min(self.n_calibration, self.n_per_concept, self.n_selectivity) < 1:
            raise ConfigError("n_calibration, n_per_concept and n_selectivity must be >= 1")


#: ``tlmm power --quick``: two concepts, few scenes, one planted run (a smoke test).
QUICK_POWER = {
    "concepts": ("car", "boat"),
    "n_calibration": 6,
    "n_calibration_other": 8,
    "n_per_concept": 3,
    "n_other": 4,
    "n_selectivity": 1,
    "n_random": 1,
    "plants": (("unembedding+carried", 4.0),),
}


@dataclass
class PowerResult:
    """The tables of a power check."""

    plants: pd.DataFrame  # one row per planted unit
    recovery: pd.DataFrame  # per test and sign: planted rate, unplanted rate, counts
    per_unit: pd.DataFrame  # per (run, planted unit): the unit-level tests, image-level shares
    per_image: pd.DataFrame  # per (run, planted unit, evaluation image): the tests' outcomes
    base_rates: pd.DataFrame  # per run: images where any unit passes (the demo's measure)
    ablation: pd.DataFrame  # per (run, planted unit, image): rel p(c) with the unit zeroed
    selectivity: pd.DataFrame = field(default_factory=pd.DataFrame)  # category_selectivity, per run
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-able dict."""
        return {
            "config": self.config,
            "plants": self.plants.drop(columns=["token"], errors="ignore").to_dict("records"),
            "recovery": self.recovery.to_dict("records"),
            "base_rates": self.base_rates.to_dict("records"),
        }

    def write(self, out: str | Path) -> Path:
        """Write every table (CSV) and ``summary.json`` into ``out``, each file atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        names = ("plants", "recovery", "per_unit", "per_image", "base_rates", "ablation")
        for name in (*names, "selectivity"):
            table = getattr(self, name)
            atomic_csv(out / f"{name}.csv", table)
        text = json.dumps(self.summary(), indent=1, default=float)
        atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
        return out


def _held_out() -> list:
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    return colour_pairs + noun_pairs


def _scenes(n: int, seed: int, nouns: Sequence[str], prefix: str) -> list[Item]:
    data = SceneDataset(
        NaturalSceneSet(n, seed=seed, nouns=list(nouns), max_objects=1, exclude=_held_out())
    )
    return [dataclasses.replace(data[i], id=f"{prefix}-{i:03d}") for i in range(len(data))]


def _batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _grid(model: MultimodalModel, batch: Any) -> tuple[int, int]:
    if batch.grid_size is not None:
        return tuple(batch.grid_size)
    return tuple(model.image_encoder.grid_size)


@dataclass
class _Calibration:
    inputs: dict[int, torch.Tensor]  # layer -> MLP inputs [n_images, n_img, d_model]
    nouns: list[str]  # each calibration image's noun
    coverage: torch.Tensor  # [n_images, n_img] share of each patch its object covers
    z_ref: float  # median |Z| of the top-k entries the search finds on these images
    # (concept, layer) -> mean d y_c / d (the layer's output) at the concept's object patches
    carried: dict[tuple[str, int], torch.Tensor]


def _output_gradients(
    model: MultimodalModel, found: BatchSearch, layers: list[int]
) -> dict[int, torch.Tensor]:
    """``d y_c / d resid_post`` of each layer at the image positions of the search's inputs
    (one backward; fp32, CPU): what raises ``c`` when written there."""
    batch = found.inputs.to(model.lm_device)
    kept: dict[int, torch.Tensor] = {}

    def leaf(x: torch.Tensor, hook: Any) -> torch.Tensor:
        return x.detach().requires_grad_(True)

    def keep(layer: int):
        def hook(x: torch.Tensor, hook: Any) -> None:
            x.retain_grad()
            kept[layer] = x

        return hook

    hooks = [(hook_names.EMBED, leaf)]
    hooks += [(hook_names.resid_post(layer), keep(layer)) for layer in layers]
    targets = torch.tensor([t.token_id for t in found.targets])
    with torch.enable_grad(), frozen_parameters(model):
        last_position_metric(model, batch, targets, "logit", hooks).sum().backward()
    rows = torch.arange(len(batch), device=batch.image_positions.device)[:, None]
    return {layer: x.grad[rows, batch.image_positions].float().cpu() for layer, x in kept.items()}


def _calibrate(
    model: MultimodalModel, config: PowerConfig, layers: list[int], verbose: bool
) -> _Calibration:
    """MLP inputs at the plant layers on calibration scenes (never evaluated), and how strongly
    the units the pipeline does pick are active (the search on the same scenes)."""
    others = [n for n in NOUNS if n not in config.concepts]
    calib = [
        it
        for j, c in enumerate(config.concepts)
        for it in _scenes(config.n_calibration, 1000 + j, [c], f"cal-{c}")
    ]
    calib += _scenes(config.n_calibration_other, 1999, others, "cal-other")
    xs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    cover, nouns, top_z = [], [], []
    grads: dict[tuple[str, int], list[torch.Tensor]] = {}
    settings = SearchSettings(k=config.k, max_new_tokens=config.max_new_tokens, maps=False)
    for chunk in tqdm(_batches(calib, config.batch_size), desc="calibrating", disable=not verbose):
        batch = model.prepare_inputs([it.image() for it in chunk])
        for layer, x in image_mlp_inputs(model, batch, layers).items():
            xs[layer].append(x)
        masks = [it.masks()[it.categories[0]] for it in chunk]
        cover.append(patch_coverage(masks, _grid(model, batch)))
        nouns += [it.categories[0] for it in chunk]
        found = search_batch(
            model,
            indices=range(len(chunk)),
            ids=[it.id for it in chunk],
            images=[it.image() for it in chunk],
            settings=settings,
        )
        if not len(found):
            continue
        top_z.append(torch.tensor(found.units["activation"].abs().to_numpy()))
        by_id = {it.id: j for j, it in enumerate(chunk)}
        for layer, grad in _output_gradients(model, found, layers).items():
            for r, (item, _, _) in enumerate(found.rows):
                j = by_id[item]
                noun = chunk[j].categories[0]
                if noun not in config.concepts or found.targets[r].token_id != token_id_of(
                    model.tokenizer, noun
                ):
                    continue  # only images whose caption names the concept
                on = cover[-1][j] >= 0.5
                if on.any():
                    grads.setdefault((noun, layer), []).append(grad[r][on].mean(0))
    z_ref = float(torch.cat(top_z).median()) if top_z else 1.0
    carried = {key: torch.stack(v).mean(0) for key, v in grads.items()}
    return _Calibration(
        {layer: torch.cat(v) for layer, v in xs.items()}, nouns, torch.cat(cover), z_ref, carried
    )


def _design(
    model: MultimodalModel,
    config: PowerConfig,
    layers: list[int],
    calibration: _Calibration,
    write: str,
    strength: float,
) -> list[Plant]:
    """One +1 and one -1 unit per concept, at ``strength`` x the picked units' median |Z|,
    writing ``c``'s unembedding direction (``"unembedding"``) or that plus the direction later
    layers carry to ``c``'s prediction (``"unembedding+carried"``)."""
    rng = np.random.default_rng(config.seed)
    d_mlp = int(model.cfg.d_mlp)
    slots = {layer: iter(rng.permutation(d_mlp).tolist()) for layer in layers}
    plants = []
    for c in config.concepts:
        is_c = torch.tensor([n == c for n in calibration.nouns])
        on_object = is_c[:, None] & (calibration.coverage >= 0.5)  # [n_images, n_img]
        token = token_id_of(model.tokenizer, c)
        for layer, sign in zip(layers, (1, -1)):
            x = calibration.inputs[layer]
            plants.append(
                design_plant(
                    model,
                    layer,
                    next(slots[layer]),
                    x[on_object],
                    x[~on_object],
                    token_id=token,
                    concept=c,
                    sign=sign,
                    z_target=strength * calibration.z_ref,
                    carried=calibration.carried.get((c, layer)) if write != "unembedding" else None,
                )
            )
    return plants


def _evaluate(
    model: MultimodalModel,
    config: PowerConfig,
    plants: list[Plant],
    evaluation: list[Item],
    selectivity_items: list[Item],
    truth: dict[str, str],
    run: str,
    verbose: bool,
) -> tuple[pd.DataFrame, ...]:
    """The unchanged pipeline on the evaluation scenes; the tests' outcomes per plant."""
    settings = SearchSettings(
        k=config.k, max_new_tokens=config.max_new_tokens, maps=False, sign=config.sign
    )
    searches: list[BatchSearch] = []
    for b, chunk in enumerate(
        tqdm(_batches(evaluation, config.batch_size), desc=f"{run}: search", disable=not verbose)
    ):
        searches.append(
            search_batch(
                model,
                indices=range(b * config.batch_size, b * config.batch_size + len(chunk)),
                ids=[it.id for it in chunk],
                images=[it.image() for it in chunk],
                settings=settings,
            )
        )
    items = pd.concat([s.items for s in searches], ignore_index=True)
    units = pd.concat([s.units for s in searches if len(s)], ignore_index=True)
    if verbose:
        print(f"{run}: spatial selectivity and category selectivity")
    spatial = spatial_iou_by_category(
        model, evaluation, items, units, n_random=config.n_random, batch_size=config.batch_size
    )
    selectivity = category_selectivity(
        model,
        units,
        items,
        selectivity_items,
        n_units=CATEGORY_UNITS,
        batch_size=config.batch_size,
    )
    # each planted slot zeroed alone on every evaluation image, against a random same-layer
    # unit (the pipeline's single-unit step)
    slots = [(p.layer, p.unit) for p in plants]
    concept_of = {(p.layer, p.unit): p.concept for p in plants}
    ablations = []
    for b, found in enumerate(
        tqdm(searches, desc=f"{run}: ablation", disable=not verbose or not searches)
    ):
        if not len(found):
            continue
        effects = unit_effect_step(
            model, found, {item: slots for item, _, _ in found.rows}, seed=1000 * b
        )
        wide = effects.pivot_table(
            index=["item", "layer", "unit"], columns="kind", values="rel_p", aggfunc="mean"
        ).reset_index()
        for r in wide.itertuples():
            ablations.append(
                {
                    "run": run,
                    "layer": int(r.layer),
                    "unit": int(r.unit),
                    "plant_concept": concept_of[(int(r.layer), int(r.unit))],
                    "item": r.item,
                    "image_concept": truth[r.item],
                    "rel_p": float(r.top),
                    "rel_p_random": float(r.random),
                }
            )
    ablation = pd.DataFrame(ablations)
    # the tests, per (plant, evaluation image of its concept)
    target_of = dict(zip(items["item"], items["target_id"]))
    rows = []
    for p in plants:
        slot = (units["layer"] == p.layer) & (units["unit"] == p.unit)
        for it in evaluation:
            if truth[it.id] != p.concept:
                continue
            eligible = target_of.get(it.id) == p.token_id
            mine = units[slot & (units["item"] == it.id)]
            iou = spatial[spatial["item"] == it.id] if len(spatial) else spatial
            top_iou = iou[(iou["kind"] == "top") & (iou["layer"] == p.layer)]
            top_iou = top_iou[top_iou["unit"] == p.unit]["iou"]
            random_iou = iou[iou["kind"] == "random"]["iou"].mean() if len(iou) else np.nan
            rows.append(
                {
                    "run": run,
                    "layer": p.layer,
                    "unit": p.unit,
                    "sign": p.sign,
                    "concept": p.concept,
                    "item": it.id,
                    "c_is_concept": bool(eligible),
                    "in_top_k": bool(len(mine)),
                    "decodes_to_c": bool((mine["decodes_to_target"] & mine["interpretable"]).any()),
                    "iou": float(top_iou.max()) if len(top_iou) else np.nan,
                    "random_iou": float(random_iou),
                    "iou_above_random": bool(len(top_iou) and top_iou.max() > random_iou),
                }
            )
    per_image = pd.DataFrame(rows)
    # the unit-level tests
    unit_rows = []
    for p in plants:
        sel = selectivity[
            (selectivity["unit_class"] == p.concept)
            & (selectivity["layer"] == p.layer)
            & (selectivity["unit"] == p.unit)
        ]
        chosen = bool(len(sel))
        peaks = chosen and str(sel.loc[sel["mean_activation"].idxmax(), "image_class"]) == p.concept
        mine = ablation[(ablation["layer"] == p.layer) & (ablation["unit"] == p.unit)]
        same = mine[mine["image_concept"] == p.concept]
        cross = mine[mine["image_concept"] != p.concept]
        same_drop = float((1 - same["rel_p"]).mean()) if len(same) else np.nan
        cross_drop = float((1 - cross["rel_p"]).mean()) if len(cross) else np.nan
        # the noise of zeroing one unit: a random same-layer unit on the same images
        noise = float((1 - mine["rel_p_random"]).abs().mean()) if len(mine) else np.nan
        ratio = same_drop / max(cross_drop, noise, 1e-12)
        unit_rows.append(
            {
                "run": run,
                "layer": p.layer,
                "unit": p.unit,
                "sign": p.sign,
                "concept": p.concept,
                "chosen_for_selectivity": chosen,
                "category_selective": bool(peaks),
                "same_drop": same_drop,
                "cross_drop": cross_drop,
                "random_unit_drop": noise,
                "ablation_ratio": ratio,
                "ablation_3x": bool(same_drop > noise and ratio >= 3),
            }
        )
    # base rates: images where any top unit is interpretable and decodes to c
    hit = (units["decodes_to_target"] & units["interpretable"]).groupby(units["item"]).any()
    planted_concepts = {p.concept for p in plants}
    base = [
        {
            "run": run,
            "images": group,
            "n_images": len(ids),
            "share_with_an_interpretable_unit_decoding_to_c": float(
                np.mean([bool(hit.get(i, False)) for i in ids]) if ids else np.nan
            ),
        }
        for group, ids in (
            ("planted concepts", [i.id for i in evaluation if truth[i.id] in planted_concepts]),
            ("other concepts", [i.id for i in evaluation if truth[i.id] not in planted_concepts]),
        )
    ]
    return (
        per_image,
        pd.DataFrame(unit_rows),
        ablation,
        pd.DataFrame(base),
        selectivity.assign(run=run),
    )


def _recovery(per_image: pd.DataFrame, per_unit: pd.DataFrame) -> pd.DataFrame:
    """Per test and sign: the share of planted units (or of their images) the test recovers,
    per run (the unplanted run: the same slots with their own weights)."""
    rows = []
    runs = list(dict.fromkeys(per_unit["run"]))
    for sign in (1, -1, None):
        img = per_image if sign is None else per_image[per_image["sign"] == sign]
        img = img[img["c_is_concept"]]
        unit = per_unit if sign is None else per_unit[per_unit["sign"] == sign]
        for test in TESTS:
            table, n_of = (img, "images") if test in per_image else (unit, "units")
            rates = table.groupby("run")[test].mean()
            counts = table.groupby("run")[test].size()
            row = {"test": test, "sign": "both" if sign is None else f"{sign:+d}"}
            row |= {run: float(rates.get(run, np.nan)) for run in runs}
            row |= {"n": int(counts.max()) if len(counts) else 0, "counted": n_of}
            rows.append(row)
    return pd.DataFrame(rows)


def power_check(
    model: MultimodalModel, config: PowerConfig | None = None, *, verbose: bool = True
) -> PowerResult:
    """Plant known multimodal neurons, run the unchanged pipeline with and without them, and
    measure how often each test finds them (see the module docstring).

    Args:
        model: A multimodal model with gated MLPs and an image encoder, trained on the natural
            scenes (e.g. :func:`~transformer_lens_mm.data.pretrained.load_demo_model`); its
            weights are restored afterwards.
        config: What to plant and evaluate (:class:`PowerConfig`).
        verbose: Progress bars.

    Returns:
        A :class:`PowerResult`; ``result.write(folder)`` saves it.
    """
    config = config or PowerConfig()
    n_layers = int(model.cfg.n_layers)
    layers = [min(n_layers - 2, max(1, round(d * n_layers))) for d in config.depths]
    if layers[0] == layers[1]:
        layers[1] = min(n_layers - 2, layers[0] + 1)
    calibration = _calibrate(model, config, layers, verbose)
    designs = {
        f"planted {w} x{x:g}": _design(model, config, layers, calibration, w, x)
        for w, x in config.plants
    }
    others = [n for n in NOUNS if n not in config.concepts]
    evaluation = [
        it
        for j, c in enumerate(config.concepts)
        for it in _scenes(config.n_per_concept, 2000 + j, [c], f"eval-{c}")
    ]
    evaluation += _scenes(config.n_other, 2999, others, "eval-other")
    truth = {it.id: it.categories[0] for it in evaluation}
    selectivity_items = [
        it
        for j, noun in enumerate(NOUNS)
        for it in _scenes(config.n_selectivity, 3000 + j, [noun], f"sel-{noun}")
    ]
    args = (evaluation, selectivity_items, truth)
    first = next(iter(designs.values()))  # the slots are the same in every planted run
    parts = {"unplanted": _evaluate(model, config, first, *args, "unplanted", verbose)}
    c_rank = {}
    for run, plants in designs.items():
        with planted(model, plants):
            ranks = unit_token_ranks(
                model,
                [(p.layer, p.unit) for p in plants],
                [p.token_id for p in plants],
                signs=[p.sign for p in plants],
            )
            c_rank |= {(run, p.layer, p.unit): int(r) for p, r in zip(plants, ranks.tolist())}
            parts[run] = _evaluate(model, config, plants, *args, run, verbose)
    per_image = pd.concat([p[0] for p in parts.values()], ignore_index=True)
    per_unit = pd.concat([p[1] for p in parts.values()], ignore_index=True)
    ablation = pd.concat([p[2] for p in parts.values()], ignore_index=True)
    base = pd.concat([p[3] for p in parts.values()], ignore_index=True)
    selectivity = pd.concat([p[4] for p in parts.values()], ignore_index=True)
    plant_table = pd.DataFrame(
        [
            {
                "run": run,
                "layer": p.layer,
                "unit": p.unit,
                "sign": p.sign,
                "concept": p.concept,
                "token_id": p.token_id,
                "token": model.tokenizer.decode([p.token_id]),
                "c_rank_in_decoding": c_rank[(run, p.layer, p.unit)],
                **{k: round(v, 4) for k, v in p.facts.items()},
            }
            for run, ps in designs.items()
            for p in ps
        ]
    )
    per_plant = per_unit.merge(
        per_image.groupby(["run", "layer", "unit"])[["in_top_k", "decodes_to_c"]]
        .mean()
        .reset_index(),
        on=["run", "layer", "unit"],
        how="left",
    )
    return PowerResult(
        plants=plant_table,
        recovery=_recovery(per_image, per_unit),
        per_unit=per_plant,
        per_image=per_image,
        base_rates=base,
        ablation=ablation,
        selectivity=selectivity,
        config={
            **dataclasses.asdict(config),
            "layers": layers,
            "lm": model.lm_name,
            "z_ref": calibration.z_ref,
        },
    )
