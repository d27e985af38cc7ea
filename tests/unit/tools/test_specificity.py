"""Controls for concept-specific vs generic units: known answers on tables and on a hand-built
model with one planted neuron per concept."""

import pandas as pd
import pytest
import torch
from helpers import APIS, WORDS, build_concept_model, planted_features

from transformer_lens_mm import from_parts
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.specificity import (
    concept_specificity,
    cross_concept_ablation,
    generic_units,
    specificity_ratio,
)


def table():
    """Items 0-3: dog, dog, cat, sun. Unit (0, 3) is top everywhere (generic); (0, 7) only for
    dogs; (1, 9) for the cat and one dog."""
    rows = [
        (0, "dog", 0, 3), (0, "dog", 0, 7), (1, "dog", 0, 3), (1, "dog", 0, 7), (1, "dog", 1, 9),
        (2, "cat", 0, 3), (2, "cat", 1, 9), (3, "sun", 0, 3),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["item", "target", "layer", "unit"])


def test_generic_units_known_answer():
    g = generic_units(table(), min_share=0.5).set_index(["layer", "unit"])
    assert g.loc[(0, 3), "n_concepts"] == 3 and g.loc[(0, 3), "generic"]
    # (1, 9) is top for 2 of the 3 concepts: generic above a 0.5 share, not above 0.7
    assert g.loc[(1, 9), "n_concepts"] == 2 and g.loc[(1, 9), "generic"]
    g2 = generic_units(table(), min_share=0.7).set_index(["layer", "unit"])
    assert g2.loc[(0, 3), "generic"] and not g2.loc[(1, 9), "generic"]
    assert not g.loc[(0, 7), "generic"] and g.loc[(0, 7), "n_items"] == 2
    # breadth: (0, 7) is top for two dog images only; (1, 9) for one dog and one cat
    assert g.loc[(0, 7), "breadth"] == "specific" and g.loc[(0, 7), "top_concept_share"] == 1.0
    assert g.loc[(0, 3), "breadth"] == "generic"
    assert g2.loc[(1, 9), "breadth"] == "broad" and g2.loc[(1, 9), "top_concept_share"] == 0.5


def test_concept_specificity_known_answer():
    spec = concept_specificity(table(), smoothing=1.0)
    dog = spec[spec["concept"] == "dog"].set_index(["layer", "unit"])
    # (0, 7): 2 of 2 dog images, 0 of 2 others -> (2+1)/(2+2) / ((0+1)/(2+2)) = 3
    assert dog.loc[(0, 7), "specificity"] == pytest.approx(3.0)
    assert dog.loc[(0, 7), "rate_in"] == 1.0 and dog.loc[(0, 7), "rate_out"] == 0.0
    # (0, 3): everywhere -> (2+1)/4 / ((2+1)/4) = 1
    assert dog.loc[(0, 3), "specificity"] == pytest.approx(1.0)
    assert dog.loc[(0, 7), "rank"] == 0  # the most specific dog unit
    # a concept named in a mapping but with no images is never divided by zero
    spec2 = concept_specificity(table(), concepts={0: "dog", 1: "dog", 2: "cat", 3: "sun"})
    assert spec2["specificity"].notna().all()


def test_missing_concepts_are_named():
    with pytest.raises(ValueError, match=r"no concept for items \[3\]"):
        concept_specificity(table(), concepts={0: "dog", 1: "dog", 2: "cat"})


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    return build_concept_model(
        tmp_path_factory.mktemp("concepts") / "tiny-gptj", {"dog": 7, "cat": 9}
    )


