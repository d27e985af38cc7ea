"""The configuration of a dataset-scale run: :class:`AnalysisConfig`, read from TOML or YAML.

A config has a top-level ``out`` and three tables: ``[data]`` (:func:`load_dataset`),
``[model]`` (:func:`load_model`) and ``[run]`` (the other fields of :class:`AnalysisConfig`).

Which experiments run: ``[run] steps`` names them (the registry's steps,
:data:`~transformer_lens_mm.pipelines.steps.STEPS`); without it, every step whose switch is on
(``ablation_ks`` not empty, ``soft_prompts = true``, ...). A step listed in ``steps`` whose
parameter is unset takes the paper's value (or ours, for our steps).

Example:
    >>> config = AnalysisConfig(out="runs/x", ablation_ks=[0, 25])
    >>> config.wants("ablation"), config.wants("soft_prompts"), config.units_to_rank
    (True, False, 25)
    >>> AnalysisConfig(out="runs/x", steps=["ablation"]).ablation_ks[-1]  # the paper's sweep
    6400
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.paper import ABLATION_KS, REGION_QUANTILE, SOFT_PROMPT_TOKENS, TOP_K
from transformer_lens_mm.data.datasets import (
    CaptionFolder,
    ClassFolders,
    CocoDataset,
    Item,
    SceneDataset,
)
from transformer_lens_mm.data.pretrained import SHIPPED_PROJECTIONS
from transformer_lens_mm.errors import ConfigError, MissingFileError

__all__ = [
    "STEP_DEFAULTS",
    "AnalysisConfig",
    "load_config",
    "load_dataset",
    "load_model",
    "plan_run",
    "table_steps",
]

#: a step listed in ``[run] steps`` whose switch is off gets these values (the paper's where
#: it has one)
STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "ablation": {"ablation_ks": list(ABLATION_KS)},
    "ablation_captions": {"ablation_captions_k": ABLATION_KS[-1]},
    "cross_concept": {"cross_concept_ks": [25, 100, 400]},
    "unit_effects": {"unit_effects": 3},
    "card_effects": {"card_effects": 12},
    "soft_prompts": {"soft_prompts": True},
    "direct_scores": {"direct_scores": True},
    "knockout": {"knockout_window": 5},
    "logit_lens": {"logit_lens": True},
    "contextual_lens": {"lens_every": 3},
    "spatial": {"spatial": True},
    "background": {"background": True},
    "category_selectivity": {"category_selectivity": 10},
    "target_ranks": {"target_ranks": True},
    # tools.metrics' defaults (the paper does not name its BERTScore model)
    "text_scores": {"bert_model": "roberta-large", "clip_model": "openai/clip-vit-large-patch14"},
}


def table_steps() -> dict[str, str]:
    """Every table a step writes -> the step's name (per batch and per run)."""
    from transformer_lens_mm.pipelines.steps import STEPS

    return {t: s.name for s in STEPS.values() for t in (*s.tables, *s.run_tables)}


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    """A dataset-scale run (the fields of the ``[data]``, ``[model]`` and ``[run]`` tables)."""

    out: str  # output folder
    data: dict[str, Any] = field(default_factory=dict)  # kind + paths, see load_dataset
    model: dict[str, Any] = field(default_factory=lambda: {"demo": True})  # see load_model
    k: int = TOP_K  # top entries kept per image (the paper: 100)
    batch_size: int = 8  # images per forward/backward (also the unit of resumption)
    shard_batches: int = 4  # batches per shard file
    num_workers: int = 0  # DataLoader workers reading and transforming images
    caption_source: str = "model"  # "model": greedy caption (the paper); "data": dataset's
    max_new_tokens: int = 20
    layers: list[int] | None = None  # layers to score (default all)
    feature_cache: str | None = None  # folder of the encoder-feature cache
    # only the first N items (default: all, or a data set's searched part: kind "demo")
    limit: int | None = None
    # ablation sweep per image (empty: off); the paper: 0, 50, ..., 6400
    ablation_ks: list[int] = field(default_factory=list)
    ablation_random: int = 1  # random same-layer draws per k
    ablation_chunk: int = 32  # rows (image x condition) per no-grad forward
    ablation_captions_k: int = 0  # >0: captions regenerated with top-k / k random units zeroed
    ablation_captions_n: int | None = None  # only for the run's first N items (None: all)
    soft_prompts: bool = False  # decode the soft prompts (and random vectors) per image
    soft_prompt_tokens: int = SOFT_PROMPT_TOKENS  # nearest tokens per vector (the paper: 5)
    # also the gradient-free (MM_Neurons-style) score: units.direct_score, units_direct and
    # ranking_agreement tables (one extra no-grad forward per batch)
    direct_scores: bool = False
    # same- vs cross-concept ablation within each batch (empty: off): each image's top-k zeroed
    # on the batch's images of other concepts (tools.specificity; cross_concept table)
    cross_concept_ks: list[int] = field(default_factory=list)
    cross_concept_others: int | None = None  # at most this many per source image (None: all)
    # random same-layer draws per k in its control (None: ablation_random, at least 1)
    cross_concept_random: int | None = None
    # attention knockout (tools.knockout) of image -> last in windows of this many layers,
    # against random position groups (0: off; knockout table)
    knockout_window: int = 0
    # single-unit effects: each image's best N units zeroed one at a time (0: off)
    unit_effects: int = 0
    # single-unit effects of the report's N card units (chosen over the whole run, after the
    # merge: the demo's; 0: off; card_effects table)
    card_effects: int = 0
    logit_lens: bool = False  # p(c) after every block at the position that predicts c
    target_ranks: bool = False  # where c ranks in the top units' decodings vs random units
    # contextual lens every N layers (0: off) against a reference corpus of lens_texts texts
    lens_every: int = 0
    lens_corpus: str = "general"
    lens_texts: int = 300
    # seed of the corpus sample (with lens_corpus = "scenes": other scenes than the run's)
    lens_seed: int = 1000
    spatial: bool = False  # IoU of top units' regions with the mask of c's object (masks)
    background: bool = False  # the same for each image's largest background region (masks)
    quantile: float = REGION_QUANTILE  # the region of a patch map: above this quantile
    category_selectivity: int = 0  # held-out images per class (0: off; needs categories)
    # Tables 1 and 2 scored by BERTScore / CLIPScore (hub names or local folders; None: off)
    bert_model: str | None = None
    clip_model: str | None = None
    # the experiments to run (names of the step registry); None: every step whose switch is on
    steps: list[str] | None = None
    # a unit top for the images of more than this share of the concepts is generic
    # (generic_units and concept_specificity tables, always made)
    generic_share: float = 0.5
    # how a unit's write is read (tools.readout): "auto" orients each entry by sign(Z) on gated
    # MLPs and reads +W_out on ungated ones (the paper's GPT-J); "activation" / "weights"
    readout_sign: str = "auto"
    # decode through the final norm's per-channel scale (None: on gated MLPs only)
    readout_final_norm: bool | None = None
    # the interpretability filter's word list: "scowl" (the paper's, S.2) or "web2"
    dictionary: str = "scowl"

    @property
    def units_to_rank(self) -> int:
        """Units ranked per image for the ablations (0: none)."""
        return max([*self.ablation_ks, *self.cross_concept_ks, self.ablation_captions_k])

    def wants(self, table: str) -> bool:
        """Whether this run makes ``table`` (a table of one of its active steps)."""
        from transformer_lens_mm.pipelines.steps import active_steps

        return any(table in (*s.tables, *s.run_tables) for s in active_steps(self))

    def __post_init__(self) -> None:
        if self.steps is not None:
            from transformer_lens_mm.pipelines.steps import STEPS

            unknown = [n for n in self.steps if n not in STEPS]
            if unknown:
                raise ConfigError(f"unknown steps {unknown}; the steps are {sorted(STEPS)}")
            for name in self.steps:  # a listed step runs: its unset parameters get defaults
                for key, value in STEP_DEFAULTS.get(name, {}).items():
                    if not getattr(self, key):
                        object.__setattr__(self, key, value)
        if self.caption_source not in ("model", "data"):
            raise ConfigError(
                f"caption_source must be 'model' or 'data', got {self.caption_source!r}"
            )
        for name in ("k", "batch_size", "shard_batches", "ablation_chunk", "soft_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (
            any(int(k) < 0 for k in self.ablation_ks)
            or self.ablation_random < 0
            or self.ablation_captions_k < 0
        ):
            raise ConfigError(
                "ablation_ks, ablation_random and ablation_captions_k must be >= 0, got "
                f"{self.ablation_ks}, {self.ablation_random}, {self.ablation_captions_k}"
            )
        if self.ablation_captions_n is not None and self.ablation_captions_n < 1:
            raise ConfigError(
                f"ablation_captions_n must be >= 1 (or left out: all), got "
                f"{self.ablation_captions_n}"
            )
        for name in (
            "knockout_window",
            "unit_effects",
            "card_effects",
            "lens_every",
            "category_selectivity",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.lens_texts < 1:
            raise ConfigError(f"lens_texts must be >= 1, got {self.lens_texts}")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"quantile must be in (0, 1), got {self.quantile}")
        if self.cross_concept_others is not None and self.cross_concept_others < 1:
            raise ConfigError(
                f"cross_concept_others must be >= 1 (or left out: all), got "
                f"{self.cross_concept_others}"
            )
        if self.cross_concept_random is not None and self.cross_concept_random < 1:
            raise ConfigError(
                f"cross_concept_random must be >= 1 (or left out: ablation_random), got "
                f"{self.cross_concept_random}"
            )
        if any(int(k) < 1 for k in self.cross_concept_ks):
            raise ConfigError(f"cross_concept_ks must be >= 1, got {self.cross_concept_ks}")
        if not 0 < self.generic_share < 1:
            raise ConfigError(f"generic_share must be in (0, 1), got {self.generic_share}")
        if self.dictionary not in ("scowl", "web2"):
            raise ConfigError(f"dictionary must be 'scowl' or 'web2', got {self.dictionary!r}")
        if self.readout_sign not in ("auto", "activation", "weights"):
            raise ConfigError(
                f"readout_sign must be 'auto', 'activation' or 'weights', got {self.readout_sign!r}"
            )


