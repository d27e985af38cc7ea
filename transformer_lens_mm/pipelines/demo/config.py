"""What ``tlmm demo`` runs (:class:`DemoConfig`) and where it writes (:func:`prepare_output`).

Example:
    >>> DemoConfig(n_scenes=6, photos=False).k
    100
    >>> DemoConfig(lm="smollm2", scene_set="shapes").cross_ks
    (25, 100, 400)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from transformer_lens_mm.core.paper import REGION_QUANTILE, TOP_K
from transformer_lens_mm.data.demo_set import PHOTOS, SCENE_SETS
from transformer_lens_mm.errors import ConfigError, OutputExistsError

__all__ = ["FILES", "PHOTOS", "QUICK", "RUN_FILES", "DemoConfig", "prepare_output"]

#: The files the demo writes besides its run's (and replaces with ``overwrite``); nothing else
#: is touched.
_TABLES = (
    "captions",
    "units",
    "target_ranks",
    "soft_prompts",
    "logit_lens",
    "knockout",
    "lens_shares",
    "spatial",
    "ablation",
    "ablation_captions",
    "generic_units",
    "concept_specificity",
    "cross_concept",
    "category_selectivity",
    "unit_effects",
)
FILES = (
    "summary.json",
    "report.html",
    "run.log",
    *(f"{name}.{ext}" for name in _TABLES for ext in ("parquet", "csv")),
)
#: The run store's own files and folders (``tlmm analyze``'s; the demo is a run of it).
RUN_FILES = ("store.json", "config.json", "items.parquet", "maps.safetensors", "run.lock")
RUN_FOLDERS = ("shards", "revisits")


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs (the defaults take about 6.5 minutes on 2 CPU cores)."""

    # "smollm2" (SmolLM2-135M) or "gemma3" (Gemma 3 270M): the shipped LMs. SmolLM2 by default:
    # on the same held-out natural scenes it captions better and comes closer on each of the
    # three targets (docs/demo.md has both runs)
    lm: str = "smollm2"
    scene_set: str = "natural"  # "natural" (22 nouns) or "shapes" (SmolLM2's first projection)
    n_scenes: int = 40  # held-out scenes (seen combinations: the training record's set)
    photos: bool = True  # also caption and analyse scikit-image's photos
    k: int = TOP_K  # top (layer, unit, position) entries per image (the paper: 100)
    ks: tuple[int, ...] = (0, 25, 50, 100, 200, 400, 800, 1600)  # ablation sweep
    cross_ks: tuple[int, ...] = (25, 100, 400)  # same- vs cross-concept ablation
    cross_others: int | None = 4  # other-concept images per source image (within its batch)
    generic_share: float = 0.5  # a unit top for images of more of the concepts is generic
    n_selectivity: int = 2  # held-out one-object images per concept (category selectivity)
    n_random: int = 2  # random draws per k (ablation) and per image (IoU)
    n_cards: int = 12  # unit cards in the report
    n_ablation_captions: int = 4  # images re-captioned under ablation
    batch_size: int = 8  # images per forward/backward
    max_new_tokens: int = 8  # caption length limit
    quantile: float = REGION_QUANTILE  # spatial region threshold (the paper: 0.95)
    seed: int = 2  # scene-set seed (2: the training record's held-out seen set)
    api: str | None = None  # "hooked" / "bridge" / None: the installed TL's default
    # attention knockout (image -> last, against random positions) in windows of this many
    # layers; 0 skips it
    knockout_window: int = 5
    # contextual lens: reference corpus (data.corpora.reference_corpus: "general", the shipped
    # general-English sentences; "scenes"; "latentlens"), how many texts, and every how many
    # layers it reads
    lens_corpus: str = "general"
    lens_texts: int = 300
    lens_every: int = 3

    def __post_init__(self) -> None:
        if self.n_scenes < 1 and not self.photos:
            raise ConfigError("nothing to analyse: n_scenes must be >= 1 or photos True")
        if self.k < 1 or self.batch_size < 1 or self.n_random < 1:
            raise ConfigError("k, batch_size and n_random must be >= 1")
        if any(k < 0 for k in self.ks) or any(k < 1 for k in self.cross_ks):
            raise ConfigError(f"ks must be >= 0 and cross_ks >= 1, got {self.ks}, {self.cross_ks}")
        if self.scene_set not in SCENE_SETS:
            raise ConfigError(f"scene_set must be one of {SCENE_SETS}, got {self.scene_set!r}")
        if self.knockout_window < 0 or self.lens_every < 0 or self.lens_texts < 1:
            raise ConfigError(
                "knockout_window and lens_every must be >= 0 (0 skips the step) and lens_texts "
                f">= 1, got {self.knockout_window}, {self.lens_every}, {self.lens_texts}"
            )
        if not 0 < self.generic_share < 1:
            raise ConfigError(f"generic_share must be in (0, 1), got {self.generic_share}")


#: ``tlmm demo --quick``: a few scenes and a short sweep (a smoke test, ~1-2 minutes).
QUICK = {
    "n_scenes": 8,
    "photos": False,
    "ks": (0, 25, 100, 400),
    "cross_ks": (25, 100),
    "n_selectivity": 1,
    "n_cards": 4,
    "n_random": 1,
}


def prepare_output(out: str | Path, overwrite: bool = False, *, resume: bool = False) -> Path:
    """Create ``out``; an existing one is refused unless ``overwrite`` (the demo's and its run's
    own files are removed, other files are left alone) or, with ``resume``, it holds a run of
    the runner (``store.json``: the caller resumes it; a run of other settings is refused by
    the runner).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and overwrite:
        from transformer_lens_mm.pipelines.analyze.config import table_steps

        for name in (*FILES, *RUN_FILES, *(f"{t}.parquet" for t in table_steps())):
            (out / name).unlink(missing_ok=True)
        for folder in RUN_FOLDERS:
            if (out / folder).is_dir():
                shutil.rmtree(out / folder)
    elif out.exists() and not (resume and (out / "store.json").is_file()):
        what = "does not hold a demo run to resume" if resume else "already exists"
        raise OutputExistsError(
            f"{out} {what}: choose a new --out, or pass --overwrite to replace the demo's "
            f"files in it ({', '.join(FILES[:3])}, its tables and its run's shards); other files "
            "are never touched"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out