@pytest.mark.parametrize("api", APIS)
def test_planted_units_are_concept_specific(concepts, api):
    folder, proj, fs = concepts
    model = from_parts(lm=folder, encoder=None, projection=proj, api=api)
    dog, cat = WORDS.index("dog"), WORDS.index("cat")
    feats = torch.cat(
        [
            planted_features(fs["dog"], 2, on=True, seed=1),
            planted_features(fs["cat"], 2, on=True, seed=2),
        ]
    )
    batch = model.prepare_inputs(image_features=feats)
    targets = [dog, dog, cat, cat]
    attr = attribute(model, batch, targets)
    ranked = attr.ranked_units()
    assert [r[0] for r in ranked] == [(0, 7), (0, 7), (0, 9), (0, 9)]
    # the table controls: each planted unit is specific to its concept, not generic
    top = attr.top_k(5)
    top["item"] = top["image"]
    top["target"] = top["image"].map({0: "dog", 1: "dog", 2: "cat", 3: "cat"})
    spec = concept_specificity(top)
    best = spec[spec["rank"] == 0].set_index("concept")
    assert (best.loc["dog", "layer"], best.loc["dog", "unit"]) == (0, 7)
    assert (best.loc["cat", "layer"], best.loc["cat", "unit"]) == (0, 9)
    g = generic_units(top).set_index(["layer", "unit"])
    assert not g.loc[(0, 7), "generic"] and not g.loc[(0, 9), "generic"]
    # cross-concept ablation: the dog unit lowers p(dog) on dogs, not p(cat) on cats
    table = cross_concept_ablation(
        model, batch, targets, ["dog", "dog", "cat", "cat"], ranked, ks=[0, 1], n_random=2
    )
    assert set(table["same"]) == {True, False}
    ratio = specificity_ratio(table).set_index("k")
    assert ratio.loc[1, "same_drop"] > 0.8  # zeroing the one planted unit removes p(c)
    assert abs(ratio.loc[1, "cross_drop"]) < 0.05  # and does nothing to the other concept
    assert ratio.loc[1, "ratio"] > 3 or ratio.loc[1, "cross_drop"] <= 0
    assert ratio.loc[0, "same_drop"] == pytest.approx(0.0)
    # every source image was evaluated on both images of the other concept
    assert ratio.loc[1, "n_cross"] == 4 * 2


def test_ratio_without_other_concepts_is_reported_not_divided():
    t = pd.DataFrame(
        {
            "source": [0, 0],
            "image": [0, 0],
            "same": [True, True],
            "kind": ["top", "top"],
            "k": [0, 5],
            "draw": [0, 0],
            "p_c": [0.5, 0.1],
            "rel_p": [1.0, 0.2],
        }
    )
    r = specificity_ratio(t).set_index("k")
    assert r.loc[5, "n_cross"] == 0 and pd.isna(r.loc[5, "ratio"])
    assert r.loc[5, "same_drop"] == pytest.approx(0.8)


@pytest.fixture(scope="module")
def with_generic(tmp_path_factory):
    return build_concept_model(
        tmp_path_factory.mktemp("generic") / "tiny-gptj", {"dog": 7, "cat": 9}, generic=11
    )


@pytest.mark.parametrize("api", APIS)
def test_a_planted_generic_unit_is_flagged_generic_and_is_not_concept_specific(with_generic, api):
    """Unit 11 reads a direction every image carries and writes both words: it is among the
    top units of both concepts (flagged generic) and zeroing it lowers p(c) on images of either
    concept alike (ratio ~1), while each planted concept unit stays specific (ratio >> 1)."""
    folder, proj, fs = with_generic
    model = from_parts(lm=folder, encoder=None, projection=proj, api=api)
    dog, cat = WORDS.index("dog"), WORDS.index("cat")
    feats = torch.cat(
        [
            planted_features(fs["dog"], 2, on=True, seed=1, also=fs["generic"]),
            planted_features(fs["cat"], 2, on=True, seed=2, also=fs["generic"]),
        ]
    )
    batch = model.prepare_inputs(image_features=feats)
    targets, concepts = [dog, dog, cat, cat], ["dog", "dog", "cat", "cat"]
    attr = attribute(model, batch, targets)
    ranked = attr.ranked_units()
    assert [set(r[:2]) for r in ranked] == [{(0, 7), (0, 11)}] * 2 + [{(0, 9), (0, 11)}] * 2
    top = attr.top_k(16)
    top = top[[(la, u) in {(0, 7), (0, 9), (0, 11)} for la, u in zip(top.layer, top.unit)]]
    top = top.assign(item=top["image"], target=top["image"].map(dict(enumerate(concepts))))
    g = generic_units(top).set_index(["layer", "unit"])
    assert g.loc[(0, 11), "generic"] and g.loc[(0, 11), "n_concepts"] == 2
    assert not g.loc[(0, 7), "generic"] and not g.loc[(0, 9), "generic"]
    spec = concept_specificity(top).set_index(["concept", "layer", "unit"])
    assert spec.loc[("dog", 0, 7), "specificity"] > spec.loc[("dog", 0, 11), "specificity"]

    def ratio_of(units):
        table = cross_concept_ablation(
            model, batch, targets, concepts, [units[c] for c in concepts], ks=[0, 1]
        )
        return specificity_ratio(table).set_index("k").loc[1]

    generic = ratio_of({"dog": [(0, 11)], "cat": [(0, 11)]})
    specific = ratio_of({"dog": [(0, 7)], "cat": [(0, 9)]})
    assert generic["same_drop"] > 0.2 and generic["cross_drop"] > 0.2
    assert 0.5 < generic["ratio"] < 2.0
    assert specific["same_drop"] > 0.2 and abs(specific["cross_drop"]) < 0.05