def load_config(path: str | os.PathLike) -> AnalysisConfig:
    """Read a TOML or YAML config: top-level ``out``, tables ``[data]``, ``[model]``, ``[run]``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        raise ConfigError(f"config must be .toml or .yaml, got {path.name}")
    run = dict(raw.get("run", {}))
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    unknown = (set(run) | set(raw) - {"data", "model", "run"}) - known
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    top = {k: v for k, v in raw.items() if k not in ("data", "model", "run")}
    return AnalysisConfig(
        **top, **run, data=dict(raw.get("data", {})), model=dict(raw.get("model", {"demo": True}))
    )


def load_dataset(spec: dict[str, Any]) -> Sequence[Item]:
    """A data set from its config table: ``kind`` = ``coco`` (``images``, ``captions``,
    ``instances``), ``folder`` (``root``, ``captions``), ``classes`` (``root``), ``scenes``
    or ``natural`` (natural-object scenes; both ``n``, ``seed``), or ``demo`` (``tlmm demo``'s
    images, :class:`~transformer_lens_mm.data.demo_set.DemoSet`: ``scene_set``, ``n``,
    ``photos``, ``n_selectivity``, ``seed``; a run without ``limit`` searches its scenes and
    photos, the category-selectivity images after them are the held-out ones)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "coco":
        return CocoDataset(spec["images"], spec.get("captions"), spec.get("instances"))
    if kind == "folder":
        return CaptionFolder(spec["root"], spec.get("captions"))
    if kind == "classes":
        return ClassFolders(spec["root"])
    if kind == "scenes":
        from transformer_lens_mm.data.scenes import SceneSet

        return SceneDataset(SceneSet(int(spec.get("n", 100)), seed=int(spec.get("seed", 0))))
    if kind == "natural":
        from transformer_lens_mm.data.natural_scenes import NaturalSceneSet

        return SceneDataset(NaturalSceneSet(int(spec.get("n", 100)), seed=int(spec.get("seed", 0))))
    if kind == "demo":
        from transformer_lens_mm.data.demo_set import DemoSet

        # the keys given (DemoSet's own defaults for the others); [data] n is its n_scenes
        given = {k: _DEMO_KEYS[k](v) for k, v in spec.items() if k in _DEMO_KEYS}
        if "n" in given:
            given["n_scenes"] = given.pop("n")
        return DemoSet(**given)
    raise ConfigError(
        f"data.kind must be coco, folder, classes, scenes, natural or demo, got {kind!r}"
    )


