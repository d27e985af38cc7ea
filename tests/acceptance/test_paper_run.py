"""The paper's whole procedure as one command: every registered step on a tiny COCO-format set
the test writes (images, captions, instance masks and categories), each step's table checked
against the tool called directly; steps the data cannot feed are skipped with a reason (or
refused under --strict); bad step names are refused with the known ones; --dry-run lists the
steps. The slow tier: SIGKILL + resume and a 2-rank torchrun equal one undisturbed process for
every step's tables."""

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
from helpers import build_model, build_tiny_bert, build_tiny_clip
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file

from transformer_lens_mm.data.datasets import CocoDataset
from transformer_lens_mm.errors import ConfigError
from transformer_lens_mm.pipelines.analyze import AnalysisConfig, load_table, run_analysis
from transformer_lens_mm.pipelines.analyze.config import table_steps
from transformer_lens_mm.pipelines.cli import main
from transformer_lens_mm.pipelines.experiments import spatial_iou_by_category
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import STEPS, Step, active_steps
from transformer_lens_mm.pipelines.steps.lenses import contextual_lens_step, logit_lens_step
from transformer_lens_mm.tools.contextual_lens import lens_shares

TESTS = Path(__file__).resolve().parents[1]
#: (caption, category, colour of the object) per image; the object is a square of its colour
SCENES = [
    ("a red square on the left", "square", (220, 30, 30)),
    ("the big dog", "dog", (120, 80, 40)),
    ("a blue circle", "circle", (30, 30, 220)),
    ("a green star", "star", (30, 200, 30)),
]
ALL = sorted(STEPS)


