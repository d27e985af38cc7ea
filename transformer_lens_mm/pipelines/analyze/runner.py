"""Dataset-scale runs: ``tlmm analyze CONFIG`` and :func:`run_analysis`, sharded and resumable.

Per image: a greedy caption (or the data set's caption), the first noun ``c``, attribution of
``y_c`` to every MLP unit at the image positions, the top ``k`` entries with their decodings and
the interpretability filter, and the patch map (activation at every image position) of each
kept unit. Results are written in shards as they are made:

* ``shards/b<batch>-units.parquet``: top-k rows (item, rank, layer, unit, position, score, ...),
* ``shards/b<batch>-maps.safetensors``: ``maps[row]`` = that row's unit over the image patches,
* ``shards/b<batch>-ablation.parquet`` (``ablation_ks`` set): p(c) with each image's top-k
  units zeroed at the image positions vs k random units of the same layers
  (:func:`~transformer_lens_mm.tools.ablation.ablation_sweep`),
* ``shards/b<batch>-ablation_captions.parquet`` (``ablation_captions_k`` > 0): the caption
  regenerated with each image's top-k units zeroed, and with k random same-layer units,
* ``shards/b<batch>-soft_prompts.parquet`` (``soft_prompts = true``): the nearest vocabulary
  tokens of every soft-prompt vector and of as many norm-matched random vectors,
* ``shards/b<batch>-items.parquet``: one row per item (caption, target, failure), written
  last: a shard counts as done only when its items file exists.

Every file is written atomically. Kill the run at any moment (``kill -9`` included) and start it
again: finished shards are skipped, the rest is recomputed, nothing is lost or duplicated. The
data set is cut into fixed batches (``batch_size`` consecutive items), so results do not depend
on how often the run was interrupted or on the number of processes. Under ``torchrun
--nproc_per_node N`` batch ``b`` goes to rank ``b % N``; rank 0 merges every shard into
``items.parquet``, ``units.parquet`` and ``maps.safetensors`` at the end (a single process
merges too), identical to a single-process run.

Example:
    >>> summary = run_analysis("configs/coco_val2017_gptj_beit.toml")  # doctest: +SKIP
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.data.datasets import (
    CaptionFolder,
    ClassFolders,
    CocoDataset,
    Item,
    SceneDataset,
    image_loader,
)
from transformer_lens_mm.tools.ablation import (
    ablation_sweep,
    captions_under_ablation,
    per_row_masks,
    random_units_like,
)
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import soft_prompt_table
from transformer_lens_mm.tools.spatial import image_mlp_activations
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions
from transformer_lens_mm.tools.words import is_interpretable, same_word

__all__ = [
    "AnalysisConfig",
    "load_config",
    "load_dataset",
    "load_results",
    "load_table",
    "run_analysis",
]

#: optional per-run tables (besides items/units/maps), each written per shard and merged, and
#: the config field that turns each on
TABLE_SWITCHES = {
    "ablation": "ablation_ks",
    "ablation_captions": "ablation_captions_k",
    "soft_prompts": "soft_prompts",
}
TABLES = tuple(TABLE_SWITCHES)


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    """A dataset-scale run (the fields of the ``[data]``, ``[model]`` and ``[run]`` tables)."""

    out: str  # output folder
    data: dict[str, Any] = field(default_factory=dict)  # kind + paths, see load_dataset
    model: dict[str, Any] = field(default_factory=lambda: {"demo": True})  # see load_model
    k: int = 100  # top entries kept per image (the paper: 100)
    batch_size: int = 8  # images per forward/backward (also the unit of resumption)
    shard_batches: int = 4  # batches per shard file
    num_workers: int = 0  # DataLoader workers reading and transforming images
    caption_source: str = "model"  # "model": greedy caption (the paper); "data": dataset's
    max_new_tokens: int = 20
    layers: list[int] | None = None  # layers to score (default all)
    feature_cache: str | None = None  # folder of the encoder-feature cache
    limit: int | None = None  # only the first N items
    # ablation sweep per image (empty: off); the paper: 0, 50, ..., 6400
    ablation_ks: list[int] = field(default_factory=list)
    ablation_random: int = 1  # random same-layer draws per k
    ablation_chunk: int = 32  # rows (image x condition) per no-grad forward
    ablation_captions_k: int = 0  # >0: captions regenerated with top-k / k random units zeroed
    soft_prompts: bool = False  # decode the soft prompts (and random vectors) per image
    soft_prompt_tokens: int = 5  # nearest tokens per vector (the paper: 5)

    @property
    def units_to_rank(self) -> int:
        """Units ranked per image for the ablations (0: none)."""
        return max([*self.ablation_ks, self.ablation_captions_k])

    def wants(self, table: str) -> bool:
        """Whether this run makes the optional ``table`` (see ``TABLE_SWITCHES``)."""
        return bool(getattr(self, TABLE_SWITCHES[table]))

    def __post_init__(self) -> None:
        if self.caption_source not in ("model", "data"):
            raise ValueError(
                f"caption_source must be 'model' or 'data', got {self.caption_source!r}"
            )
        for name in ("k", "batch_size", "shard_batches", "ablation_chunk", "soft_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (
            any(int(k) < 0 for k in self.ablation_ks)
            or self.ablation_random < 0
            or self.ablation_captions_k < 0
        ):
            raise ValueError(
                "ablation_ks, ablation_random and ablation_captions_k must be >= 0, got "
                f"{self.ablation_ks}, {self.ablation_random}, {self.ablation_captions_k}"
            )


def load_config(path: str | os.PathLike) -> AnalysisConfig:
    """Read a TOML or YAML config: top-level ``out``, tables ``[data]``, ``[model]``, ``[run]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config must be .toml or .yaml, got {path.name}")
    run = dict(raw.get("run", {}))
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    unknown = (set(run) | set(raw) - {"data", "model", "run"}) - known
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    top = {k: v for k, v in raw.items() if k not in ("data", "model", "run")}
    return AnalysisConfig(
        **top, **run, data=dict(raw.get("data", {})), model=dict(raw.get("model", {"demo": True}))
    )