#: [data] keys of kind "demo" and their types
_DEMO_KEYS = {"scene_set": str, "n": int, "photos": bool, "n_selectivity": int, "seed": int}
#: [data] keys each kind reads, the paths among them
_DATA_KEYS = {
    "coco": ({"images", "captions", "instances"}, {"images", "captions", "instances"}),
    "folder": ({"root", "captions"}, {"root", "captions"}),
    "classes": ({"root"}, {"root"}),
    "scenes": ({"n", "seed"}, set()),
    "natural": ({"n", "seed"}, set()),
    "demo": (set(_DEMO_KEYS), set()),
}


def plan_run(config: AnalysisConfig) -> list[str]:
    """Check a config without loading weights or reading data (``tlmm analyze --dry-run``):
    every ``[model]`` key is a ``from_parts`` argument, the recipe, dtype, api and data kind
    resolve; returns the plan as lines (files not yet on disk are flagged, not refused).

    Raises:
        ConfigError: a key or name that does not resolve, with the known ones.
    """
    import inspect

    from transformer_lens_mm.core.loading import from_parts
    from transformer_lens_mm.core.recipes import RECIPES

    lines = [f"out: {config.out}"]

    def path_note(value: Any) -> str:
        return "" if Path(str(value)).exists() else "  (not on disk yet)"

    data = dict(config.data)
    kind = data.pop("kind", None)
    if kind not in _DATA_KEYS:
        raise ConfigError(f"data.kind must be one of {sorted(_DATA_KEYS)}, got {kind!r}")
    keys, paths = _DATA_KEYS[kind]
    if set(data) - keys:
        raise ConfigError(
            f"unknown [data] keys {sorted(set(data) - keys)} for kind={kind!r}; "
            f"known: {sorted(keys)}"
        )
    lines.append(f"data: {kind}")
    lines += [f"  {k} = {v}{path_note(v) if k in paths else ''}" for k, v in sorted(data.items())]
    model = dict(config.model)
    if model.pop("demo", False):
        pair = (model.get("lm", "smollm2"), model.get("scenes", "natural"))  # load_demo_model's
        if pair not in SHIPPED_PROJECTIONS:
            raise ConfigError(
                f"[model] demo = true with lm = {pair[0]!r}, scenes = {pair[1]!r}: no such shipped "
                f"projection; shipped: {sorted(SHIPPED_PROJECTIONS)}"
            )
        lines.append(
            f"model: {SHIPPED_PROJECTIONS[pair][1]} + EfficientNet-Lite0 + the shipped projection "
            f"trained on {pair[1]} scenes"
        )
        return lines + _run_lines(config)
    if "native" in model:
        return lines + _native_lines(model) + _run_lines(config)
    known = set(inspect.signature(from_parts).parameters)
    if set(model) - known:
        raise ConfigError(
            f"unknown [model] keys {sorted(set(model) - known)}; known: {sorted(known)}"
        )
    for required in ("lm", "projection"):
        if required not in model:
            raise ConfigError(f"[model] needs {required!r} (or demo = true)")
    _check_dtype(model)
    if model.get("api") not in (None, "hooked", "bridge"):
        raise ConfigError(f"[model] api must be 'hooked' or 'bridge', got {model['api']!r}")
    where = "local folder" if Path(str(model["lm"])).is_dir() else "hub name"
    lines.append(f"model: lm = {model['lm']} ({where})")
    recipe = model.get("recipe")
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; the recipes are {sorted(RECIPES)}")
        r = RECIPES[recipe]
        source = model.get("encoder") or f"{r.encoder} (from the hub)"
        lines.append(
            f"  recipe = {r.name}: encoder {source} [{r.kind}], {r.n_tokens} image tokens of "
            f"{r.d_image} at {r.image_size} px, prompt {model.get('prompt', r.prompt)!r}, "
            f"BOS {model.get('prepend_bos', r.prepend_bos)}; LiMBeR checkpoint {r.checkpoint}"
        )
    else:
        lines.append(f"  encoder = {model.get('encoder')} (timm)")
    lines.append(f"  projection = {model['projection']}{path_note(model['projection'])}")
    for key in ("api", "dtype", "device", "prompt"):
        if key in model:
            lines.append(f"  {key} = {model[key]}")
    return lines + _run_lines(config)


