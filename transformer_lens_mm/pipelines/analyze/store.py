"""The on-disk format of a run: shards written atomically as they are made, merged at the end.

Per shard (``shards/b<first batch>-<table>``):

* ``units.parquet``: top-k rows (the search's schema: item, index, target, rank, layer, unit,
  position, score, activation, tokens, interpretable, decodes_to_target),
* ``maps.safetensors``: ``maps[row]`` = that row's unit over the image patches (fp16),
* ``ablation.parquet``, ``ablation_captions.parquet``, ``soft_prompts.parquet``,
  ``cross_concept.parquet``, ...: the optional tables the config asks for,
* ``items.parquet``: one row per item (index, item, batch, caption, target, target_id, noun,
  failure),
* ``manifest.json``, written last: the shard's batches and each file's size and SHA-256. A shard
  counts as done only when its manifest exists and every checksum holds; a shard killed while
  being written, truncated or corrupted later is removed and recomputed on resume, never merged.

The run folder also holds ``store.json`` (the store format and the package version: a folder in
another format is refused), ``config.json`` (a resumed run must have the same settings) and
``run.lock`` (held by the process writing the run: a second one is refused). A disk that fills up
mid-write raises :class:`~transformer_lens_mm.errors.DiskFullError` and leaves every finished
shard intact.

The merged run has ``items.parquet``, ``units.parquet``, ``maps.safetensors``, one parquet
file per step table, and the steps' run tables (``generic_units.parquet``,
``concept_specificity.parquet``, ``lens_shares.parquet``, ...: the runner writes them);
:func:`load_results` and :func:`load_table` read them.

Example:
    >>> items, units, maps = load_results("runs/coco-gptj")  # doctest: +SKIP
    >>> sweep = load_table("runs/coco-gptj", "ablation")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock (one process per run folder)
    fcntl = None  # type: ignore[assignment]

import pandas as pd
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.errors import ConfigError, DiskFullError, MissingFileError, StoreError
from transformer_lens_mm.pipelines.analyze.config import AnalysisConfig, table_steps

__all__ = [
    "STORE_FORMAT",
    "RunTables",
    "check_same_run",
    "check_store",
    "done_batches",
    "load_results",
    "load_table",
    "merge_shards",
    "run_lock",
    "write_config",
    "write_merged",
    "write_parquet",
    "write_shard",
    "write_store_version",
]

#: version of the on-disk layout (2: per-shard manifests with checksums, ``store.json``; 3: the
#: items' ``target_prefix`` (what a ``revisit`` step rebuilds a batch from), random draws seeded
#: by the data-set index of each batch's first item: a format-2 run resumed now would mix draws)
STORE_FORMAT = 3

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifests(shards: Path) -> list[Path]:
    return sorted(shards.glob("b*-manifest.json"))


def _check_shard(manifest: Path) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` if every file it lists is on disk with its size and checksum, else
    ``(None, what is wrong)``."""
    try:
        entry = json.loads(manifest.read_text())
        for name, want in entry["files"].items():
            path = manifest.parent / name
            if path.stat().st_size != want["bytes"]:
                return None, f"{name} has {path.stat().st_size} bytes, not {want['bytes']}"
            if _sha256(path) != want["sha256"]:
                return None, f"{name} fails its checksum"
        return entry, None
    except FileNotFoundError as e:
        return None, f"{Path(e.filename or '?').name} is missing"
    except (ValueError, KeyError, TypeError) as e:  # a manifest that is not what we write
        return None, f"{manifest.name} is unreadable ({e})"


def _shard_files(shards: Path, name: str) -> list[Path]:
    """Every file of shard ``name``, finished or a temporary left by a killed write."""
    return [*shards.glob(f"{name}-*"), *shards.glob(f".{name}-*.tmp")]