def load_dataset(spec: dict[str, Any]) -> Sequence[Item]:
    """A data set from its config table: ``kind`` = ``coco`` (``images``, ``captions``,
    ``instances``), ``folder`` (``root``, ``captions``), ``classes`` (``root``) or ``scenes``
    (``n``, ``seed``)."""
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
    raise ValueError(f"data.kind must be coco, folder, classes or scenes, got {kind!r}")


def load_model(spec: dict[str, Any]) -> Any:
    """A model from its config table: ``demo = true``, or ``lm``/``encoder``/``projection``
    (+ ``api``, ``device``, ``dtype``, ``prompt``) as for ``from_parts``."""
    spec = dict(spec)
    if str(spec.get("device", "")) == "cuda" and "LOCAL_RANK" in os.environ:
        spec["device"] = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    if spec.pop("demo", False):
        from transformer_lens_mm.data.pretrained import load_demo_model

        return load_demo_model(spec.get("api"), device=spec.get("device"))
    from transformer_lens_mm.core.loading import from_parts

    if "dtype" in spec:
        spec["dtype"] = getattr(torch, spec["dtype"])
    return from_parts(**spec)


#: config fields that do not change the results (may differ when a run is resumed)
_FREE_FIELDS = {"out", "num_workers", "feature_cache", "shard_batches", "ablation_chunk"}


def _check_same_run(out: Path, config: AnalysisConfig) -> None:
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
    before = {**json.loads(json.dumps(defaults)), **json.loads(path.read_text())}
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = sorted(
        k for k in set(before) | set(now) if k not in _FREE_FIELDS and before.get(k) != now.get(k)
    )
    if changed:
        raise ValueError(
            f"{out} holds a run made with other settings ({', '.join(changed)} differ): its "
            "finished shards would be mixed with new ones. Choose another `out`, or delete "
            f"{out} to start again."
        )


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _shard_name(batch: int) -> str:
    return f"b{batch:07d}"


def _done_batches(shards: Path) -> set[int]:
    return {int(p.name[1:8]) for p in shards.glob("b*-items.parquet")}


def _write_parquet(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda t: table.to_parquet(t, index=False))


def _write_shard(shards: Path, first_batch: int, items, units, maps, tables) -> None:
    name = _shard_name(first_batch)
    _write_parquet(shards / f"{name}-units.parquet", units)
    atomic_write(
        shards / f"{name}-maps.safetensors",
        lambda t: save_file({"maps": maps.contiguous()}, t),
    )
    for table_name, table in tables.items():
        _write_parquet(shards / f"{name}-{table_name}.parquet", table)
    # written last: its presence marks the shard as done
    _write_parquet(shards / f"{name}-items.parquet", items)


def _ablation(model, batch, attr, targets, rows, batch_index: int, config: AnalysisConfig):
    """The ablation sweep of one batch (seeded by the batch index: same draws on resume)."""
    ranked = attr.ranked_units("max", limit=max(config.ablation_ks))
    table = ablation_sweep(
        model,
        batch,
        [t.token_id for t in targets],
        ranked,
        ks=config.ablation_ks,
        n_random=config.ablation_random,
        seed=batch_index,
        chunk_size=config.ablation_chunk,
    )
    return _tag(table, rows)