def _check_dtype(model: dict[str, Any]) -> None:
    if "dtype" in model and not isinstance(getattr(torch, str(model["dtype"]), None), torch.dtype):
        raise ConfigError(f"[model] dtype {model['dtype']!r} is not a torch dtype (e.g. float16)")


#: ``[model]`` keys of a native vision-language model (``NativeVLMBridge.from_pretrained``)
_NATIVE_KEYS = {"native", "device", "dtype", "prompt", "chat_template", "image_size"}


def _native_lines(model: dict[str, Any]) -> list[str]:
    """Plan lines of ``[model] native = ...``; the architecture is checked where the config
    can be read without loading weights."""
    if set(model) - _NATIVE_KEYS:
        raise ConfigError(
            f"unknown [model] keys {sorted(set(model) - _NATIVE_KEYS)} for a native VLM; "
            f"known: {sorted(_NATIVE_KEYS)}"
        )
    _check_dtype(model)
    where = str(model["native"])
    kind = "local folder" if Path(where).is_dir() else "hub name"
    lines = [f"model: native VLM {where} ({kind})"]
    if Path(where, "config.json").is_file():
        from transformers import AutoConfig

        from transformer_lens_mm.core.native import check_architecture

        name = check_architecture(AutoConfig.from_pretrained(where), where)
        lines.append(f"  architecture = {name}")
    for key in ("device", "dtype", "prompt", "chat_template", "image_size"):
        if key in model:
            lines.append(f"  {key} = {model[key]}")
    return lines