def done_batches(shards: Path, *, owned: Callable[[int], bool] | None = None) -> set[int]:
    """The batches whose shard is complete and intact on disk (its manifest's checksums hold).

    A shard without a manifest (its process was killed while writing it) or failing its
    checksums (truncated or corrupted since) does not count, and its files are removed when
    ``owned(first batch)`` says this process is the one that writes shards of that name (under
    torchrun, batch ``b``'s rank), so its batches are recomputed, never merged.
    """
    done: set[int] = set()
    names = {p.name.split("-")[0] for p in shards.glob("b*-*")}
    names |= {p.name[1:].split("-")[0] for p in shards.glob(".b*-*.tmp")}
    for name in sorted(names):
        manifest = shards / f"{name}-manifest.json"
        entry, _ = _check_shard(manifest) if manifest.is_file() else (None, "no manifest")
        if entry is not None:
            done.update(entry["batches"])
        elif owned is None or owned(int(name[1:])):
            for path in _shard_files(shards, name):
                path.unlink(missing_ok=True)
    return done


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda t: table.to_parquet(t, index=False))


def _disk_full(error: OSError, where: Path) -> DiskFullError:
    done = len(_manifests(where.parent)) if where.parent.name == "shards" else None
    kept = f" The {done} finished shards are intact." if done is not None else ""
    return DiskFullError(
        errno.ENOSPC,
        f"the disk is full: writing {where} failed ({error}).{kept} Free some space and run the "
        "same command again: the run resumes where it stopped.",
    )


def write_shard(
    shards: Path,
    batches: Sequence[int],
    items: pd.DataFrame,
    units: pd.DataFrame,
    maps: torch.Tensor,
    tables: Mapping[str, pd.DataFrame],
) -> None:
    """Write one shard (the results of ``batches``), its manifest last: only a shard whose
    manifest exists and whose checksums hold counts as done (:func:`done_batches`)."""
    name = _shard_name(batches[0])
    files = {f"{name}-units.parquet": units, f"{name}-maps.safetensors": maps}
    files.update({f"{name}-{t}.parquet": table for t, table in tables.items()})
    files[f"{name}-items.parquet"] = items
    path = shards
    try:
        for file, value in files.items():
            path = shards / file
            if isinstance(value, torch.Tensor):
                tensor = value.contiguous()
                atomic_write(path, lambda t, x=tensor: save_file({"maps": x}, t))
            else:
                write_parquet(path, value)
        manifest = {
            "format": STORE_FORMAT,
            "batches": [int(b) for b in batches],
            "files": {
                f: {"bytes": (shards / f).stat().st_size, "sha256": _sha256(shards / f)}
                for f in files
            },
        }
        path = shards / f"{name}-manifest.json"
        atomic_write(path, lambda t: Path(t).write_text(json.dumps(manifest, indent=1)))
    except OSError as e:
        if e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
            raise _disk_full(e, path) from e
        raise


@dataclass
class RunTables:
    """A run's results, in data-set order: what :func:`merge_shards` gives and
    :func:`write_merged` writes.

    Attributes:
        items: One row per item (index, item, batch, caption, target, target_id, noun, failure).
        units: The top-k rows of the search (``maps[i]`` belongs to ``units.iloc[i]``).
        maps: Each top-k row's unit over the image patches (fp16), ``[row, patch]``.
        tables: The optional tables the config asked for, by name (``"ablation"``, ...).
    """

    items: pd.DataFrame
    units: pd.DataFrame
    maps: Float[torch.Tensor, "row patch"]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        """The optional table ``name``, or ``None`` when the run did not make it."""
        return self.tables.get(name)


def merge_shards(shards: Path) -> RunTables:
    """Every finished shard's tables, merged in data-set order (identical whatever the
    number of processes or interruptions).

    Raises:
        StoreError: A shard fails its checksums (it is removed: resuming recomputes it).
    """
    items, units, maps = [], [], []
    tables: dict[str, list[pd.DataFrame]] = {}
    bad = {}
    for manifest in _manifests(shards):
        entry, problem = _check_shard(manifest)
        if entry is None:
            bad[manifest.name[: -len("-manifest.json")]] = problem
            continue
        name = manifest.name[: -len("-manifest.json")]
        items.append(pd.read_parquet(shards / f"{name}-items.parquet"))
        table = pd.read_parquet(shards / f"{name}-units.parquet")
        m = load_file(shards / f"{name}-maps.safetensors")["maps"]
        if len(table):
            units.append(table)
            maps.append(m)
        for file in entry["files"]:  # the steps' tables: b<batch>-<table>.parquet
            extra = file[len(name) + 1 : -len(".parquet")]
            if file.endswith(".parquet") and extra not in ("items", "units"):
                tables.setdefault(extra, []).append(pd.read_parquet(shards / file))
    if bad:
        for name in bad:
            for path in _shard_files(shards, name):
                path.unlink(missing_ok=True)
        raise StoreError(
            f"{len(bad)} shard(s) in {shards} changed on disk after they were written ("
            + "; ".join(f"{n}: {p}" for n, p in sorted(bad.items()))
            + "): they were removed, not merged. Run the same command again to recompute them."
        )
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
    return RunTables(items_df, units_df, maps_t, merged)