def _ablation_captions(model, base, attr, texts, rows, batch_index: int, config):
    """Captions regenerated with each image's top-k units zeroed at the image positions, and
    with k random units of the same layers (seeded by the batch index)."""
    k = config.ablation_captions_k
    top = attr.ranked_units("max", limit=k)
    rnd = [random_units_like(model, u, seed=batch_index * 10_007 + i) for i, u in enumerate(top)]
    out = [(i, "none", 0, text) for i, text in enumerate(texts)]
    for kind, units in (("top", top), ("random", rnd)):
        caps = captions_under_ablation(
            model,
            None,
            per_row_masks(model, units),
            batch=base,
            max_new_tokens=config.max_new_tokens,
        )
        out += [(i, kind, k, text) for i, text in enumerate(caps.texts)]
    table = pd.DataFrame(out, columns=["image", "kind", "k", "caption"])
    table = _tag(table.sort_values(["image"], kind="stable").reset_index(drop=True), rows)
    table["keeps_target"] = [
        any(same_word(w, t) for w in cap.replace(".", " ").split())
        for cap, t in zip(table["caption"], table["target"])
    ]
    return table


def _soft_prompts(model, base, targets, rows, batch_index: int, config: AnalysisConfig):
    """Nearest tokens of each image's soft prompts and of as many norm-matched random vectors."""
    embeds = model.embed_images(base).cpu()  # [n, n_img, d_model]
    table = soft_prompt_table(model, embeds, k=config.soft_prompt_tokens, seed=batch_index)
    table["is_target"] = [
        same_word(tok, targets[i].token) for tok, i in zip(table["token"], table["image"])
    ]
    return _tag(table, rows)


def _tag(table: pd.DataFrame, rows: list[tuple[Any, int, str]]) -> pd.DataFrame:
    """Replace a batch-local ``image`` column by the items' ``item``, ``index``, ``target``."""
    local = table.pop("image").tolist()
    table.insert(0, "target", [rows[i][2] for i in local])
    table.insert(0, "index", [rows[i][1] for i in local])
    table.insert(0, "item", [rows[i][0] for i in local])
    return table


def _analyse_batch(model, data, loaded, batch_index: int, config: AnalysisConfig):
    items, units, maps = [], [], []
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    failures = dict(loaded.failures)
    ids, idx, pixels = list(loaded.ids), list(loaded.indices), loaded.pixel_values
    if pixels is not None:
        pixels = pixels.to(model.image_encoder.device)
        if config.caption_source == "model":
            caps = generate_captions(
                model, pixel_values=pixels, max_new_tokens=config.max_new_tokens
            )
            texts, token_lists = caps.texts, caps.tokens.tolist()
        else:
            texts = [(data[i].captions or [""])[0] for i in idx]
            token_lists = [
                model.tokenizer.encode(" " + t.strip(), add_special_tokens=False) for t in texts
            ]
        found = targets_from_captions(
            model.tokenizer, token_lists, eos_token_id=model.tokenizer.eos_token_id
        )
        keep = [j for j, t in enumerate(found) if t is not None]
        for j, t in enumerate(found):
            if t is None:
                failures[ids[j]] = f"no noun in the caption {texts[j]!r}"
        if keep:
            base = model.prepare_inputs(pixel_values=pixels[keep])
            targets = [found[j] for j in keep]
            rows = [(ids[j], idx[j], t.token) for j, t in zip(keep, targets)]  # type: ignore[union-attr]
            batch = target_inputs(model, base, targets)  # type: ignore[arg-type]
            attr = attribute(
                model,
                batch,
                [t.token_id for t in targets],  # type: ignore[union-attr]
                layers=config.layers,
                top_k=config.k,
                rank_units=config.units_to_rank or None,
            )
            table = attr.top_k(attr.best_scores.shape[1], model=model, n_tokens=10)  # type: ignore[union-attr]
            table["interpretable"] = [is_interpretable(t) for t in table["tokens"]]
            layers = sorted(set(table["layer"].tolist()))
            acts = image_mlp_activations(model, base, layers)  # [n, L, n_img, d_mlp]
            slot = {layer: s for s, layer in enumerate(layers)}
            maps.append(
                acts[
                    torch.tensor(table["image"].tolist()),
                    torch.tensor([slot[x] for x in table["layer"]]),
                    :,
                    torch.tensor(table["unit"].tolist()),
                ].half()
            )
            units.append(_tag(table, rows))
            if config.wants("ablation"):
                tables["ablation"].append(
                    _ablation(model, batch, attr, targets, rows, batch_index, config)
                )
            if config.wants("ablation_captions"):
                tables["ablation_captions"].append(
                    _ablation_captions(
                        model, base, attr, [texts[j] for j in keep], rows, batch_index, config
                    )
                )
            if config.wants("soft_prompts"):
                tables["soft_prompts"].append(
                    _soft_prompts(model, base, targets, rows, batch_index, config)
                )
        for j in range(len(ids)):
            t = found[j]
            items.append(
                {
                    "index": idx[j],
                    "item": ids[j],
                    "batch": batch_index,
                    "caption": texts[j],
                    "target": None if t is None else t.token,
                    "target_id": None if t is None else t.token_id,
                    "noun": None if t is None else t.word,
                    "failure": failures.get(ids[j]),
                }
            )
    for i, key, why in loaded.failed:
        items.append(
            {
                "index": i,
                "item": key,
                "batch": batch_index,
                "caption": None,
                "target": None,
                "target_id": None,
                "noun": None,
                "failure": why,
            }
        )
    return items, units, maps, tables


