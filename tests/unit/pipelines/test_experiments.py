"""Dataset experiments: layer distribution, IoU by category, category selectivity, texts vs
captions."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import build_model

from transformer_lens_mm.data.datasets import SceneDataset
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.pipelines.experiments import (
    category_selectivity,
    layer_distribution,
    score_texts,
    selectivity_by_class,
    soft_prompt_texts,
    spatial_iou_by_category,
    unit_decoding_texts,
)
from transformer_lens_mm.report.plotting import plot_category_selectivity, plot_iou_by_category
from transformer_lens_mm.tools.spatial import image_mlp_activations, spatial_selectivity


def test_layer_distribution():
    units = pd.DataFrame({"layer": [0, 0, 2, 2, 2, 3]})
    table = layer_distribution(units, n_layers=4)
    assert table["count"].tolist() == [2, 0, 3, 1]
    assert table["share"].sum() == pytest.approx(1.0)


def _run_tables(data):
    items = pd.DataFrame(
        {
            "item": [data[i].id for i in range(4)],
            "noun": [data[0].categories[0] + "s", "zebra", data[2].categories[0], None],
            "failure": [None, None, None, "unreadable"],
        }
    )
    units = pd.DataFrame(
        {
            "item": [data[0].id] * 2 + [data[1].id] + [data[2].id] * 2,
            "rank": [0, 1, 0, 0, 1],
            "layer": [1, 0, 1, 0, 1],
            "unit": [5, 3, 2, 7, 7],
            "score": [0.5, 0.4, 0.3, 0.2, 0.1],
            "sign": [1, 1, 1, 1, 1],
        }
    )
    return items, units


def test_spatial_iou_by_category(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    data = SceneDataset(SceneSet(4, seed=3, size=40))
    items, units = _run_tables(data)
    table = spatial_iou_by_category(model, data, items, units, q=0.8, n_random=2)
    assert table.attrs["unmatched"] == 1  # "zebra"; the failed item is not counted
    assert sorted(table["item"].unique()) == [data[0].id, data[2].id]
    assert set(table["category"]) == {data[0].categories[0], data[2].categories[0]}
    # the same numbers as a direct call on image 2 alone
    direct = spatial_selectivity(
        model,
        model.prepare_inputs([data[2].image()]),
        [[(0, 7), (1, 7)]],
        [data[2].masks()[data[2].categories[0]]],
        q=0.8,
        n_random=0,
    )
    got = table[(table["item"] == data[2].id) & (table["kind"] == "top")]
    assert got["iou"].tolist() == pytest.approx(direct["iou"].tolist())
    assert plot_iou_by_category(table).data


def test_category_selectivity_means(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    data = SceneDataset(SceneSet(6, seed=4, size=40))
    items, units = _run_tables(data)
    held = [data[i] for i in range(4, 6)]
    units.loc[1, "sign"] = -1  # read as -Z (a gated unit's entry with Z < 0)
    table = category_selectivity(model, units, items, held, n_units=2, interpretable_only=False)
    assert set(table["unit_class"]) == set(items["noun"].dropna())
    acts = image_mlp_activations(model, model.prepare_inputs([it.image() for it in held]))
    for row in table.itertuples():
        imgs = [j for j, it in enumerate(held) if it.categories[0] == row.image_class]
        # supplement S.4: the mean over all patches (and images) of the signed activation
        want = row.sign * acts[imgs, row.layer, :, row.unit].mean()
        assert row.mean_activation == pytest.approx(float(want), abs=1e-5)
        assert row.n_images == len(imgs)
    assert (table["sign"] == -1).any()
    # the class x class matrix: each row divided by its maximum
    grid = selectivity_by_class(table)
    per = table.groupby(["unit_class", "image_class"])["mean_activation"].mean().unstack()
    for cls in grid.index:
        if per.loc[cls].max() > 0:
            assert grid.loc[cls].tolist() == pytest.approx(
                (per.loc[cls] / per.loc[cls].max()).tolist()
            )
    # interpretable only (the paper's): none of the tiny model's units is, so nothing is chosen
    assert category_selectivity(
        model, units.assign(interpretable=False), items, held, n_units=2
    ).empty
    assert plot_category_selectivity(table).data
    with pytest.raises(ValueError, match="empty table"):
        plot_category_selectivity(pd.DataFrame())


def _overlap(preds, refs):
    """A transparent stand-in metric: word-set Jaccard similarity per pair."""
    out = []
    for p, r in zip(preds, refs):
        a, b = set(p.lower().split()), set(r.lower().split())
        out.append(len(a & b) / max(len(a | b), 1))
    return torch.tensor(out)


def test_texts_scored_against_own_and_re_paired_captions():
    units = pd.DataFrame(
        {
            "item": ["a", "a", "b", "c", "d"],
            "rank": [1, 0, 0, 0, 0],
            "interpretable": [True, False, True, True, True],
            "tokens": [[" dog", " dogs"], ["xq"], [" cat"], [" red", " ball"], [" sky"]],
        }
    )
    texts = unit_decoding_texts(units)
    assert texts.to_dict() == {"a": "dog dogs", "b": "cat", "c": "red ball", "d": "sky"}
    items = pd.DataFrame(
        {
            "item": ["a", "b", "c", "d", "e"],
            "caption": ["a dog", "a cat", "a red ball", "blue sky", "no text"],
        }
    )
    table = score_texts(texts, items, bert=_overlap, seed=3)
    assert table["item"].tolist() == ["a", "b", "c", "d"]  # e has no text
    assert table["bertscore"].tolist() == pytest.approx([1 / 3, 1 / 2, 2 / 3, 1 / 2])
    # re-paired: every text meets another item's caption, each caption used once
    assert table["bertscore_random_pair"].max() == 0.0
    with pytest.raises(ValueError, match="pass data"):
        score_texts(texts, items, clip=_overlap)
    soft = pd.DataFrame(
        {
            "item": ["a", "a", "a", "b"],
            "kind": "image",
            "rank": [0, 0, 1, 0],
            "patch": [1, 0, 0, 0],
            "token": [" two", " one", " zero", " x"],
        }
    )
    assert soft_prompt_texts(soft).to_dict() == {"a": "one two", "b": "x"}
    with pytest.raises(ValueError, match="kind 'random'"):
        soft_prompt_texts(soft, "random")


def test_table_1_protocol_max_over_units_and_mean_over_references():
    """Sec. 2.2 / Table 1: each unit's BERTScore is the mean over the image's captions, the
    image keeps its best unit; the baseline pairs units and captions of different images."""
    from transformer_lens_mm.data.datasets import Item
    from transformer_lens_mm.pipelines.experiments import unit_decoding_scores

    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    data = [
        Item("a", pixels, captions=["a dog", "dog on grass"]),
        Item("b", pixels, captions=["a cat"]),
        Item("c", pixels, captions=["red ball"]),
    ]
    units = pd.DataFrame(
        {
            "item": ["a", "a", "a", "b", "c", "c"],
            "layer": [0, 1, 1, 0, 2, 2],
            "unit": [1, 2, 2, 3, 4, 4],
            "sign": [1, 1, -1, 1, 1, 1],
            "interpretable": [True, True, True, False, True, True],
            "tokens": [[" dog"], [" grass", " dog"], [" cat"], [" cat"], [" ball"], [" ball"]],
        }
    )
    table = unit_decoding_scores(units, data, bert=_overlap, interpretable_only=False, seed=0)
    by_item = table.set_index("item")
    # a: "dog" -> (1/2 + 1/3) / 2; "grass dog" -> (1/3 + 2/3) / 2 = 0.5 (the max); "cat" -> 0
    assert by_item.loc["a", "bertscore"] == pytest.approx(0.5)
    assert by_item.loc["a", "n_units"] == 3  # the unit read with both signs counts twice
    assert by_item.loc["b", "bertscore"] == pytest.approx(1 / 2)
    assert by_item.loc["c", "bertscore"] == pytest.approx(1 / 2)
    # the baseline: each image's captions meet another image's units (best of them), by hand
    texts = {"a": ["dog", "grass dog", "cat"], "b": ["cat"], "c": ["ball"]}
    refs = {d.id: d.captions for d in data}

    def best(i, j):  # image j's units against image i's captions
        return max(float(_overlap([t] * len(refs[i]), refs[i]).mean()) for t in texts[j])

    for i, got in zip(table["item"], table["bertscore_random_pair"]):
        assert any(got == pytest.approx(best(i, j)) for j in texts if j != i)
    only = unit_decoding_scores(units, data, bert=_overlap)  # the paper: interpretable only
    assert "b" not in set(only["item"])
    clip = lambda images, texts: torch.tensor([float(len(t)) for t in texts])  # noqa: E731
    with_clip = unit_decoding_scores(units, data, clip=clip, interpretable_only=False)
    assert with_clip.set_index("item").loc["a", "clipscore"] == len("grass dog")


def test_table_2_protocol_and_the_ks_test():
    """Sec. 3.1: each soft-prompt vector's nearest tokens as a text, scored per vector; the KS
    test compares the image vectors' scores with the random vectors'."""
    from scipy.stats import ks_2samp

    from transformer_lens_mm.data.datasets import Item
    from transformer_lens_mm.pipelines.experiments import soft_prompt_ks, soft_prompt_scores

    data = [Item("a", None, captions=["a dog"]), Item("b", None, captions=["a cat", "cat"])]
    soft = pd.DataFrame(
        {
            "item": ["a"] * 4 + ["b"] * 4,
            "kind": ["image", "image", "random", "random"] * 2,
            "patch": [0, 0, 0, 0] * 2,
            "rank": [0, 1, 0, 1] * 2,
            "token": [" dog", " a", " x", " y", " cat", " z", " cat", " q"],
        }
    )
    scores = soft_prompt_scores(soft, data, bert=_overlap).set_index(["item", "kind"])
    assert scores.loc[("a", "image"), "text"] == "dog a"
    assert scores.loc[("a", "image"), "bertscore"] == pytest.approx(1.0)
    assert scores.loc[("b", "image"), "bertscore"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert scores.loc[("a", "random"), "bertscore"] == 0.0
    table = soft_prompt_scores(soft, data, bert=_overlap)
    ks = soft_prompt_ks(table, "bertscore")
    want = ks_2samp(
        table[table.kind == "image"]["bertscore"], table[table.kind == "random"]["bertscore"]
    )
    assert ks["statistic"] == pytest.approx(want.statistic)
    assert ks["pvalue"] == pytest.approx(want.pvalue)
    assert ks["n_image"] == ks["n_random"] == 2
    with pytest.raises(ValueError, match="no 'clipscore' column"):
        soft_prompt_ks(table)