def write_merged(out: Path, merged: RunTables) -> None:
    """Write the merged tables of :func:`merge_shards` into the run folder."""
    path = out
    try:
        everything = {"items": merged.items, "units": merged.units, **merged.tables}
        for name, table in everything.items():
            path = out / f"{name}.parquet"
            write_parquet(path, table)
        path = out / "maps.safetensors"
        maps = merged.maps.contiguous()
        atomic_write(path, lambda t: save_file({"maps": maps}, t))
    except OSError as e:
        if e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
            raise _disk_full(e, path) from e
        raise


def check_store(out: Path) -> None:
    """Refuse a run folder written in another store format (its shards could not be checked
    or merged). A folder without ``store.json`` but with shards predates the format."""
    path = out / "store.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("format") == STORE_FORMAT:
            return
        what = f"store format {found.get('format')} ({found.get('written_by', 'unknown version')})"
    elif any((out / "shards").glob("b*")):
        what = "store format 1 (transformer_lens_mm 0.1.0 before checksummed shards)"
    else:
        return
    raise StoreError(
        f"{out} was written by {what}; this is transformer_lens_mm {_version()} with store "
        f"format {STORE_FORMAT}, which cannot resume it (its shards are laid out, checked or "
        "seeded differently: a resumed run would mix them). Finish that run with the version "
        "that began it, or choose another `out` (or delete the folder) to start again."
    )


def write_store_version(out: Path) -> None:
    """``store.json``: the store format and the package version that wrote the run."""
    info = {"format": STORE_FORMAT, "written_by": f"transformer_lens_mm {_version()}"}
    atomic_write(out / "store.json", lambda t: Path(t).write_text(json.dumps(info, indent=1)))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer_lens_mm")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "unknown"


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder for this process (``out/run.lock``, released when it ends, killed
    included); a second process asking for it gets :class:`StoreError` at once.

    Example:
        >>> with run_lock("runs/coco-gptj"):  # doctest: +SKIP
        ...     pass
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"{out} is in use by another run ({holder}): two processes writing one run "
                "folder would mix their shards. Wait for it to finish (or stop it), then run "
                "again; to use more processes on one run, start it once under torchrun."
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}".encode())
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def load_results(out: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor]:
    """``(items, units, maps)`` of a finished run (``maps[i]`` belongs to ``units.iloc[i]``)."""
    out = Path(out)
    if not (out / "items.parquet").is_file():
        raise MissingFileError(f"{out} holds no merged results: run or resume the analysis first")
    maps = load_file(out / "maps.safetensors")["maps"]
    return pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "units.parquet"), maps


def load_table(out: str | os.PathLike, name: str) -> pd.DataFrame:
    """A step's table of a finished run (``"ablation"``, ``"soft_prompts"``, ``"spatial"``,
    ``"generic_units"``, ...: :func:`~transformer_lens_mm.pipelines.analyze.config.
    table_steps` lists them with their steps).

    Example:
        >>> sweep = load_table("runs/coco-gptj", "ablation")  # doctest: +SKIP
        >>> ablation_curve(sweep)  # doctest: +SKIP
    """
    steps = table_steps()
    if name not in steps:
        raise ConfigError(f"table must be one of {sorted(steps)}, got {name!r}")
    path = Path(out) / f"{name}.parquet"
    if not path.is_file():
        raise MissingFileError(
            f"{path} does not exist: add the step {steps[name]!r} to [run] steps (or turn on "
            "its switch) and run or resume the analysis"
        )
    return pd.read_parquet(path)
