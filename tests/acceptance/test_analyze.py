"""`run_analysis`: results equal the direct computation, bad items are recorded, a run killed
with SIGKILL resumes to the same result, and a 2-process torchrun equals a 1-process run."""

import json
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

from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.data.datasets import CaptionFolder
from transformer_lens_mm.errors import ConfigError
from transformer_lens_mm.pipelines.analyze import (
    AnalysisConfig,
    analysis_report,
    load_config,
    load_results,
    load_table,
    run_analysis,
)
from transformer_lens_mm.pipelines.cli import main
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_soft_prompts, random_soft_prompts
from transformer_lens_mm.tools.knockout import knockout_table
from transformer_lens_mm.tools.spatial import image_mlp_activations
from transformer_lens_mm.tools.specificity import (
    concept_specificity,
    cross_concept_ablation,
    generic_units,
    specificity_ratio,
)
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions
from transformer_lens_mm.tools.units import random_units_like

TESTS = Path(__file__).resolve().parents[1]  # tests/ (helpers.py)
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


def by_hand(model, data, n):
    """The first ``n`` items' [image][prompt] input, caption targets and input + caption prefix,
    built with the tools directly (what one batch of a run with caption_source="data" sees)."""
    base = model.prepare_inputs([data[i].image() for i in range(n)])
    toks = [
        model.tokenizer.encode(" " + data[i].captions[0], add_special_tokens=False)
        for i in range(n)
    ]
    targets = targets_from_captions(model.tokenizer, toks)
    return base, targets, target_inputs(model, base, targets)


def same_top_k_as_direct(model, data, units, k=5):
    """Assert a run's top-k rows equal the attribution computed directly on the items it did
    (their data-set captions' first nouns); return those items' indices and input."""
    good = [i for i in range(len(data)) if data[i].id in set(units["item"])]
    batch = model.prepare_inputs([data[i].image() for i in good])
    toks = [
        model.tokenizer.encode(" " + data[i].captions[0], add_special_tokens=False) for i in good
    ]
    targets = targets_from_captions(model.tokenizer, toks)
    ref = attribute(
        model, target_inputs(model, batch, targets), [t.token_id for t in targets], top_k=k
    ).top_k(k)
    assert np.allclose(units["score"].to_numpy(), ref["score"].to_numpy(), atol=1e-5)
    assert (
        units[["layer", "unit", "position"]].to_numpy()
        == ref[["layer", "unit", "position"]].to_numpy()
    ).all()
    return good, batch


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
    good, batch = same_top_k_as_direct(model, data, units)
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


