"""`run_analysis`: results equal the direct computation, bad items are recorded, a run killed
with SIGKILL resumes to the same result, and a 2-process torchrun equals a 1-process run."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import build_model
from PIL import Image

from transformer_lens_mm.analyze import AnalysisConfig, load_config, load_results, run_analysis
from transformer_lens_mm.attribution import attribute
from transformer_lens_mm.cli import main
from transformer_lens_mm.datasets import CaptionFolder
from transformer_lens_mm.experiments import analysis_report
from transformer_lens_mm.spatial import image_mlp_activations
from transformer_lens_mm.targets import target_inputs, targets_from_captions

TESTS = Path(__file__).parent
CAPTIONS = ["a red circle on the left", "a blue square", "the big dog", "a green star"]


def write_folder(root: Path, n: int, bad: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f'{{"file": "{i}.png", "caption": "{CAPTIONS[i % len(CAPTIONS)]}"}}')
    if bad:
        (root / "corrupt.png").write_bytes(b"\x89PNG truncated")
        lines.insert(2, '{"file": "corrupt.png", "caption": "a red circle"}')
        lines.insert(5, '{"file": "missing.png", "caption": "a blue square"}')
        lines.insert(6, '{"file": "0.png", "id": "no-noun", "caption": "on the of"}')
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def config(out, data_root, **kw) -> AnalysisConfig:
    return AnalysisConfig(
        out=str(out),
        data={"kind": "folder", "root": str(data_root)},
        caption_source="data",
        k=5,
        batch_size=3,
        shard_batches=1,
        **kw,
    )


def test_results_equal_the_direct_computation(lm_dirs, tmp_path):
    model = build_model(lm_dirs["gptj"], "bridge")
    root = write_folder(tmp_path / "data", 6)
    summary = run_analysis(config(tmp_path / "out", root), model=model, verbose=False)
    assert summary["items"] == 9 and summary["failed"] == 3 and summary["done"] == 6
    assert set(summary["failures"]) == {"corrupt.png", "missing.png", "no-noun"}
    assert "no noun" in summary["failures"]["no-noun"]
    items, units, maps = load_results(tmp_path / "out")
    assert len(items) == 9 and items["item"].is_unique
    assert len(units) == 6 * 5 and maps.shape == (30, 16)

    data = CaptionFolder(root)
    good = [i for i in range(len(data)) if data[i].id in set(units["item"])]
    batch = model.prepare_inputs([data[i].image() for i in good])
    toks = [
        model.tokenizer.encode(" " + data[i].captions[0], add_special_tokens=False) for i in good
    ]
    targets = targets_from_captions(model.tokenizer, toks)
    ref = attribute(
        model, target_inputs(model, batch, targets), [t.token_id for t in targets], top_k=5
    ).top_k(5)
    assert np.allclose(units["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-5)
    assert (
        units[["layer", "unit", "position"]].to_numpy()
        == ref[["layer", "unit", "position"]].to_numpy()
    ).all()
    acts = image_mlp_activations(model, batch)
    row = units.iloc[7]
    j = good.index(int(row["index"]))
    expect = acts[j, int(row["layer"]), :, int(row["unit"])]
    torch.testing.assert_close(maps[7].float(), expect, atol=2e-3, rtol=1e-2)  # stored as fp16

    page = (tmp_path / "out" / "report.html").read_text()
    assert "Most frequent units" in page and "data:image/png;base64," in page
    assert "no-noun" in page  # the failures are listed
    iou = pd.DataFrame({"category": ["dog", "dog"], "kind": ["top", "random"], "iou": [0.3, 0.1]})
    analysis_report(tmp_path / "out", data, iou=iou)
    assert "Spatial selectivity by category" in (tmp_path / "out" / "report.html").read_text()

    again = run_analysis(config(tmp_path / "out", root), model=model, verbose=False)
    assert again["skipped_already_done"] == 9  # nothing recomputed


SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from helpers import build_model
from transformer_lens_mm.analyze import AnalysisConfig, run_analysis
model = build_model({lm!r}, "bridge")
cfg = AnalysisConfig(out=sys.argv[1], data={{"kind": "folder", "root": {root!r}}},
                     caption_source="data", k=5, batch_size=2, shard_batches=1)
run_analysis(cfg, model=model, verbose=False)
"""


def _script(tmp_path, lm_dirs, root) -> Path:
    path = tmp_path / "run.py"
    path.write_text(
        textwrap.dedent(SCRIPT.format(tests=str(TESTS), lm=str(lm_dirs["gptj"]), root=str(root)))
    )
    return path


def _same(a: Path, b: Path) -> None:
    (ia, ua, ma), (ib, ub, mb) = load_results(a), load_results(b)
    pd.testing.assert_frame_equal(ia, ib)
    pd.testing.assert_frame_equal(ua, ub)
    assert torch.equal(ma, mb)


def test_killed_run_resumes_to_the_same_result(lm_dirs, tmp_path):
    root = write_folder(tmp_path / "data", 40, bad=False)
    script = _script(tmp_path, lm_dirs, root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "full")], check=True, env=env)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")], env=env)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*-items.parquet"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    n_done = len(list(shards.glob("*-items.parquet")))
    assert 3 <= n_done < 20, "the run was not interrupted mid-way"
    assert not (tmp_path / "killed" / "items.parquet").exists()
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed")], check=True, env=env)
    assert len(list(shards.glob("*-items.parquet"))) == 20
    _same(tmp_path / "full", tmp_path / "killed")


def test_torchrun_two_processes_equal_one(lm_dirs, tmp_path):
    root = write_folder(tmp_path / "data", 10)
    script = _script(tmp_path, lm_dirs, root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            str(script),
            str(tmp_path / "two"),
        ],
        check=True,
        env=env,
    )
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").glob("*-items.parquet"))
    assert len(shards) == 7  # 13 items in batches of 2, shared by both ranks
    _same(tmp_path / "one", tmp_path / "two")


def test_config_files_and_cli(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('out = "runs/x"\n[data]\nkind = "scenes"\nn = 4\n[run]\nk = 7\n')
    cfg = load_config(toml)
    assert cfg.k == 7 and cfg.data == {"kind": "scenes", "n": 4} and cfg.model == {"demo": True}
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("out: runs/y\ndata: {kind: classes, root: /x}\nrun: {batch_size: 2}\n")
    assert load_config(yaml_path).batch_size == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\n[run]\nbatchsize = 2\n')
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(bad)
    assert main(["analyze", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
