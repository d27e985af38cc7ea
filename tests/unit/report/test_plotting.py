"""Plots return figures built from the data they are given."""

import plotly.graph_objects as go
import pytest
import torch
from helpers import build_model, random_images

from transformer_lens_mm.report.plotting import (
    plot_ablation_curves,
    plot_logit_lens,
    plot_top_units_per_layer,
    plot_unit_map,
)
from transformer_lens_mm.tools.ablation import ablation_sweep
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.spatial import patch_map, quantile_mask


@pytest.fixture(scope="module")
def model(lm_dirs):
    return build_model(lm_dirs["gptj"], "bridge")


def test_patch_map_and_quantile_mask():
    acts = torch.tensor([0.0, 1.0, 2.0, 3.0])
    grid = patch_map(acts, (2, 2))
    assert grid.tolist() == [[0.0, 1.0], [2.0, 3.0]]  # row-major
    up = patch_map(acts, (2, 2), (8, 8))
    assert up.shape == (8, 8) and up[0, 0] < up[-1, -1]
    mask = quantile_mask(up, 0.95)
    assert mask[-1, -1] and not mask[0, 0] and 0 < mask.float().mean() <= 0.1
    with pytest.raises(ValueError, match="do not fill"):
        patch_map(acts, (3, 3))


def test_plots_return_figures(model):
    batch = model.prepare_inputs(random_images(2))
    attr = attribute(model, batch, [12, 13])
    table = attr.top_k(20)
    fig = plot_top_units_per_layer(table, n_layers=2)
    assert isinstance(fig, go.Figure)
    assert sum(fig.data[0].y) == 40
    sweep = ablation_sweep(model, batch, [12, 13], attr.ranked_units(), ks=[0, 5, 20], n_random=2)
    fig = plot_ablation_curves(sweep)
    means = {tr.name: list(tr.y) for tr in fig.data if tr.name in ("top", "random")}
    expected = sweep[sweep.kind == "top"].groupby("k")["rel_p"].mean().tolist()
    assert means["top"] == pytest.approx(expected)
    assert fig.layout.yaxis.title.text == "p(c) kept (ablated / unablated)"  # not a column name
    lens = logit_lens(model, batch, k=1, positions=[16, 17, 18])
    fig = plot_logit_lens(lens, image=1)
    assert fig.data[0].z.shape == (3, 3)
    img = random_images(1, size=32)[0]
    fig = plot_unit_map(img, attr.activations[0, 0, :, 3], (4, 4), title="L0.u3")
    assert isinstance(fig, go.Figure) and fig.data[1].z.shape == (32, 32)
    with pytest.raises(ValueError, match="no column"):
        plot_ablation_curves(sweep, value="nope")


def test_plot_knockout_cells_are_the_mean_kept_probability():
    import pandas as pd

    from transformer_lens_mm.report.plotting import plot_knockout

    rows = []
    for item, (p0, p1) in enumerate([(0.5, 0.25), (0.4, 0.4)]):
        for start, p in ((0, p0), (1, p1)):
            for kind, draws in (("knockout", [p]), ("control", [0.5, 0.3])):
                for d, pc in enumerate(draws):
                    rows.append(
                        dict(
                            item=item,
                            from_group="image",
                            to_group="last",
                            start=start,
                            stop=start + 1,
                            kind=kind,
                            draw=d,
                            p_c=pc,
                            p_clean=0.5,
                        )
                    )
    table = pd.DataFrame(rows)
    table["rel_p"] = table.p_c / table.p_clean
    fig = plot_knockout(table)
    heat = fig.data[0]
    assert list(heat.y) == ["image \u2192 last", "image \u2192 last (random positions)"]
    assert list(heat.x) == ["0", "1"]
    assert heat.z[0][0] == pytest.approx((1.0 + 0.8) / 2)  # items' kept p(c), averaged
    assert heat.z[0][1] == pytest.approx((0.5 + 0.8) / 2)
    assert heat.z[1][0] == pytest.approx(0.8)  # controls: draws averaged per item first
    table["n_blocked"] = [0 if k == "control" else 3 for k in table.kind]
    assert list(plot_knockout(table).data[0].y) == ["image \u2192 last"]  # nothing to show
