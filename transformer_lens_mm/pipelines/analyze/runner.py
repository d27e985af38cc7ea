"""Dataset-scale runs: ``tlmm analyze CONFIG`` and :func:`run_analysis`, sharded and resumable.

Per batch of images: the search step (:func:`~transformer_lens_mm.pipelines.search.
search_batch`: a greedy caption or the data set's, the first noun ``c``, attribution of
``y_c`` to every MLP unit at the image positions, the top ``k`` entries with their decodings,
the interpretability filter and each entry's patch map), then the steps the config asks for
(:mod:`~transformer_lens_mm.pipelines.steps`: the ablation sweep, captions under ablation, the
soft prompts). Results are written in shards as they are made
(:mod:`~transformer_lens_mm.pipelines.analyze.store`).

Every file is written atomically. Kill the run at any moment (``kill -9`` included) and start it
again: finished shards are skipped, the rest is recomputed, nothing is lost or duplicated. The
data set is cut into fixed batches (``batch_size`` consecutive items), so results do not depend
on how often the run was interrupted or on the number of processes. Under ``torchrun
--nproc_per_node N`` batch ``b`` goes to rank ``b % N``; rank 0 merges every shard at the end
(a single process merges too), identical to a single-process run.

Example:
    >>> summary = run_analysis("configs/coco_val2017_gptj_beit.toml")  # doctest: +SKIP
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.datasets import Item, LoadedBatch, image_loader
from transformer_lens_mm.errors import ConfigError, StoreError
from transformer_lens_mm.pipelines.analyze.config import (
    TABLES,
    AnalysisConfig,
    load_config,
    load_dataset,
    load_model,
)
from transformer_lens_mm.pipelines.analyze.report import analysis_report
from transformer_lens_mm.pipelines.analyze.store import (
    check_same_run,
    check_store,
    done_batches,
    merge_shards,
    run_lock,
    write_config,
    write_controls,
    write_merged,
    write_shard,
    write_store_version,
)
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import (
    ablation_captions_step,
    ablation_step,
    cross_concept_step,
    direct_score_step,
    knockout_step,
    soft_prompt_step,
)

__all__ = ["run_analysis"]


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _settings(config: AnalysisConfig) -> SearchSettings:
    return SearchSettings(
        k=config.k,
        layers=config.layers,
        rank_units=config.units_to_rank or None,
        max_new_tokens=config.max_new_tokens,
        sign=config.readout_sign,  # type: ignore[arg-type]
        final_norm=config.readout_final_norm,
        dictionary=config.dictionary,
    )


def _analyse_batch(
    model: MultimodalModel,
    data: Sequence[Item],
    loaded: LoadedBatch,
    batch_index: int,
    config: AnalysisConfig,
    decoded: dict,
) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor | None, dict[str, pd.DataFrame]]:
    """The search and the configured steps of one batch (seeded by the batch index)."""
    tables: dict[str, pd.DataFrame] = {}
    if loaded.pixel_values is None:  # nothing in this batch could be read
        found = search_batch(model, indices=[], unreadable=loaded.failed)
    else:
        found = search_batch(
            model,
            indices=loaded.indices,
            ids=loaded.ids,
            pixel_values=loaded.pixel_values,
            captions=(
                [(data[i].captions or [""])[0] for i in loaded.indices]
                if config.caption_source == "data"
                else None
            ),
            unreadable=loaded.failed,
            settings=_settings(config),
            decoded=decoded,
        )
    if len(found):
        if config.wants("ablation"):
            tables["ablation"] = ablation_step(
                model,
                found,
                ks=config.ablation_ks,
                n_random=config.ablation_random,
                seed=batch_index,
                chunk_size=config.ablation_chunk,
            )
        if config.wants("ablation_captions"):
            tables["ablation_captions"] = ablation_captions_step(
                model,
                found,
                k=config.ablation_captions_k,
                seeds=[batch_index * 10_007 + i for i in range(len(found))],
                max_new_tokens=config.max_new_tokens,
            )
        if config.wants("soft_prompts"):
            tables["soft_prompts"] = soft_prompt_step(
                model, [found], seed=batch_index, k=config.soft_prompt_tokens
            )
        if config.wants("cross_concept"):
            tables["cross_concept"] = cross_concept_step(
                model,
                found,
                ks=config.cross_concept_ks,
                n_random=max(config.ablation_random, 1),
                seed=batch_index,
                chunk_size=config.ablation_chunk,
            )
        if config.wants("knockout"):
            tables["knockout"] = knockout_step(
                model, found, window=config.knockout_window, seed=batch_index
            )
        if config.direct_scores:
            direct, tables["units_direct"], tables["ranking_agreement"] = direct_score_step(
                model, found
            )
            found.units["direct_score"] = direct
    items = found.items.copy()
    items.insert(2, "batch", batch_index)
    return items, found.units, found.maps, tables


def run_analysis(
    config: AnalysisConfig | str | os.PathLike,
    *,
    model: MultimodalModel | None = None,
    data: Sequence[Item] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a dataset-scale analysis; return the summary (also ``summary.json``).

    Args:
        config: An :class:`AnalysisConfig` or the path of a TOML/YAML config.
        model: A loaded model (default: built from ``config.model``).
        data: A data set (default: built from ``config.data``).
        verbose: Progress bar (images/s, ETA) and the printed summary.
    """
    if not isinstance(config, AnalysisConfig):
        config = load_config(config)
    rank, world = _rank_world()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    out = Path(config.out)
    with _held(out, rank, world):
        return _run(config, out, rank, world, model=model, data=data, verbose=verbose)


