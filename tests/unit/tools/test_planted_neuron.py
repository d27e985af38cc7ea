"""A hand-built model with a planted multimodal neuron: the pipeline must find it."""

import pytest
import torch
from helpers import APIS, WORDS, build_planted_model, planted_features

from transformer_lens_mm import from_parts
from transformer_lens_mm.tools.ablation import ablated, ablation_sweep
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_units
from transformer_lens_mm.tools.units import random_units_like

UNIT = 7


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_model(tmp_path_factory.mktemp("planted") / "tiny-gptj", unit=UNIT)


@pytest.mark.parametrize("api", APIS)
def test_planted_neuron_is_found_decoded_and_causal(planted, api):
    folder, proj, f = planted
    model = from_parts(lm=folder, encoder=None, projection=proj, api=api)
    dog = WORDS.index("dog")
    batch = model.prepare_inputs(image_features=planted_features(f, 4, on=True))

    attr = attribute(model, batch, [dog] * 4)
    top = attr.top_k(1)
    assert top[["layer", "unit"]].values.tolist() == [[0, UNIT]] * 4
    # it fires on the patches that carry the feature direction (the first 8), not elsewhere
    z = attr.activations[:, 0, :, UNIT]
    assert (z[:, :8].min(1).values > 10 * z[:, 8:].abs().mean(1)).all()
    assert all(r[0] == (0, UNIT) for r in attr.ranked_units())

    tokens = decode_units(model, [(0, UNIT)], k=3)[0]
    assert tokens[0][0].strip() == "dog" and tokens[0][1] > 2 * tokens[1][1]

    logits = model(batch)
    p = logits.softmax(-1)[torch.arange(4), batch.last_positions, dog]
    with ablated(model, [(0, UNIT)]):
        p_ablated = model(batch).softmax(-1)[torch.arange(4), batch.last_positions, dog]
    with ablated(model, random_units_like(model, [(0, UNIT)] * 1, seed=3)):
        p_random = model(batch).softmax(-1)[torch.arange(4), batch.last_positions, dog]
    assert (p_ablated < 0.2 * p).all(), (p, p_ablated)
    assert (p_random > 0.9 * p).all(), (p, p_random)

    # the same through the stacked sweep
    sweep = ablation_sweep(model, batch, [dog] * 4, attr.ranked_units(), ks=[0, 1, 8], n_random=3)
    mean = sweep.groupby(["kind", "k"])["rel_p"].mean()
    assert mean[("top", 1)] < 0.2 and mean[("random", 1)] > 0.9
    assert mean[("top", 0)] == pytest.approx(1.0) and mean[("random", 0)] == pytest.approx(1.0)

    # images without the feature do not drive the unit
    off = model.prepare_inputs(image_features=planted_features(f, 4, on=False))
    on_act = float(z[:, :8].min())
    _, cache = model.run_with_cache(off)
    assert cache["blocks.0.mlp.hook_post"][:, off.image_positions[0], UNIT].max() < 0.1 * on_act


def test_the_search_step_finds_the_planted_neuron_from_features(planted):
    from transformer_lens_mm.pipelines.search import SearchSettings, search_batch

    folder, proj, f = planted
    model = from_parts(lm=folder, encoder=None, projection=proj)
    found = search_batch(
        model,
        indices=[0, 1, 2],
        image_features=planted_features(f, 3, on=True),
        targets=["dog"] * 3,
        settings=SearchSettings(k=3, maps=True),
    )
    best = found.units[found.units["rank"] == 0]
    assert best[["layer", "unit"]].values.tolist() == [[0, UNIT]] * 3
    assert best["tokens"].map(lambda t: t[0].strip()).eq("dog").all()
    assert best["decodes_to_target"].all()
    # its patch map: high on the 8 patches that carry the feature, low elsewhere
    maps = found.maps[best.index.to_numpy()]
    assert (maps[:, :8].min(1).values > 10 * maps[:, 8:].abs().mean(1)).all()
