"""Doctest collection of the package: modules whose optional dependency is absent are skipped
(``core/sae.py`` needs SAELens, which runs on TransformerLens 3.x only)."""

import importlib.util
from importlib.metadata import version


def _sae_lens_runs() -> bool:
    if importlib.util.find_spec("sae_lens") is None:
        return False
    return int(version("transformer-lens").split(".")[0]) < 4  # SAELens pins transformer-lens<4


collect_ignore = [] if _sae_lens_runs() else ["transformer_lens_mm/core/sae.py"]
