"""The search step (written once): its tables equal the tools composed by hand, in every mode;
``find_multimodal_neurons`` loops it and records failures."""

import pandas as pd
import pytest
import torch
from helpers import WORDS, build_model, random_images

from transformer_lens_mm.pipelines.search import (
    SearchSettings,
    find_multimodal_neurons,
    search_batch,
    tag_rows,
)
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_units
from transformer_lens_mm.tools.spatial import image_mlp_activations
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions
from transformer_lens_mm.tools.words import is_interpretable


@pytest.fixture(scope="module")
def model(lm_dirs):
    return build_model(lm_dirs["gptj"], "bridge")


def test_find_multimodal_neurons_records_failures(model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [*random_images(3), broken]
    found = find_multimodal_neurons(
        model, images, targets=["dog", "zebra", 12, "cat"], k=10, batch_size=2, verbose=False
    )
    assert set(found.failures) == {1, 3}
    assert "vocabulary" in found.failures[1] and "unreadable" in found.failures[3]
    assert sorted(found.targets) == [0, 2]
    assert found.targets[0].token_id == WORDS.index("dog")
    assert len(found.units) == 20 and set(found.units["index"]) == {0, 2}
    assert {"tokens", "interpretable", "target"} <= set(found.units.columns)
    # the table equals attributing image 0 alone
    alone = attribute(model, model.prepare_inputs(random_images(3)[:1]), [WORDS.index("dog")])
    ref = alone.top_k(10)
    got = found.units[found.units["index"] == 0]
    assert (
        got[["layer", "unit", "position"]].values.tolist()
        == ref[["layer", "unit", "position"]].values.tolist()
    )
    assert "2 images attributed, 2 failed" in found.summary()


def test_find_multimodal_neurons_from_captions(model):
    found = find_multimodal_neurons(model, random_images(3), k=5, verbose=False, max_new_tokens=6)
    assert set(found.captions) == {0, 1, 2}
    for i in range(3):
        assert (i in found.targets) != (i in found.failures)
    for i, t in found.targets.items():
        assert t.word is not None and t.word in found.captions[i]


def test_search_batch_equals_the_tools_composed_by_hand(model):
    images = random_images(3, seed=4)
    captions = ["a red circle", "on the of", "the big dog"]  # the second has no noun
    found = search_batch(
        model,
        indices=[10, 11, 12],
        ids=["a", "b", "c"],
        images=images,
        captions=captions,
        settings=SearchSettings(k=6, rank_units=20),
    )
    assert found.items["item"].tolist() == ["a", "b", "c"]
    assert found.items["failure"].notna().tolist() == [False, True, False]
    assert "no noun" in found.items["failure"][1]
    assert [r[:2] for r in found.rows] == [("a", 10), ("c", 12)]
    # by hand: the same targets, inputs, attribution and decodings
    tok = model.tokenizer
    targets = targets_from_captions(
        tok, [tok.encode(" " + c, add_special_tokens=False) for c in captions]
    )
    kept = [targets[0], targets[2]]
    assert [t.token_id for t in found.targets] == [t.token_id for t in kept]
    base = model.prepare_inputs([images[0], images[2]])
    attr = attribute(model, target_inputs(model, base, kept), [t.token_id for t in kept], top_k=6)
    ref = attr.top_k(6)
    units = found.units
    assert units[["rank", "layer", "unit", "position"]].values.tolist() == (
        ref[["rank", "layer", "unit", "position"]].values.tolist()
    )
    torch.testing.assert_close(
        torch.tensor(units["score"].values), torch.tensor(ref["score"].values)
    )
    assert units["item"].tolist() == ["a"] * 6 + ["c"] * 6
    assert units["index"].tolist() == [10] * 6 + [12] * 6
    first = units.iloc[0]
    tokens = [t for t, _ in decode_units(model, [(int(first.layer), int(first.unit))])[0]]
    assert list(first.tokens) == tokens and first.interpretable == is_interpretable(tokens)
    assert first.decodes_to_target == any(t.strip() == first.target.strip() for t in tokens)
    # maps: the unit over the image patches, as a separate forward gives them
    acts = image_mlp_activations(model, base)
    for r in (0, 7):
        row = units.iloc[r]
        torch.testing.assert_close(
            found.maps[r], acts[int(row["index"] == 12), int(row.layer), :, int(row.unit)]
        )
    assert len(found.attribution.ranked_units("max")[0]) == 20


def test_search_batch_explicit_targets_and_greedy_captions_and_nothing_usable(model):
    images = random_images(2, seed=5)
    explicit = search_batch(model, indices=[0, 1], images=images, targets=["dog", 12])
    assert explicit.items["target_id"].tolist() == [WORDS.index("dog"), 12]
    assert explicit.items["caption"].isna().all()
    greedy = search_batch(
        model, indices=[0, 1], images=images, settings=SearchSettings(max_new_tokens=5, maps=False)
    )
    assert greedy.maps is None and greedy.items["caption"].map(type).eq(str).all()
    none = search_batch(
        model, indices=[0], images=images[:1], targets=["zebra"], unreadable=[(7, "x", "bad file")]
    )
    assert len(none) == 0 and none.units.empty
    assert none.items["failure"].tolist()[1] == "bad file" and none.items["item"].tolist()[1] == "x"
    with pytest.raises(ValueError, match="exactly one of images"):
        search_batch(model, indices=[0], images=images[:1], pixel_values=torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="2 captions for 1 items"):
        search_batch(model, indices=[0], images=images[:1], captions=["a", "b"])


def test_tag_rows_replaces_the_batch_row_by_the_item():
    rows = [("a", 4, " dog"), ("b", 9, " cat")]
    tagged = tag_rows(pd.DataFrame({"image": [1, 1, 0], "v": [1, 2, 3]}), rows)
    assert tagged.columns.tolist() == ["item", "index", "target", "v"]
    assert tagged["item"].tolist() == ["b", "b", "a"] and tagged["index"].tolist() == [9, 9, 4]
