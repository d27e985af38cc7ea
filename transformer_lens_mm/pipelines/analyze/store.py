"""The on-disk format of a run: shards written atomically as they are made, merged at the end.

Per shard (``shards/b<first batch>-<table>``):

* ``units.parquet``: top-k rows (the search's schema: item, index, target, rank, layer, unit,
  position, score, activation, tokens, interpretable, decodes_to_target),
* ``maps.safetensors``: ``maps[row]`` = that row's unit over the image patches (fp16),
* ``ablation.parquet``, ``ablation_captions.parquet``, ``soft_prompts.parquet``,
  ``cross_concept.parquet``, ...: the optional tables the config asks for,
* ``items.parquet``: one row per item (index, item, batch, caption, target, target_id, noun,
  failure), written last: a shard counts as done only when its items file exists.

The merged run has ``items.parquet``, ``units.parquet``, ``maps.safetensors``, one parquet
file per optional table, and the run-level controls ``generic_units.parquet`` and
``concept_specificity.parquet`` (:func:`write_controls`); :func:`load_results` and
:func:`load_table` read them.

Example:
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
    >>> sweep = load_table("runs/coco-gptj", "ablation")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.errors import ConfigError
from transformer_lens_mm.pipelines.analyze.config import (
    RUN_TABLES,
    TABLE_SWITCHES,
    TABLES,
    AnalysisConfig,
)
from transformer_lens_mm.pipelines.experiments import controls_summary
from transformer_lens_mm.tools.specificity import concept_specificity, generic_units

__all__ = [
    "check_same_run",
    "done_batches",
    "load_results",
    "load_table",
    "merge_shards",
    "write_config",
    "write_controls",
    "write_merged",
    "write_parquet",
    "write_shard",
]

#: config fields that do not change the results (may differ when a run is resumed)
_FREE_FIELDS = {"out", "num_workers", "feature_cache", "shard_batches", "ablation_chunk"}
#: what a field missing from an older run's config.json meant then, where that differs from
#: today's default: runs written before the sign-aware readout read every unit as +W_out
_LEGACY = {"readout_sign": "weights", "readout_final_norm": False, "dictionary": "web2"}


def check_same_run(out: Path, config: AnalysisConfig) -> None:
    """Refuse to resume a run made with different settings (its shards would be mixed in)."""
    path = out / "config.json"
    if not path.is_file():
        return
    # a field missing from an older run's config.json had its default value
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(AnalysisConfig)
        if f.name != "out"
    }
    before = {**json.loads(json.dumps(defaults)), **_LEGACY, **json.loads(path.read_text())}
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(
        k for k in set(before) | set(now) if k not in _FREE_FIELDS and before.get(k) != now.get(k)
    )
    if changed:
        legacy = ""
        if "readout_sign" in changed and "readout_sign" not in json.loads(path.read_text()):
            legacy = (
                " It was written before the sign-aware readout (every unit decoded as +W_out, "
                'raw-Z maps): to finish it as it began set readout_sign = "weights" and '
                "readout_final_norm = false in [run] (the same as today's readout on ungated "
                "MLPs such as GPT-J's), else start a new run for gated MLPs."
            )
        raise ConfigError(
            f"{out} holds a run made with other settings ({', '.join(changed)} differ): its "
            "finished shards would be mixed with new ones. Choose another `out`, or delete "
            f"{out} to start again.{legacy}"
        )


def write_config(out: Path, config: AnalysisConfig) -> None:
    """The run's ``config.json`` (what :func:`check_same_run` compares a resumed run with)."""
    atomic_write(
        out / "config.json",
        lambda t: Path(t).write_text(json.dumps(dataclasses.asdict(config), indent=1)),
    )


def _shard_name(batch: int) -> str:
    return f"b{batch:07d}"


def done_batches(shards: Path) -> set[int]:
    return {int(p.name[1:8]) for p in shards.glob("b*-items.parquet")}


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda t: table.to_parquet(t, index=False))


def write_shard(shards: Path, first_batch: int, items, units, maps, tables) -> None:
    name = _shard_name(first_batch)
    write_parquet(shards / f"{name}-units.parquet", units)
    atomic_write(
        shards / f"{name}-maps.safetensors",
        lambda t: save_file({"maps": maps.contiguous()}, t),
    )
    for table_name, table in tables.items():
        write_parquet(shards / f"{name}-{table_name}.parquet", table)
    # written last: its presence marks the shard as done
    write_parquet(shards / f"{name}-items.parquet", items)