def write_coco(root: Path, n: int) -> dict[str, str]:
    """``n`` 32x32 images, one object each (a filled box of the object's colour) with its
    instance mask (RLE) and category, and one caption naming it."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    infos, caps, anns = [], [], []
    cats = {c: i + 1 for i, c in enumerate(sorted({s[1] for s in SCENES}))}
    for i in range(n):
        caption, cat, colour = SCENES[i % len(SCENES)]
        pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        y, x = rng.integers(0, 16, 2)
        pixels[y : y + 14, x : x + 14] = colour
        Image.fromarray(pixels).save(images / f"{i}.png")
        infos.append({"id": i + 1, "file_name": f"{i}.png", "height": 32, "width": 32})
        caps.append({"id": i + 1, "image_id": i + 1, "caption": caption})
        mask = np.zeros((32, 32), np.uint8)
        mask[y : y + 14, x : x + 14] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        box = [int(x), int(y), 14, 14]
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": cats[cat], "iscrowd": 1,
                     "segmentation": rle, "area": 196.0, "bbox": box})  # fmt: skip
    (root / "captions.json").write_text(json.dumps({"images": infos, "annotations": caps}))
    instances = {
        "images": infos,
        "categories": [{"id": i, "name": c} for c, i in cats.items()],
        "annotations": anns,
    }
    (root / "instances.json").write_text(json.dumps(instances))
    return {
        "kind": "coco",
        "images": str(images),
        "captions": str(root / "captions.json"),
        "instances": str(root / "instances.json"),
    }


def paper_config(out: Path, data: dict, **kw) -> AnalysisConfig:
    settings = dict(
        out=str(out),
        data=data,
        caption_source="data",
        k=5,
        batch_size=4,
        shard_batches=1,
        limit=8,  # items 8.. are the category selectivity's held-out images
        steps=ALL,
        ablation_ks=[0, 2, 8],
        ablation_captions_k=4,
        cross_concept_ks=[2],
        unit_effects=2,
        knockout_window=1,
        lens_every=1,
        lens_texts=40,
        lens_corpus="scenes",
        category_selectivity=2,
        soft_prompt_tokens=2,
    )
    return AnalysisConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def paper_run(lm_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    data = write_coco(tmp / "coco", 16)
    model = build_model(lm_dirs["llama"], "bridge")
    metrics = {  # Tables 1-2's scorers: tiny random BERT and CLIP written by the test
        "bert_model": str(build_tiny_bert(tmp / "bert")),
        "clip_model": str(build_tiny_clip(tmp / "clip")),
    }
    cfg = paper_config(tmp / "run", data, **metrics)
    summary = run_analysis(cfg, model=model, verbose=False)
    return model, cfg, summary, CocoDataset(data["images"], data["captions"], data["instances"])


def test_every_step_runs_and_writes_its_tables(paper_run):
    _, cfg, summary, _ = paper_run
    assert summary["done"] == 8 and summary["steps"] == [s.name for s in active_steps(cfg)]
    assert summary["steps"][:6] == [
        "text_scores",
        "soft_prompts",
        "spatial",
        "category_selectivity",
        "ablation",
        "ablation_captions",
    ]  # the paper's order
    assert summary["steps_skipped"] == {}
    for table, step in table_steps().items():
        got = load_table(cfg.out, table)
        # the tiny LM has no background words (sky, grass, ...) to target: its table is empty
        # here, and a slow test runs the step on the real demo model
        assert len(got) or step == "background", f"{step}: {table} is empty"
    log = (Path(cfg.out) / "run.log").read_text()
    assert "shard b0000001" in log and "run step category_selectivity" in log
    assert set(summary["step_seconds"]) >= {"search", *ALL} - {"controls"}


def _batch(model, data, indices, cfg):
    found = search_batch(
        model,
        indices=indices,
        ids=[data[i].id for i in indices],
        images=[data[i].image() for i in indices],
        captions=[data[i].captions[0] for i in indices],
        settings=SearchSettings(k=cfg.k, rank_units=cfg.units_to_rank),
    )
    return found


def test_the_new_steps_equal_their_tools_called_directly(paper_run):
    model, cfg, _, data = paper_run
    found = _batch(model, data, [4, 5, 6, 7], cfg)  # batch 1
    spatial = load_table(cfg.out, "spatial")
    want = spatial_iou_by_category(
        model, [data[i] for i in range(4, 8)], found.items, found.units,
        q=cfg.quantile, n_random=1, batch_size=4, seed=4,  # batch 1 starts at item 4
    )  # fmt: skip
    got = spatial[spatial["index"].between(4, 7)].drop(columns="index").reset_index(drop=True)
    assert len(want) and set(want["category"]) <= {"square", "dog", "circle", "star"}
    pd.testing.assert_frame_equal(got[want.columns], want, check_exact=False, atol=1e-6)

    lens = load_table(cfg.out, "logit_lens")
    want = logit_lens_step(model, found)
    got = lens[lens["index"].between(4, 7)]
    keys = ["index", "layer", "rank"]
    both = got.merge(want, on=keys, suffixes=("", "_direct"), validate="one_to_one")
    assert len(both) == len(want) == len(got)
    np.testing.assert_allclose(
        both["target_prob"], both["target_prob_direct"], rtol=1e-4, atol=1e-7
    )
    assert (both["token"] == both["token_direct"]).all()

    from transformer_lens_mm.pipelines.steps.lenses import contextual_index
    from transformer_lens_mm.pipelines.steps.registry import StepContext

    index = contextual_index(StepContext(model, cfg, data))
    both = [contextual_lens_step(model, _batch(model, data, b, cfg), index)
            for b in ([0, 1, 2, 3], [4, 5, 6, 7])]  # fmt: skip
    want = lens_shares(pd.concat(both, ignore_index=True))
    got = load_table(cfg.out, "lens_shares")
    merged = got.merge(want, on=["layer", "lens", "kind"], suffixes=("", "_direct"))
    assert len(merged) == len(want) == len(got)
    np.testing.assert_allclose(merged["share"], merged["share_direct"], atol=1e-12)
    assert (merged["n_tokens"] == merged["n_tokens_direct"]).all()

    effects = load_table(cfg.out, "unit_effects")
    assert set(effects["kind"]) == {"top", "random"}
    assert effects.groupby("item").size().eq(2 * cfg.unit_effects).all()
    sel = load_table(cfg.out, "category_selectivity")
    assert sel["held_out"].all()  # items 8..15 are not in the run (limit = 8)

    # the card units' effects, a step after the merge (the batch rebuilt from the items table,
    # units chosen over the whole run), equal the tool on the original search's batch
    from transformer_lens_mm.pipelines.steps import unit_effect_step
    from transformer_lens_mm.report.cards import card_pairs

    units = pd.read_parquet(Path(cfg.out) / "units.parquet")
    generic = load_table(cfg.out, "generic_units").set_index(["layer", "unit"])["breadth"]
    units = units.assign(breadth=generic.reindex(list(zip(units.layer, units.unit))).to_numpy())
    pairs = card_pairs(units, cfg.card_effects)
    assert sum(len(v) for v in pairs.values()) >= 2
    want = unit_effect_step(model, found, pairs, seed=4)
    got = load_table(cfg.out, "card_effects")
    got = got[got["index"].between(4, 7)].reset_index(drop=True)
    assert len(want) and set(want["kind"]) == {"top", "random"}
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-4, atol=1e-7)

    from transformer_lens_mm.pipelines.analyze import load_results
    from transformer_lens_mm.pipelines.experiments import unit_decoding_scores
    from transformer_lens_mm.tools.metrics import bert_scorer, clip_scorer

    items, units, _ = load_results(cfg.out)
    bert, clip = bert_scorer(cfg.bert_model), clip_scorer(cfg.clip_model)
    want = unit_decoding_scores(units, data, bert=bert, clip=clip, items=items)
    got = load_table(cfg.out, "decoding_scores")
    pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-5)
    assert {"bertscore", "clipscore_random_pair"} <= set(got.columns)
    ks = load_table(cfg.out, "soft_prompt_ks")
    assert set(ks["metric"]) == {"clipscore", "bertscore"} and ks["pvalue"].between(0, 1).all()


def test_a_data_set_without_masks_skips_the_step_or_refuses_it(paper_run, tmp_path):
    model, _, _, _ = paper_run
    data = write_coco(tmp_path / "coco", 4)
    data.pop("instances")  # captions only: no masks, no categories
    cfg = paper_config(tmp_path / "run", data, steps=["spatial", "ablation"], limit=None)
    summary = run_analysis(cfg, model=model, verbose=False)
    assert summary["steps"] == ["ablation", "controls"]  # controls: always
    assert "no masks" in summary["steps_skipped"]["spatial"]
    strict = paper_config(tmp_path / "strict", data, steps=["spatial"], limit=None)
    with pytest.raises(ConfigError, match="step 'spatial' cannot run: the data set has no masks"):
        run_analysis(strict, model=model, verbose=False, strict=True)


def test_bad_step_names_and_missing_inputs_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown steps \['ablaton'\]; the steps are \["):
        AnalysisConfig(out=str(tmp_path), steps=["ablaton"])
    monkeypatch.setitem(
        STEPS,
        "needs_ablation",
        Step("needs_ablation", "x", on=lambda c: False, needs=("ablation",)),
    )
    from transformer_lens_mm.pipelines.steps import active_steps

    with pytest.raises(ConfigError, match=r"reads the tables of step 'ablation'.*add 'ablation'"):
        active_steps(AnalysisConfig(out=str(tmp_path), steps=["needs_ablation"]))


def test_dry_run_lists_the_steps_their_tables_and_cost(tmp_path, capsys):
    toml = tmp_path / "paper.toml"
    toml.write_text(
        'out = "runs/x"\n[data]\nkind = "natural"\nn = 4\n[model]\ndemo = true\n'
        '[run]\nsteps = ["ablation", "spatial", "knockout"]\n'
    )
    assert main(["analyze", str(toml), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "ablation: p(c) with each image's top-k units zeroed" in text
    assert "-> ablation; ~17 passes; paper: Figure 6, sec. 3.3" in text  # 1 + 8 ks > 0 x 2
    assert "controls:" in text  # always, listed or not
    assert "spatial:" in text and "needs masks" in text
    assert "knockout:" in text and "~13 passes" in text  # SmolLM2: 30 layers / 5 -> 6 windows
    assert (
        "total:" in text and "ablation_ks = [0, 50, 100, 200, 400, 800, 1600, 3200, 6400]" in text
    )


SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from helpers import build_model, build_tiny_bert, build_tiny_clip
from test_paper_run import paper_config
model = build_model({lm!r}, "bridge")
run_analysis = __import__("transformer_lens_mm.pipelines.analyze", fromlist=["x"]).run_analysis
run_analysis(paper_config(sys.argv[1], json.loads({data!r}), limit=None, shard_batches=1,
                          batch_size=2, category_selectivity=0,
                          steps=[s for s in {all!r} if s not in {skip!r}]),
             model=model, verbose=False)
"""