def test_ablation_and_soft_prompt_tables_equal_direct_calls(lm_dirs, tmp_path):
    model = build_model(lm_dirs["gptj"], default_api())  # hooked on TL 3.x
    root = write_folder(tmp_path / "data", 4, bad=False)
    cfg = config(
        tmp_path / "out",
        root,
        ablation_ks=[0, 4, 30],
        ablation_random=2,
        ablation_captions_k=30,
        soft_prompts=True,
        soft_prompt_tokens=3,
        knockout_window=1,
    )
    cfg = AnalysisConfig(**{**cfg.__dict__, "batch_size": 4})  # one batch: seed 0
    run_analysis(cfg, model=model, verbose=False)
    sweep, soft = load_table(cfg.out, "ablation"), load_table(cfg.out, "soft_prompts")

    data = CaptionFolder(root)
    base, targets, batch = by_hand(model, data, 4)
    full = attribute(model, batch, [t.token_id for t in targets])  # full tensor: exact ranking
    ref = ablation_sweep(
        model,
        batch,
        [t.token_id for t in targets],
        full.ranked_units("max", limit=30),
        ks=[0, 4, 30],
        n_random=2,
        seed=0,
    )
    assert len(sweep) == len(ref) == 4 * 3 * 3
    assert sweep["item"].tolist() == [data[i].id for i in ref["image"]]
    assert (sweep[["kind", "k", "draw"]].to_numpy() == ref[["kind", "k", "draw"]].to_numpy()).all()
    np.testing.assert_allclose(sweep["p_c"], ref["p_c"], rtol=1e-4, atol=1e-6)
    top30 = sweep[(sweep.kind == "top") & (sweep.k == 30)]["rel_p"]
    rnd30 = sweep[(sweep.kind == "random") & (sweep.k == 30)]["rel_p"]
    assert top30.mean() < rnd30.mean()  # top units matter more than random same-layer ones

    embeds = model.embed_images(base).detach().float()
    n_tok = embeds.shape[1]
    real = decode_soft_prompts(model, embeds, k=3)
    rand = decode_soft_prompts(model, random_soft_prompts(embeds, n=4 * n_tok, seed=0), k=3)
    for kind, want in (("image", real), ("random", rand)):
        got = soft[soft.kind == kind]
        assert got["token_id"].tolist() == want["token_id"].tolist()
        np.testing.assert_allclose(got["cosine"], want["cosine"], rtol=1e-5)
        assert got["patch"].tolist() == (want["index"] % n_tok).tolist()
    caps = load_table(cfg.out, "ablation_captions")
    assert caps["kind"].tolist() == ["none", "top", "random"] * 4
    ranked = full.ranked_units("max", limit=30)
    for i in range(4):
        image = data[i].image()
        for kind, units in (
            ("top", ranked[i]),
            ("random", random_units_like(model, ranked[i], seed=i)),  # batch 0: seed 0*10007+i
        ):
            want = captions_under_ablation(model, [image], units, max_new_tokens=20).texts[0]
            got = caps[(caps.item == data[i].id) & (caps.kind == kind)]["caption"].item()
            assert got == want, (i, kind)
    knock = load_table(cfg.out, "knockout")
    want = knockout_table(model, batch, [t.token_id for t in targets], pairs=[("image", "last")],
                          window=1, stride=1, n_controls=1, seed=0)  # fmt: skip
    want["item"] = [data[i].id for i in want["item"]]
    keys = ["item", "start", "kind", "draw"]
    both = knock.merge(want, on=keys, suffixes=("", "_direct"), validate="one_to_one")
    assert len(both) == len(want) == 4 * 2 * 2
    np.testing.assert_allclose(both["p_c"], both["p_c_direct"], rtol=1e-4, atol=1e-7)
    assert set(knock.kind) == {"knockout", "control"} and knock.start.max() == 1
    page = (Path(cfg.out) / "report.html").read_text()
    assert "Ablation" in page and "Soft prompts" in page and "Attention knockout" in page

    changed = AnalysisConfig(**{**cfg.__dict__, "ablation_ks": [0, 4]})
    with pytest.raises(ValueError, match="ablation_ks differ"):
        run_analysis(changed, model=model, verbose=False)
    # a run written before the sign-aware readout (no readout fields in its config.json) is
    # not mixed with new shards; it resumes as it began with the old readout asked for
    written = json.loads((Path(cfg.out) / "config.json").read_text())
    old = {k: v for k, v in written.items() if not k.startswith("readout_") and k != "dictionary"}
    (Path(cfg.out) / "config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="before the sign-aware readout"):
        run_analysis(cfg, model=model, verbose=False)
    as_before = {"readout_sign": "weights", "readout_final_norm": False, "dictionary": "web2"}
    run_analysis(AnalysisConfig(**{**cfg.__dict__, **as_before}), model=model, verbose=False)
    huge = AnalysisConfig(**{**cfg.__dict__, "ablation_ks": [0, 10**9], "out": str(tmp_path / "h")})
    with pytest.raises(ValueError, match="use smaller ks"):
        run_analysis(huge, model=model, verbose=False)


SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from helpers import build_model
from transformer_lens_mm.pipelines.analyze import AnalysisConfig, run_analysis
model = build_model({lm!r}, "bridge")
cfg = AnalysisConfig(out=sys.argv[1], data={{"kind": "folder", "root": {root!r}}},
                     caption_source="data", k=5, batch_size=2, shard_batches=1,
                     ablation_ks=[0, 2, 8], soft_prompts=True, soft_prompt_tokens=2,
                     cross_concept_ks=[2])
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
    for name in ("ablation", "soft_prompts", "cross_concept", "generic_units"):
        ta, tb = load_table(a, name), load_table(b, name)
        assert len(ta)
        if "item" in ta:
            assert ta["item"].nunique() == ua["item"].nunique()
        pd.testing.assert_frame_equal(ta, tb)


def _killed_run_resumes(tmp_path: Path, full: list[str], killed: list[str], wait_s=120) -> None:
    """Run ``full`` (writing tmp_path/full) to the end; start ``killed`` (tmp_path/killed),
    SIGKILL it once 3 of its 20 shards are written, run it again: the tables must be equal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(full, check=True, env=env)
    proc = subprocess.Popen(killed, env=env)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + wait_s
    while time.time() < deadline and len(list(shards.glob("*-manifest.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    n_done = len(list(shards.glob("*-manifest.json")))
    assert 3 <= n_done < 20, "the run was not interrupted mid-way"
    assert not (tmp_path / "killed" / "items.parquet").exists()
    subprocess.run(killed, check=True, env=env)
    assert len(list(shards.glob("*-manifest.json"))) == 20
    _same(tmp_path / "full", tmp_path / "killed")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(lm_dirs, tmp_path):
    root = write_folder(tmp_path / "data", 40, bad=False)
    script = _script(tmp_path, lm_dirs, root)
    run = [sys.executable, str(script)]
    _killed_run_resumes(tmp_path, [*run, str(tmp_path / "full")], [*run, str(tmp_path / "killed")])


@pytest.mark.slow
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
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").glob("*-manifest.json"))
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


def test_direct_scores_are_recorded_beside_the_attribution(lm_dirs, tmp_path):
    """direct_scores = true: units.direct_score, units_direct and ranking_agreement equal
    direct calls of the tools on the same inputs."""
    from transformer_lens_mm.tools.direct import compare_rankings, direct_effect

    model = build_model(lm_dirs["gptj"], default_api())
    root = write_folder(tmp_path / "data", 4, bad=False)
    cfg = AnalysisConfig(
        **{**config(tmp_path / "out", root).__dict__, "batch_size": 4, "direct_scores": True}
    )
    run_analysis(cfg, model=model, verbose=False)
    _, units, _ = load_results(cfg.out)
    direct_top = load_table(cfg.out, "units_direct")
    agreement = load_table(cfg.out, "ranking_agreement")

    data = CaptionFolder(root)
    _, targets, batch = by_hand(model, data, 4)
    tids = [t.token_id for t in targets]
    full = direct_effect(model, batch, tids)
    ref_top = full.top_k(5)
    assert direct_top["layer"].tolist() == ref_top["layer"].tolist()
    assert direct_top["unit"].tolist() == ref_top["unit"].tolist()
    assert direct_top["position"].tolist() == ref_top["position"].tolist()
    np.testing.assert_allclose(direct_top["direct_score"], ref_top["score"], atol=1e-5)
    # each attribution row's direct score: the full direct tensor at that entry
    slot = {layer: i for i, layer in enumerate(full.layers)}
    pos_slot = [{int(p): j for j, p in enumerate(full.positions[i])} for i in range(len(full))]
    ref = [
        float(
            full.scores[
                int(r.index),
                slot[int(r.layer)],
                pos_slot[int(r.index)][int(r.position)],
                int(r.unit),
            ]
        )
        for r in units.itertuples()
    ]
    np.testing.assert_allclose(units["direct_score"], ref, atol=1e-5)
    attr = attribute(model, batch, tids, top_k=5)
    ref_agree = compare_rankings(attr, full, k=5)
    np.testing.assert_allclose(agreement["overlap"], ref_agree["overlap"])
    np.testing.assert_allclose(agreement["unit_overlap"], ref_agree["unit_overlap"])
    assert agreement["spearman_top"].between(-1, 1).all()
    assert list(agreement["item"]) == list(units.drop_duplicates("item")["item"])


def test_controls_equal_direct_calls(lm_dirs, tmp_path):
    """cross_concept per batch == tools.specificity.cross_concept_ablation on that batch;
    generic_units and concept_specificity == the tools on the merged units table."""
    model = build_model(lm_dirs["gptj"], default_api())
    root = write_folder(tmp_path / "data", 4, bad=False)
    cfg = config(tmp_path / "out", root, cross_concept_ks=[3], ablation_random=1)
    cfg = AnalysisConfig(**{**cfg.__dict__, "batch_size": 4})  # one batch: seed 0
    summary = run_analysis(cfg, model=model, verbose=False)
    cross = load_table(cfg.out, "cross_concept")
    _, units, _ = load_results(cfg.out)

    data = CaptionFolder(root)
    _, targets, batch = by_hand(model, data, 4)
    full = attribute(model, batch, [t.token_id for t in targets])
    ref = cross_concept_ablation(
        model,
        batch,
        [t.token_id for t in targets],
        [t.word.lower() for t in targets],
        full.ranked_units("max", limit=3),
        ks=[0, 3],
        n_random=1,
        seed=0,
    )
    assert len(cross) == len(ref) and (ref["same"] == False).any()  # noqa: E712
    ref = ref.assign(
        item=[data[i].id for i in ref["image"]], source_item=[data[i].id for i in ref["source"]]
    )
    key = ["source_item", "item", "kind", "k", "draw"]  # the merged table is sorted by item
    got, want = cross.sort_values(key), ref.sort_values(key)
    assert got[key].values.tolist() == want[key].values.tolist()
    np.testing.assert_allclose(got["p_c"], want["p_c"], rtol=1e-4, atol=1e-6)
    assert (got["same"].to_numpy() == want["same"].to_numpy()).all()
    pd.testing.assert_frame_equal(load_table(cfg.out, "generic_units"), generic_units(units))
    pd.testing.assert_frame_equal(
        load_table(cfg.out, "concept_specificity"), concept_specificity(units)
    )
    ratio = specificity_ratio(cross).set_index("k")
    assert summary["controls"]["specificity_ratio"]["3"]["same_drop"] == pytest.approx(
        ratio.loc[3, "same_drop"], abs=1e-4
    )
    page = (Path(cfg.out) / "report.html").read_text()
    assert "Same- vs cross-concept ablation" in page and "Generic vs concept-specific" in page


NATIVE_TOML = """
out = {out!r}
caption_source = "data"
k = 5
batch_size = 2
shard_batches = 1
ablation_ks = [0, 2, 8]
soft_prompts = true
soft_prompt_tokens = 2
cross_concept_ks = [2]
[data]
kind = "folder"
root = {root!r}
[model]
native = {vlm!r}
image_size = 32
"""


def _native_config(tmp_path, name, root, vlm) -> Path:
    path = tmp_path / f"{name}.toml"
    out = str(tmp_path / name)
    path.write_text(NATIVE_TOML.format(out=out, root=str(root), vlm=str(vlm)))
    return path


@pytest.mark.parametrize("kind", ["llava", "gemma3", "qwen2_5_vl"])
def test_tlmm_analyze_on_a_native_vlm_equals_the_direct_computation(tmp_path, kind, capsys):
    from helpers import build_native_vlm

    from transformer_lens_mm.core.native import NativeVLMBridge

    vlm = build_native_vlm(tmp_path / kind, kind)
    root = write_folder(tmp_path / "data", 6)
    assert main(["analyze", str(_native_config(tmp_path, "out", root, vlm)), "--dry-run"]) == 0
    assert "architecture = " in capsys.readouterr().out
    assert main(["analyze", str(_native_config(tmp_path, "out", root, vlm))]) == 0
    out = tmp_path / "out"
    items, units, maps = load_results(out)
    assert len(items) == 9 and items["failure"].notna().sum() == 3  # per-item failures recorded
    assert len(units) == 6 * 5 and maps.shape == (30, 16)
    for name in ("ablation", "soft_prompts", "cross_concept", "generic_units"):
        assert len(load_table(out, name))

    model = NativeVLMBridge.from_pretrained(vlm, image_size=32)
    _, base = same_top_k_as_direct(model, CaptionFolder(root), units)
    assert (units["position"].isin(base.image_positions[0].tolist())).all()


@pytest.mark.slow
def test_tlmm_analyze_on_a_native_vlm_resumes_after_sigkill(tmp_path):
    from helpers import build_native_vlm

    vlm = build_native_vlm(tmp_path / "llava", "llava")
    root = write_folder(tmp_path / "data", 40, bad=False)
    cli = [sys.executable, "-m", "transformer_lens_mm", "analyze"]
    full, killed = (_native_config(tmp_path, name, root, vlm) for name in ("full", "killed"))
    _killed_run_resumes(tmp_path, [*cli, str(full)], [*cli, str(killed)], wait_s=180)


def test_tlmm_analyze_refuses_a_text_only_model_named_native(lm_dirs, tmp_path, capsys):
    cfg = _native_config(tmp_path, "out", tmp_path, lm_dirs["llama"])
    assert main(["analyze", str(cfg), "--dry-run"]) == 2
    assert "not a vision-language model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