@contextmanager
def _held(out: Path, rank: int, world: int) -> Iterator[None]:
    """The run folder's lock, held by rank 0 for the whole run; the other ranks of a torchrun
    job learn whether it was granted, so a refused job stops on every rank (no hang)."""
    if rank != 0:
        told: list[Any] = [None]
        torch.distributed.broadcast_object_list(told, src=0)
        if told[0] is not None:
            raise StoreError(told[0])
        yield
        return
    with ExitStack() as stack:
        refused: StoreError | None = None
        try:
            stack.enter_context(run_lock(out))
            check_store(out)
        except StoreError as e:
            refused = e
        if world > 1:
            torch.distributed.broadcast_object_list([None if refused is None else str(refused)])
        if refused is not None:
            raise refused
        yield


def _run(
    config: AnalysisConfig,
    out: Path,
    rank: int,
    world: int,
    *,
    model: MultimodalModel | None,
    data: Sequence[Item] | None,
    verbose: bool,
) -> dict[str, Any]:
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    check_same_run(out, config)
    if rank == 0:
        write_store_version(out)
        write_config(out, config)
    data = data if data is not None else load_dataset(config.data)
    n = len(data) if config.limit is None else min(config.limit, len(data))
    model = model if model is not None else load_model(config.model)
    if model.image_encoder is None:
        raise ConfigError("run_analysis reads images: the model needs an image encoder")
    if config.feature_cache:
        model.attach_feature_cache(config.feature_cache)
    most = config.units_to_rank
    n_layers = len(config.layers) if config.layers is not None else int(model.cfg.n_layers)
    if most > n_layers * int(model.cfg.d_mlp):
        raise ConfigError(
            f"ablation_ks/ablation_captions_k go up to {most} but the scored layers hold "
            f"{n_layers * int(model.cfg.d_mlp)} MLP units: use smaller ks"
        )

    bs = config.batch_size
    n_batches = (n + bs - 1) // bs
    mine = [b for b in range(n_batches) if b % world == rank]
    done = done_batches(shards, owned=lambda b: b % world == rank)
    todo = [b for b in mine if b not in done]
    skipped = sum(min(bs, n - b * bs) for b in mine if b in done)
    t0 = time.perf_counter()
    bar = tqdm(
        total=sum(min(bs, n - b * bs) for b in todo),
        unit="img",
        desc=f"analyze[{rank}/{world}]" if world > 1 else "analyze",
        disable=not verbose,
    )
    decoded: dict = {}  # unit decodings, shared by every batch of the run
    for s in range(0, len(todo), config.shard_batches):
        group = todo[s : s + config.shard_batches]
        indices = [i for b in group for i in range(b * bs, min((b + 1) * bs, n))]
        items, units, maps = [], [], []
        tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
        loader = image_loader(
            data,
            model.image_encoder.transform,
            indices=indices,
            batch_size=bs,
            num_workers=config.num_workers,
        )
        for b, loaded in zip(group, loader):
            it, un, mp, tb = _analyse_batch(model, data, loaded, b, config, decoded)
            items.append(it)
            if len(un):
                units.append(un)
                assert mp is not None
                maps.append(mp.half())
            for name, table in tb.items():
                tables[name].append(table)
            bar.update(len(loaded.ids) + len(loaded.failures))
        extra = {
            name: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            for name, parts in tables.items()
            if config.wants(name)
        }
        write_shard(
            shards,
            group,
            pd.concat(items, ignore_index=True),
            pd.concat(units, ignore_index=True) if units else pd.DataFrame(),
            torch.cat(maps) if maps else torch.zeros(0, 0, dtype=torch.float16),
            extra,
        )
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    summary: dict[str, Any] = {}
    if rank == 0:
        merged = merge_shards(shards)
        write_merged(out, merged)
        controls = write_controls(out, merged.units, merged.table("cross_concept"), config)
        items_all = merged.items
        failed = items_all[items_all["failure"].notna()] if len(items_all) else items_all
        summary = {
            "items": n,
            "done": len(items_all) - len(failed),
            "failed": len(failed),
            "skipped_already_done": skipped,
            "seconds": round(time.perf_counter() - t0, 1),
            "failures": dict(zip(failed["item"], failed["failure"])) if len(failed) else {},
            "controls": controls,
        }
        atomic_write(
            out / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=1))
        )
        analysis_report(out, data)
        if verbose:
            print(
                f"analyze: {summary['done']} done, {summary['failed']} failed, "
                f"{skipped} skipped (done before) of {n} items in {summary['seconds']} s; "
                f"results in {out}"
            )
    if world > 1:
        torch.distributed.barrier()
    return summary
