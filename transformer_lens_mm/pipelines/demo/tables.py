"""The demo's tables, typed: one field per table, written as parquet (the store's format) with
a CSV export of each beside it (every text field quoted, so it reads back exactly).

Example:
    >>> tables = DemoTables.read("runs/demo")  # doctest: +SKIP
    >>> tables.ablation.groupby("kind")["rel_p"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from transformer_lens_mm.core.atomic import atomic_csv, atomic_write

__all__ = ["DemoTables"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame()


@dataclass
class DemoTables:
    """Every table of a demo run (empty when its step did not run).

    Attributes:
        captions: Per item: caption, target, noun, failure, the scene's truth and whether the
            caption names its colour (``colour_right``) and object (``object_right``).
        units: The top-k rows of the search, with ``generic`` and ``breadth``.
        target_ranks: Where c ranks in the top units' decodings vs random units.
        soft_prompts: The soft prompts' nearest tokens vs random vectors.
        logit_lens: p(c) after every block at the position that predicts c.
        spatial: IoU of the top units' regions with c's object (and background) masks.
        ablation: The ablation sweep.
        ablation_captions: Captions under ablation.
        generic_units: Units by their spread over concepts.
        concept_specificity: Per concept, units by how specific they are to it.
        cross_concept: Same- vs cross-concept ablation.
        category_selectivity: Supplement S.4's table.
        unit_effects: Single-unit ablation of the card units.
        knockout: Attention knockout of image -> last.
        lens_shares: The contextual, logit and embedding lenses' shares per layer.
    """

    captions: pd.DataFrame = field(default_factory=_empty)
    units: pd.DataFrame = field(default_factory=_empty)
    target_ranks: pd.DataFrame = field(default_factory=_empty)
    soft_prompts: pd.DataFrame = field(default_factory=_empty)
    logit_lens: pd.DataFrame = field(default_factory=_empty)
    spatial: pd.DataFrame = field(default_factory=_empty)
    ablation: pd.DataFrame = field(default_factory=_empty)
    ablation_captions: pd.DataFrame = field(default_factory=_empty)
    generic_units: pd.DataFrame = field(default_factory=_empty)
    concept_specificity: pd.DataFrame = field(default_factory=_empty)
    cross_concept: pd.DataFrame = field(default_factory=_empty)
    category_selectivity: pd.DataFrame = field(default_factory=_empty)
    unit_effects: pd.DataFrame = field(default_factory=_empty)
    knockout: pd.DataFrame = field(default_factory=_empty)
    lens_shares: pd.DataFrame = field(default_factory=_empty)

    @classmethod
    def names(cls) -> list[str]:
        """The tables' names (the files' stems)."""
        return [f.name for f in fields(cls)]

    def write(self, out: str | os.PathLike, name: str) -> None:
        """Write table ``name`` as ``name.parquet`` and its CSV export ``name.csv``."""
        table = getattr(self, name)
        out = Path(out)
        atomic_write(out / f"{name}.parquet", lambda t: table.to_parquet(t, index=False))
        atomic_csv(out / f"{name}.csv", table)

    def set(self, out: str | os.PathLike, name: str, table: pd.DataFrame) -> pd.DataFrame:
        """Keep ``table`` as ``name`` and write it at once (a long run never loses a table)."""
        setattr(self, name, table)
        self.write(out, name)
        return table

    @classmethod
    def read(cls, out: str | os.PathLike) -> DemoTables:
        """The tables of a finished demo folder (from the parquet files)."""
        out = Path(out)
        return cls(
            **{
                name: pd.read_parquet(out / f"{name}.parquet")
                for name in cls.names()
                if (out / f"{name}.parquet").is_file()
            }
        )
