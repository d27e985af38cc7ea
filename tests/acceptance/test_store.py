"""The run store survives faults: a shard killed mid-write, truncated or corrupted on disk is
recomputed on resume and never merged; a second process on one run folder is refused; a full
disk mid-write leaves every finished shard intact; a folder in another store format is refused.
Every recovered run's tables equal an undisturbed run's."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import build_model
from test_analyze import write_folder

from transformer_lens_mm.errors import DiskFullError, StoreError, TLMMError
from transformer_lens_mm.pipelines.analyze import AnalysisConfig, load_results, run_analysis
from transformer_lens_mm.pipelines.analyze.store import (
    STORE_FORMAT,
    done_batches,
    merge_shards,
    run_lock,
)


def _config(out: Path, root: Path) -> AnalysisConfig:
    # 4 batches of 2 items in shards of 2 batches: a shard holds more than one batch
    return AnalysisConfig(
        out=str(out),
        data={"kind": "folder", "root": str(root)},
        caption_source="data",
        k=4,
        batch_size=2,
        shard_batches=2,
        ablation_ks=[0, 2],
        soft_prompts=True,
        soft_prompt_tokens=2,
    )


@pytest.fixture(scope="module")
def clean_run(lm_dirs, tmp_path_factory):
    """An undisturbed run (the reference) and what it needs to run again."""
    tmp = tmp_path_factory.mktemp("store")
    model = build_model(lm_dirs["gptj"], "bridge")
    root = write_folder(tmp / "data", 8, bad=False)
    run_analysis(_config(tmp / "clean", root), model=model, verbose=False)
    return model, root, tmp / "clean"


def _tables(out: Path) -> dict:
    items, units, maps = load_results(out)
    tables = {"items": items, "units": units}
    for name in ("ablation", "soft_prompts"):
        tables[name] = pd.read_parquet(out / f"{name}.parquet")
    return {**tables, "maps": maps}


def _assert_same_run(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert torch.equal(ta.pop("maps"), tb.pop("maps"))
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], obj=name)


def _copy(clean: Path, to: Path) -> Path:
    shutil.copytree(clean, to)
    for merged in to.glob("*.*"):  # the shards only, as a run that stopped before merging
        if merged.name not in ("config.json", "store.json", "run.lock"):
            merged.unlink()
    return to


def test_manifests_list_every_batch_of_a_shard(clean_run):
    _, _, clean = clean_run
    manifests = sorted((clean / "shards").glob("*-manifest.json"))
    assert [m.name for m in manifests] == ["b0000000-manifest.json", "b0000002-manifest.json"]
    entry = json.loads(manifests[1].read_text())
    assert entry["batches"] == [2, 3] and entry["format"] == STORE_FORMAT
    assert "b0000002-ablation.parquet" in entry["files"]
    assert done_batches(clean / "shards") == {0, 1, 2, 3}
    assert json.loads((clean / "store.json").read_text())["format"] == STORE_FORMAT


def test_a_shard_killed_mid_write_is_recomputed_once(clean_run, tmp_path):
    model, root, clean = clean_run
    run = _copy(clean, tmp_path / "run")
    shards = run / "shards"
    # killed after two of its files were written (no manifest), one temporary left behind
    (shards / "b0000002-manifest.json").unlink()
    (shards / "b0000002-items.parquet").unlink()
    (shards / ".b0000002-items.parquet.0123abcd.tmp").write_bytes(b"PAR1 half")
    summary = run_analysis(_config(run, root), model=model, verbose=False)
    # batches 0 and 1 (shard b0000000) were kept: only the killed shard's 4 items recomputed
    assert summary["skipped_already_done"] == 4
    assert not list(shards.glob(".*.tmp"))
    _assert_same_run(clean, run)


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_a_damaged_shard_is_recomputed_never_merged(clean_run, tmp_path, damage):
    model, root, clean = clean_run
    run = _copy(clean, tmp_path / "run")
    shards = run / "shards"
    target = {
        "truncate": shards / "b0000000-units.parquet",
        "flip a byte": shards / "b0000002-maps.safetensors",
        "delete": shards / "b0000002-ablation.parquet",
    }[damage]
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip a byte":
        data[-3] ^= 0xFF  # inside the fp16 maps: still a loadable safetensors file
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    # merging as it is refuses, names the shard, and removes it
    with pytest.raises(StoreError, match=target.name.split("-")[0]) as refused:
        merge_shards(shards)
    assert "run the same command again" in str(refused.value).lower()
    assert not list(shards.glob(f"{target.name.split('-')[0]}-*"))
    summary = run_analysis(_config(run, root), model=model, verbose=False)
    assert summary["skipped_already_done"] == 4
    _assert_same_run(clean, run)


def test_resume_drops_a_damaged_shard_found_at_start(clean_run, tmp_path):
    model, root, clean = clean_run
    run = _copy(clean, tmp_path / "run")
    units = run / "shards" / "b0000002-units.parquet"
    units.write_bytes(units.read_bytes()[:-10])
    assert done_batches(run / "shards") == {0, 1}  # checked, not trusted, and removed
    assert not units.exists()
    run_analysis(_config(run, root), model=model, verbose=False)
    _assert_same_run(clean, run)


HOLD = """
import sys, time
from transformer_lens_mm.pipelines.analyze.store import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_process_on_one_run_folder_is_refused(clean_run, tmp_path):
    model, root, _ = clean_run
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"in use by another run \\(pid {holder.pid}"):
            run_analysis(_config(out, root), model=model, verbose=False)
        assert not (out / "shards").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process (a killed run never blocks its resume)
    run_analysis(_config(out, root), model=model, verbose=False)
    with run_lock(out), pytest.raises(StoreError, match="in use"):  # also within one process
        run_analysis(_config(out, root), model=model, verbose=False)


def test_a_full_disk_mid_write_keeps_the_finished_shards(clean_run, tmp_path, monkeypatch):
    model, root, clean = clean_run
    out = tmp_path / "run"
    real = pd.DataFrame.to_parquet
    calls = {"n": 0}

    def fills_up(self, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the second shard: half a file, then ENOSPC
            Path(path).write_bytes(b"PAR1" + b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fills_up)
    with pytest.raises(DiskFullError, match="disk is full") as full:
        run_analysis(_config(out, root), model=model, verbose=False)
    assert isinstance(full.value, OSError) and isinstance(full.value, TLMMError)
    assert full.value.errno == errno.ENOSPC and "1 finished shards are intact" in str(full.value)
    shards = out / "shards"
    assert done_batches(shards) == {0, 1}  # the first shard verifies
    assert not list(shards.glob(".*.tmp"))  # the half-written file was removed
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    summary = run_analysis(_config(out, root), model=model, verbose=False)
    assert summary["skipped_already_done"] == 4
    _assert_same_run(clean, out)


def test_a_run_folder_of_another_store_format_is_refused(clean_run, tmp_path):
    model, root, clean = clean_run
    run = _copy(clean, tmp_path / "run")
    (run / "store.json").write_text(json.dumps({"format": 9, "written_by": "tlmm 9.0"}))
    with pytest.raises(StoreError, match=rf"store format 9 \(tlmm 9.0\).*format {STORE_FORMAT}"):
        run_analysis(_config(run, root), model=model, verbose=False)
    (run / "store.json").unlink()  # shards without store.json: written before checksums
    with pytest.raises(StoreError, match="store format 1"):
        run_analysis(_config(run, root), model=model, verbose=False)
    (run / "store.json").write_text(json.dumps({"format": STORE_FORMAT}))
    run_analysis(_config(run, root), model=model, verbose=False)  # the right format resumes
    _assert_same_run(clean, run)