#: run steps left out of the process comparison: they need held-out items / metric models and
#: run once on rank 0 after the merge (the fast tests check them)
SKIP = ("category_selectivity", "text_scores")


def _same_tables(a: Path, b: Path) -> None:
    for table, step in table_steps().items():
        if step in SKIP:
            continue
        pd.testing.assert_frame_equal(load_table(a, table), load_table(b, table), obj=table)


@pytest.mark.slow
def test_every_step_survives_sigkill_and_equals_two_torchrun_ranks(lm_dirs, tmp_path):
    data = write_coco(tmp_path / "coco", 24)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS / "acceptance"), lm=str(
        lm_dirs["llama"]), data=json.dumps(data), all=ALL, skip=SKIP)))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    run = [sys.executable, str(script)]
    subprocess.run([*run, str(tmp_path / "one")], check=True, env=env)
    proc = subprocess.Popen([*run, str(tmp_path / "killed")], env=env)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(shards.glob("*-manifest.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(shards.glob("*-manifest.json"))) < 12
    subprocess.run([*run, str(tmp_path / "killed")], check=True, env=env)
    _same_tables(tmp_path / "one", tmp_path / "killed")
    port = str(29500 + os.getpid() % 1000)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", port, str(script), str(tmp_path / "two")],
                   check=True, env=env)  # fmt: skip
    _same_tables(tmp_path / "one", tmp_path / "two")
    maps = [load_file(tmp_path / run / "maps.safetensors")["maps"] for run in ("one", "two")]
    assert maps[0].shape[0] == 24 * 5 and torch.equal(*maps)


def test_a_run_step_that_fails_is_recorded_and_the_run_kept(paper_run, tmp_path):
    """A metric model that cannot load fails the text_scores step after the merge: the run's
    tables stay, the reason is in the summary; --strict raises it."""
    model, _, _, _ = paper_run
    data = write_coco(tmp_path / "coco", 4)
    missing = str(tmp_path / "no-such-bert")
    cfg = paper_config(tmp_path / "run", data, steps=["text_scores"], limit=None,
                       bert_model=missing, clip_model=None)  # fmt: skip
    summary = run_analysis(cfg, model=model, verbose=False)
    assert summary["done"] == 4 and "no-such-bert" in summary["steps_failed"]["text_scores"]
    assert len(load_table(cfg.out, "generic_units"))  # the other run steps still ran
    from transformer_lens_mm.errors import MetricModelError

    with pytest.raises(MetricModelError, match="no-such-bert"):
        run_analysis(cfg, model=model, verbose=False, strict=True)


def test_a_revisit_steps_shards_resume_and_a_damaged_one_is_recomputed(paper_run, tmp_path):
    """The card units' effects run after the merge into shards of their own: a run resumed
    with one of them truncated on disk recomputes that batch only, and the table is the same."""
    model, _, _, _ = paper_run
    data = write_coco(tmp_path / "coco", 8)
    cfg = paper_config(tmp_path / "run", data, steps=["card_effects"], limit=None,
                       card_effects=3)  # fmt: skip
    run_analysis(cfg, model=model, verbose=False)
    first = load_table(cfg.out, "card_effects")
    assert len(first) and set(first["index"]) <= set(range(8))
    shards = Path(cfg.out) / "revisits" / "card_effects"
    damaged = shards / "b0000001-card_effects.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    run_analysis(cfg, model=model, verbose=False)
    log = (Path(cfg.out) / "run.log").read_text().splitlines()
    revisits = [line for line in log if "revisit step card_effects" in line]
    assert "2 batches (0 done before)" in revisits[0]
    assert "1 batches (1 done before)" in revisits[1]
    pd.testing.assert_frame_equal(load_table(cfg.out, "card_effects"), first)


def test_the_report_sets_the_papers_results_beside_the_runs(paper_run):
    _, cfg, _, _ = paper_run
    from transformer_lens_mm.pipelines.analyze.report import paper_comparison

    table = paper_comparison(cfg.out)
    where = dict(zip(table["what"].str.slice(0, 30), table["where"]))
    assert {"Table 1", "Table 2", "sec. 2.2", "sec. 3.1", "sec. 3.3"} <= set(where.values())
    row = table[table["where"] == "Figure 5, sec. 3.2"].iloc[0]
    assert row["paper"] == "12 of 12" and row["this run"].endswith("of 4")
    sweep = load_table(cfg.out, "ablation")
    top = sweep[(sweep["kind"] == "top") & (sweep["k"] == 8)].groupby("item")["rel_p"].mean()
    lost = table[table["what"].str.startswith("p(c) lost with the top")]["this run"].iloc[0]
    assert lost == f"{100 * (1 - top.mean()):.1f}% on average (k = 8)"
    page = (Path(cfg.out) / "report.html").read_text()
    assert "The paper vs this run" in page and "Spatial selectivity by category" in page
    assert "Category selectivity" in page and "Decodings vs captions" in page


def test_the_run_report_loads_in_a_browser_with_every_figure(paper_run, tmp_path):
    from test_report_in_browser import BROWSER, load_in_browser

    if BROWSER is None:
        pytest.skip("apt install chromium")
    _, cfg, _, _ = paper_run
    page = Path(cfg.out) / "report.html"
    dom, log = load_in_browser(page, tmp_path)
    assert "TLMM-CONSOLE" not in log, [line for line in log.splitlines() if "TLMM" in line]
    assert "Uncaught" not in log
    figures = page.read_text().count('class="plotly-graph-div"')
    assert figures >= 9 and dom.count('class="main-svg"') >= figures
    # sections in the paper's order, then ours
    order = ["The paper vs this run", "Decodings vs captions", "Soft prompts (Table 2",
             "Spatial selectivity", "Category selectivity", "Ablation (Figure 6",
             "Generic vs concept-specific", "Attention knockout"]  # fmt: skip
    where = [dom.index(title) for title in order]
    assert where == sorted(where)


@pytest.mark.slow
def test_the_background_step_equals_the_demos_function(tmp_path):
    """Natural scenes carry background masks (sky, grass, water, ...) whose names the real
    demo model has as tokens: the registered step and the function the demo calls give the
    same table for a batch (the tiny test LMs have no such words)."""
    from transformer_lens_mm.data.pretrained import load_demo_model
    from transformer_lens_mm.pipelines.analyze import load_dataset
    from transformer_lens_mm.pipelines.steps.spatial import background_spatial

    model = load_demo_model("bridge", lm="smollm2", scenes="natural")
    data = {"kind": "natural", "n": 4, "seed": 0}
    cfg = AnalysisConfig(out=str(tmp_path / "run"), data=data, k=10, batch_size=4,
                         steps=["background"], max_new_tokens=12)  # fmt: skip
    run_analysis(cfg, model=model, verbose=False)
    got = load_table(cfg.out, "background")
    items = pd.read_parquet(Path(cfg.out) / "items.parquet")
    usable = items[items["failure"].isna()]["index"].astype(int).tolist()
    scenes = load_dataset(data)
    want = background_spatial(model, [scenes[i] for i in usable], k=10, n_random=1,
                              batch_size=4, seed=10_000)  # fmt: skip
    assert len(want) and set(want["category"]) <= {"sky", "grass", "water", "wall", "floor"}
    pd.testing.assert_frame_equal(got.drop(columns="index"), want, check_exact=False, atol=1e-6)
