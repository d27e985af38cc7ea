"""What ``tlmm demo`` runs (:class:`DemoConfig`) and where it writes (:func:`prepare_output`).

Example:
    >>> DemoConfig(n_scenes=6, photos=False).k
    100
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformer_lens_mm.core.errors import OutputExistsError
from transformer_lens_mm.core.paper import REGION_QUANTILE, TOP_K

__all__ = ["FILES", "PHOTOS", "QUICK", "DemoConfig", "prepare_output"]

#: scikit-image's bundled photos captioned as out-of-distribution examples.
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
#: The files the demo writes (and replaces with ``overwrite``); nothing else is touched.
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


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """What the demo runs (the defaults take a few minutes on 2 CPU cores)."""

    n_scenes: int = 24  # held-out scenes (seen colour/shape pairs, one object each)
    photos: bool = True  # also caption and analyse scikit-image's photos
    k: int = TOP_K  # top (layer, unit, position) entries per image (the paper: 100)
    ks: tuple[int, ...] = (0, 25, 50, 100, 200, 400, 800, 1600)  # ablation sweep
    n_random: int = 2  # random draws per k (ablation) and per image (IoU)
    n_cards: int = 12  # unit cards in the report
    n_ablation_captions: int = 4  # images re-captioned under ablation
    batch_size: int = 8  # images per forward/backward
    max_new_tokens: int = 8  # caption length limit
    quantile: float = REGION_QUANTILE  # spatial region threshold (the paper: 0.95)
    seed: int = 2  # scene-set seed (2: the training record's held-out seen set)
    api: str | None = None  # "hooked" / "bridge" / None: the installed TL's default

    def __post_init__(self) -> None:
        if self.n_scenes < 1 and not self.photos:
            raise ValueError("nothing to analyse: n_scenes must be >= 1 or photos True")
        if self.k < 1 or self.batch_size < 1 or self.n_random < 1:
            raise ValueError("k, batch_size and n_random must be >= 1")
        if any(k < 0 for k in self.ks):
            raise ValueError(f"ablation ks must be >= 0, got {self.ks}")


#: ``tlmm demo --quick``: a few scenes and a short sweep (a smoke test, ~1-2 minutes).
QUICK = {"n_scenes": 6, "photos": False, "ks": (0, 25, 100, 400), "n_cards": 4, "n_random": 1}


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