def merge_shards(
    shards: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor, dict[str, pd.DataFrame]]:
    """Every finished shard's tables, merged in data-set order (identical whatever the
    number of processes or interruptions)."""
    items, units, maps = [], [], []
    tables: dict[str, list[pd.DataFrame]] = {}
    for marker in sorted(shards.glob("b*-items.parquet")):
        name = marker.name[: -len("-items.parquet")]
        items.append(pd.read_parquet(marker))
        u = shards / f"{name}-units.parquet"
        table = pd.read_parquet(u) if u.stat().st_size else pd.DataFrame()
        m = load_file(shards / f"{name}-maps.safetensors")["maps"]
        if len(table):
            units.append(table)
            maps.append(m)
        for extra in TABLES:
            path = shards / f"{name}-{extra}.parquet"
            if path.is_file():
                tables.setdefault(extra, []).append(pd.read_parquet(path))
    items_df = pd.concat(items, ignore_index=True) if items else pd.DataFrame()
    units_df = pd.concat(units, ignore_index=True) if units else pd.DataFrame()
    maps_t = torch.cat(maps) if maps else torch.zeros(0, 0, dtype=torch.float16)
    if len(items_df):
        items_df = items_df.sort_values(["batch", "index", "item"], kind="stable").reset_index(
            drop=True
        )
    if len(units_df):
        order = units_df.sort_values(["index", "rank"], kind="stable").index.to_numpy().copy()
        units_df = units_df.iloc[order].reset_index(drop=True)
        maps_t = maps_t[torch.as_tensor(order)]
    merged = {}
    for extra, parts in tables.items():
        table = pd.concat([p for p in parts if len(p)] or parts, ignore_index=True)
        if len(table):  # shards in any order: by item index, each item's rows as written
            table = table.sort_values("index", kind="stable").reset_index(drop=True)
        merged[extra] = table
    return items_df, units_df, maps_t, merged


def write_merged(out: Path, merged: tuple) -> None:
    """Write the merged tables of :func:`merge_shards` into the run folder."""
    items, units, maps, tables = merged
    write_parquet(out / "items.parquet", items)
    write_parquet(out / "units.parquet", units)
    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)
    atomic_write(out / "maps.safetensors", lambda t: save_file({"maps": maps.contiguous()}, t))


def write_controls(
    out: Path, units: pd.DataFrame, cross: pd.DataFrame | None, config: AnalysisConfig
) -> dict:
    """The run-level controls from the merged units (and cross-concept) tables: write the
    ``generic_units`` and ``concept_specificity`` tables, return their numbers
    (:func:`~transformer_lens_mm.pipelines.experiments.controls_summary`)."""
    if not len(units):
        return {}
    generic = generic_units(units, min_share=config.generic_share)
    write_parquet(out / "generic_units.parquet", generic)
    write_parquet(out / "concept_specificity.parquet", concept_specificity(units))
    return controls_summary(units, generic=generic, cross=cross)


def load_results(out: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor]:
    """``(items, units, maps)`` of a finished run (``maps[i]`` belongs to ``units.iloc[i]``)."""
    out = Path(out)
    if not (out / "items.parquet").is_file():
        raise FileNotFoundError(f"{out} holds no merged results: run or resume the analysis first")
    maps = load_file(out / "maps.safetensors")["maps"]
    return pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "units.parquet"), maps


def load_table(out: str | os.PathLike, name: str) -> pd.DataFrame:
    """An optional table of a finished run: ``"ablation"``, ``"ablation_captions"`` or
    ``"soft_prompts"``.

    Example:
        >>> sweep = load_table("runs/coco-gptj", "ablation")  # doctest: +SKIP
        >>> ablation_curve(sweep)  # doctest: +SKIP
    """
    if name not in TABLES + RUN_TABLES:
        raise ConfigError(f"table must be one of {TABLES + RUN_TABLES}, got {name!r}")
    path = Path(out) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: set {TABLE_SWITCHES[name]} in the run's config and run or "
            "resume it"
        )
    return pd.read_parquet(path)