def run_analysis(
    config: AnalysisConfig | str | os.PathLike,
    *,
    model: Any = None,
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
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, config)
    if rank == 0:
        atomic_write(
            out / "config.json",
            lambda t: Path(t).write_text(json.dumps(dataclasses.asdict(config), indent=1)),
        )
    data = data if data is not None else load_dataset(config.data)
    n = len(data) if config.limit is None else min(config.limit, len(data))
    model = model if model is not None else load_model(config.model)
    if config.feature_cache:
        model.attach_feature_cache(config.feature_cache)
    most = config.units_to_rank
    n_layers = len(config.layers) if config.layers is not None else int(model.cfg.n_layers)
    if most > n_layers * int(model.cfg.d_mlp):
        raise ValueError(
            f"ablation_ks/ablation_captions_k go up to {most} but the scored layers hold "
            f"{n_layers * int(model.cfg.d_mlp)} MLP units: use smaller ks"
        )

    bs = config.batch_size
    n_batches = (n + bs - 1) // bs
    mine = [b for b in range(n_batches) if b % world == rank]
    done = _done_batches(shards)
    todo = [b for b in mine if b not in done]
    skipped = sum(min(bs, n - b * bs) for b in mine if b in done)
    t0 = time.perf_counter()
    bar = tqdm(
        total=sum(min(bs, n - b * bs) for b in todo),
        unit="img",
        desc=f"analyze[{rank}/{world}]" if world > 1 else "analyze",
        disable=not verbose,
    )
    n_failed = 0
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
            it, un, mp, tb = _analyse_batch(model, data, loaded, b, config)
            items += it
            units += un
            maps += mp
            for name in TABLES:
                tables[name] += tb[name]
            bar.update(len(loaded.ids) + len(loaded.failures))
        items_df = pd.DataFrame(items)
        n_failed += int(items_df["failure"].notna().sum()) if len(items_df) else 0
        units_df = pd.concat(units, ignore_index=True) if units else pd.DataFrame()
        maps_t = torch.cat(maps) if maps else torch.zeros(0, 0, dtype=torch.float16)
        extra = {
            name: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            for name, parts in tables.items()
            if config.wants(name)
        }
        _write_shard(shards, group[0], items_df, units_df, maps_t, extra)
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    summary: dict[str, Any] = {}
    if rank == 0:
        items_all, units_all, maps_all, tables_all = _merge(shards)
        _write_parquet(out / "items.parquet", items_all)
        _write_parquet(out / "units.parquet", units_all)
        for name, table in tables_all.items():
            _write_parquet(out / f"{name}.parquet", table)
        atomic_write(
            out / "maps.safetensors", lambda t: save_file({"maps": maps_all.contiguous()}, t)
        )
        failed = items_all[items_all["failure"].notna()] if len(items_all) else items_all
        summary = {
            "items": n,
            "done": len(items_all) - len(failed),
            "failed": len(failed),
            "skipped_already_done": skipped,
            "seconds": round(time.perf_counter() - t0, 1),
            "failures": dict(zip(failed["item"], failed["failure"])) if len(failed) else {},
        }
        atomic_write(
            out / "summary.json", lambda t: Path(t).write_text(json.dumps(summary, indent=1))
        )
        from transformer_lens_mm.pipelines.experiments import analysis_report

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


def _merge(shards: Path):
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
    if name not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {name!r}")
    path = Path(out) / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: set {TABLE_SWITCHES[name]} in the run's config and run or "
            "resume it"
        )
    return pd.read_parquet(path)
