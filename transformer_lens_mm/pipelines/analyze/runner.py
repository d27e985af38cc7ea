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
from transformer_lens_mm.errors import ConfigError, StoreError, TLMMError
from transformer_lens_mm.pipelines.analyze.config import (
    AnalysisConfig,
    load_config,
    load_dataset,
    load_model,
)
from transformer_lens_mm.pipelines.analyze.report import analysis_report
from transformer_lens_mm.pipelines.analyze.store import (
    RunTables,
    check_same_run,
    check_store,
    done_batches,
    merge_shards,
    run_lock,
    write_config,
    write_merged,
    write_parquet,
    write_shard,
    write_store_version,
)
from transformer_lens_mm.pipelines.experiments import controls_summary
from transformer_lens_mm.pipelines.search import SearchSettings, revisit_batch, search_batch
from transformer_lens_mm.pipelines.steps import Step, StepContext, active_steps

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
    ctx: StepContext,
    steps: Sequence[Step],
    loaded: LoadedBatch,
    batch_index: int,
    decoded: dict,
    seconds: dict[str, float],
    bar: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor | None, dict[str, pd.DataFrame]]:
    """The search and the active steps' batch work on one batch (seeded by the data-set index
    of the batch's first item: the same draws whatever the resumes or the number of processes);
    each step's seconds are added to ``seconds`` and shown on the progress bar."""
    config, data = ctx.config, ctx.data
    tables: dict[str, pd.DataFrame] = {}
    t0 = time.perf_counter()
    bar.set_postfix_str("search")
    if loaded.pixel_values is None:  # nothing in this batch could be read
        found = search_batch(ctx.model, indices=[], unreadable=loaded.failed)
    else:
        found = search_batch(
            ctx.model,
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
    seconds["search"] = seconds.get("search", 0.0) + time.perf_counter() - t0
    if len(found):
        for step in steps:
            if step.batch is None:
                continue
            bar.set_postfix_str(step.name)
            t0 = time.perf_counter()
            tables.update(step.batch(ctx, found, _batch_seed(config, batch_index)))
            seconds[step.name] = seconds.get(step.name, 0.0) + time.perf_counter() - t0
    items = found.items.copy()
    items.insert(2, "batch", batch_index)
    return items, found.units, found.maps, tables


def _batch_seed(config: AnalysisConfig, batch: int) -> int:
    """A batch's seed: the data-set index of its first item (batches are fixed runs of
    ``batch_size`` items), the same whatever the resumes or the number of processes."""
    return batch * config.batch_size


def _has(data: Sequence[Item], what: str, n: int) -> bool:
    """Whether the run's first items carry ``what`` (``"masks"``, ``"categories"``)."""
    for i in range(min(n, 16)):
        try:
            if data[i].masks() if what == "masks" else data[i].categories:
                return True
        except (OSError, ValueError):  # an unreadable annotation: look at the next item
            continue
    return False


def _usable_steps(
    config: AnalysisConfig, data: Sequence[Item], n: int, strict: bool
) -> tuple[list[Step], dict[str, str]]:
    """The active steps whose data needs are met, and the skipped ones with the reason
    (``strict``: a step that cannot run is an error instead)."""
    steps, skipped = [], {}
    for step in active_steps(config):
        missing = [w for w in step.needs if w in ("masks", "categories") and not _has(data, w, n)]
        if missing:
            reason = f"the data set has no {' or '.join(missing)} (needed by {step.name})"
            if strict:
                raise ConfigError(
                    f"step {step.name!r} cannot run: {reason}. Use a data set with "
                    f"{'/'.join(missing)} (e.g. COCO with instances=...), or drop the step "
                    "(or run without --strict to skip it)"
                )
            skipped[step.name] = reason
            continue
        steps.append(step)
    return steps, skipped


def run_analysis(
    config: AnalysisConfig | str | os.PathLike,
    *,
    model: MultimodalModel | None = None,
    data: Sequence[Item] | None = None,
    verbose: bool = True,
    strict: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a dataset-scale analysis; return the summary (also ``summary.json``).

    Args:
        config: An :class:`AnalysisConfig` or the path of a TOML/YAML config.
        model: A loaded model (default: built from ``config.model``).
        data: A data set (default: built from ``config.data``).
        verbose: Progress bar (images/s, ETA; the step running) and the printed summary.
        strict: A step the data cannot feed (no masks, no categories) is an error; by default
            it is skipped and the reason written into the summary.
        report: Write the run's ``report.html`` (``tlmm demo`` writes its own).
    """
    if not isinstance(config, AnalysisConfig):
        config = load_config(config)
    rank, world = _rank_world()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    out = Path(config.out)
    with _held(out, rank, world):
        return _run(
            config,
            out,
            rank,
            world,
            model=model,
            data=data,
            verbose=verbose,
            strict=strict,
            report=report,
        )


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
    strict: bool,
    report: bool = True,
) -> dict[str, Any]:
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    check_same_run(out, config)
    if rank == 0:
        write_store_version(out)
        write_config(out, config)
    data = data if data is not None else load_dataset(config.data)
    # a data set with a searched part (the demo's: its selectivity images come after) stops there
    limit = config.limit if config.limit is not None else getattr(data, "n_search", None)
    n = len(data) if limit is None else min(limit, len(data))
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

    steps, not_run = _usable_steps(config, data, n, strict)
    ctx = StepContext(model=model, config=config, data=data, verbose=verbose, n_run=n)
    seconds: dict[str, float] = {}
    log = _Log(out / "run.log", rank)
    log.write(f"start: {n} items, steps {[s.name for s in steps]}, skipped {not_run or 'none'}")
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
        tables: dict[str, list[pd.DataFrame]] = {t: [] for step in steps for t in step.tables}
        loader = image_loader(
            data,
            model.image_encoder.transform,
            indices=indices,
            batch_size=bs,
            num_workers=config.num_workers,
        )
        before = dict(seconds)
        for b, loaded in zip(group, loader):
            it, un, mp, tb = _analyse_batch(ctx, steps, loaded, b, decoded, seconds, bar)
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
        }
        write_shard(
            shards,
            group,
            pd.concat(items, ignore_index=True),
            pd.concat(units, ignore_index=True) if units else pd.DataFrame(),
            torch.cat(maps) if maps else torch.zeros(0, 0, dtype=torch.float16),
            extra,
        )
        spent = {k: round(v - before.get(k, 0.0), 2) for k, v in seconds.items()}
        log.write(f"shard b{group[0]:07d}: batches {group}, {len(indices)} items, seconds {spent}")
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    summary: dict[str, Any] = {}
    if rank == 0:
        merged = merge_shards(shards)
        write_merged(out, merged)
        step_failures: dict[str, str] = {}
        run_tables = _run_steps(
            ctx, steps, merged, out, seconds, log, verbose, strict, step_failures
        )
        run_tables.update(_revisit_steps(ctx, steps, merged, run_tables, out, seconds, log))
        items_all = merged.items
        failed = items_all[items_all["failure"].notna()] if len(items_all) else items_all
        summary = {
            "items": n,
            "done": len(items_all) - len(failed),
            "failed": len(failed),
            "skipped_already_done": skipped,
            "seconds": round(time.perf_counter() - t0, 1),
            "failures": dict(zip(failed["item"], failed["failure"])) if len(failed) else {},
            "steps": [s.name for s in steps],
            "steps_skipped": not_run,
            "steps_failed": step_failures,
            "step_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "controls": controls_summary(
                merged.units,
                generic=run_tables.get("generic_units"),
                cross=merged.table("cross_concept"),
            )
            if len(merged.units)
            else {},
        }
        atomic_write(
            out / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=1))
        )
        if report:
            analysis_report(out, data)
        log.write(f"done: {summary['done']} done, {summary['failed']} failed")
        if verbose:
            print(
                f"analyze: {summary['done']} done, {summary['failed']} failed, "
                f"{skipped} skipped (done before) of {n} items in {summary['seconds']} s; "
                f"results in {out}"
            )
    if world > 1:
        torch.distributed.barrier()
    return summary


def _run_steps(
    ctx: StepContext,
    steps: Sequence[Step],
    merged: RunTables,
    out: Path,
    seconds: dict[str, float],
    log: _Log,
    verbose: bool,
    strict: bool,
    failed: dict[str, str],
) -> dict[str, pd.DataFrame]:
    """The active steps' per-run reductions over the merged tables, each table written as it
    is made (the run's tables and the earlier steps' run tables are their input). A step that
    raises a :class:`~transformer_lens_mm.errors.TLMMError` (a metric model that cannot load)
    is recorded in ``failed`` and the others still run; ``strict`` re-raises."""
    tables: dict[str, pd.DataFrame] = {
        "items": merged.items,
        "units": merged.units,
        **merged.tables,
    }
    made: dict[str, pd.DataFrame] = {}
    for step in steps:
        if step.run is None:
            continue
        if verbose:
            print(f"analyze: {step.name} over the run ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = step.run(ctx, {**tables, **made})
        except TLMMError as e:  # the merged run is kept; the step's reason goes in the summary
            if strict:
                raise
            failed[step.name] = str(e)
            log.write(f"run step {step.name} failed: {e}")
            continue
        for name, table in result.items():
            write_parquet(out / f"{name}.parquet", table)
        made.update(result)
        seconds[step.name] = seconds.get(step.name, 0.0) + time.perf_counter() - t0
        log.write(f"run step {step.name}: {round(time.perf_counter() - t0, 2)} s, {list(result)}")
    return made


def _revisit_steps(
    ctx: StepContext,
    steps: Sequence[Step],
    merged: RunTables,
    made: dict[str, pd.DataFrame],
    out: Path,
    seconds: dict[str, float],
    log: _Log,
) -> dict[str, pd.DataFrame]:
    """The active steps' ``revisit`` work: every batch with a usable item rebuilt from the
    merged ``items`` (:func:`~transformer_lens_mm.pipelines.search.revisit_batch`), given the
    run's tables, its tables written into ``revisits/<step>/`` shards (checksummed; a resumed
    run skips the finished ones), then merged and written like the search's."""
    config, model = ctx.config, ctx.model
    tables = {"items": merged.items, "units": merged.units, **merged.tables, **made}
    items = merged.items
    usable = items[items["target_id"].notna()] if len(items) else items
    result: dict[str, pd.DataFrame] = {}
    for step in steps:
        if step.revisit is None:
            continue
        where = out / "revisits" / step.name
        where.mkdir(parents=True, exist_ok=True)
        done = done_batches(where)
        todo = [int(b) for b in sorted(usable["batch"].unique()) if int(b) not in done]
        t0 = time.perf_counter()
        bar = tqdm(
            total=int(usable["batch"].isin(todo).sum()),
            unit="img",
            desc=f"analyze: {step.name}",
            disable=not ctx.verbose,
        )
        for b in todo:
            rows = usable[usable["batch"] == b]
            loader = image_loader(
                ctx.data,
                model.image_encoder.transform,
                indices=[int(i) for i in rows["index"]],
                batch_size=len(rows),
                num_workers=0,
            )
            loaded = next(iter(loader))
            part: dict[str, pd.DataFrame] = {}
            if loaded.pixel_values is not None:  # an image read at the search but not now: skip
                found = revisit_batch(
                    model,
                    rows.set_index("index", drop=False).loc[loaded.indices].reset_index(drop=True),
                    pixel_values=loaded.pixel_values,
                )
                if len(found):
                    part = step.revisit(ctx, found, _batch_seed(config, b), tables)
            part = {name: part.get(name, pd.DataFrame()) for name in step.tables}
            write_shard(
                where,
                [b],
                pd.DataFrame(),
                pd.DataFrame(),
                torch.zeros(0, 0, dtype=torch.float16),
                part,
            )
            bar.update(len(rows))
        bar.close()
        result.update(merge_shards(where).tables)
        for name in step.tables:
            result.setdefault(name, pd.DataFrame())
            write_parquet(out / f"{name}.parquet", result[name])
        seconds[step.name] = seconds.get(step.name, 0.0) + time.perf_counter() - t0
        log.write(
            f"revisit step {step.name}: {len(todo)} batches ({len(done)} done before), "
            f"{round(time.perf_counter() - t0, 2)} s"
        )
    return result


class _Log:
    """The run's log (``run.log``, appended by rank 0; other ranks log nothing): one line per
    shard with each step's seconds, one per run step."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path, self.rank = path, rank

    def write(self, line: str) -> None:
        if self.rank == 0:
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