def _run_lines(config: AnalysisConfig) -> list[str]:
    from transformer_lens_mm.pipelines.steps import step_plan

    skip = {"out", "data", "model"}
    fields = [
        f"  {f.name} = {getattr(config, f.name)}"
        for f in dataclasses.fields(config)
        if f.name not in skip
    ]
    return ["run:", *fields, *step_plan(config, _known_depth(config.model))]


def _known_depth(model: dict[str, Any]) -> int | None:
    """The LM's number of layers where its config can be read without loading weights."""
    lm = model.get("lm", "smollm2" if model.get("demo") else None)
    folder = Path(str(lm)) if lm is not None else None
    if folder is not None and (folder / "config.json").is_file():
        import json

        cfg = json.loads((folder / "config.json").read_text())
        depth = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("n_layers")))
        return int(depth) if depth is not None else None
    return {"smollm2": 30, "gemma3": 18, "EleutherAI/gpt-j-6b": 28}.get(str(lm))


def load_model(spec: dict[str, Any]) -> MultimodalModel:
    """A model from its config table: ``demo = true`` (+ ``lm``, ``scenes``: which shipped
    projection, see :func:`~transformer_lens_mm.data.pretrained.load_demo_model`), ``native``
    (a vision-language model's hub name or folder, + ``device``, ``dtype``, ``prompt``,
    ``chat_template``: :class:`~transformer_lens_mm.core.native.NativeVLMBridge`), or
    ``lm``/``encoder``/``projection``
    (+ ``api``, ``device``, ``dtype``, ``prompt``) as for ``from_parts``."""
    spec = dict(spec)
    if str(spec.get("device", "")) == "cuda" and "LOCAL_RANK" in os.environ:
        spec["device"] = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    if spec.pop("demo", False):
        from transformer_lens_mm.data.pretrained import load_demo_model

        # only the keys given: load_demo_model's defaults are tlmm demo's (natural scenes)
        given = {key: spec[key] for key in ("lm", "scenes", "device") if key in spec}
        return load_demo_model(spec.get("api"), **given)
    from transformer_lens_mm.core.loading import from_parts

    if "dtype" in spec:
        spec["dtype"] = getattr(torch, spec["dtype"])
    if "native" in spec:
        from transformer_lens_mm.core.native import NativeVLMBridge

        return NativeVLMBridge.from_pretrained(spec.pop("native"), **spec)
    return from_parts(**spec)
