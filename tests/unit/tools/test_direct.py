"""The gradient-free (MM_Neurons-style) unit score against a hand computation, on the planted
neuron, and the comparison of two rankings."""

import pytest
import torch
from helpers import APIS, WORDS, build_model, build_planted_model, planted_features, random_images

from transformer_lens_mm import from_parts
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.direct import compare_rankings, direct_effect, spearman

UNIT = 7


@pytest.mark.parametrize("api", APIS)
def test_direct_score_equals_a_hand_computation(lm_dirs, api):
    model = build_model(lm_dirs["gptj"], api)
    batch = model.prepare_inputs(random_images(2))
    targets = [WORDS.index("dog"), WORDS.index("cat")]
    direct = direct_effect(model, batch, targets)
    # by hand: Z from run_with_cache, W_out and W_U from the state dict of the HF-format weights
    _, cache = model.run_with_cache(batch)
    n_layers = int(model.cfg.n_layers)
    assert direct.scores.shape == (2, n_layers, 16, int(model.cfg.d_mlp))
    for layer in range(n_layers):
        z = cache[f"blocks.{layer}.mlp.hook_post"]  # [batch, pos, d_mlp]
        w_out = model.blocks[layer].mlp.W_out.detach()  # [d_mlp, d_model]
        for i, c in enumerate(targets):
            coef = w_out @ model.W_U.detach()[:, c]  # [d_mlp]
            ref = z[i, batch.image_positions[i]] * coef
            assert (direct.scores[i, layer] - ref).abs().max() <= 1e-5
            z_img = z[i, batch.image_positions[i]]
            assert (direct.activations[i, layer] - z_img).abs().max() <= 1e-5
    # top-k mode keeps the same best entries
    top = direct_effect(model, batch, targets, top_k=5)
    assert top.top_k(5).equals(direct.top_k(5))
    # y_c of the same forward
    logits = model(batch)
    y = logits[torch.arange(2), batch.last_positions, torch.tensor(targets)]
    assert torch.allclose(direct.target_values, y, atol=1e-5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build_planted_model(tmp_path_factory.mktemp("planted") / "tiny-gptj", unit=UNIT)


@pytest.mark.parametrize("api", APIS)
def test_both_scores_rank_the_planted_unit_first(planted, api):
    folder, proj, f = planted
    model = from_parts(lm=folder, encoder=None, projection=proj, api=api)
    dog = WORDS.index("dog")
    batch = model.prepare_inputs(image_features=planted_features(f, 3, on=True))
    attr = attribute(model, batch, [dog] * 3)
    direct = direct_effect(model, batch, [dog] * 3)
    for scoring in (attr, direct):
        assert scoring.top_k(1)[["layer", "unit"]].values.tolist() == [[0, UNIT]] * 3
        assert all(r[0] == (0, UNIT) for r in scoring.ranked_units())
    agree = compare_rankings(attr, direct, k=8)
    assert len(agree) == 3  # (which of the 8 patches comes first may differ: top_same)
    # the 8 patches that carry the feature are each score's top 8 entries of the planted unit
    assert (agree["overlap"] == 1.0).all() and (agree["unit_overlap"] == 1.0).all()
    assert (agree["spearman"] > 0).all()


def test_compare_rankings_against_a_known_answer():
    from transformer_lens_mm.tools.attribution import Attribution

    def scoring(values):
        s = torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 3)
        return Attribution(
            layers=[0],
            positions=torch.tensor([[0, 1]]),
            target_ids=torch.tensor([0]),
            target_values=torch.tensor([0.0]),
            metric="logit",
            scores=s,
        )

    a = scoring([6, 5, 4, 3, 2, 1])
    b = scoring([6, 4, 5, 1, 2, 3])  # same top entry, top 2 share one entry
    row = compare_rankings(a, b, k=2).iloc[0]
    assert row["top_same"] and row["overlap"] == 0.5
    assert row["unit_overlap"] == 0.5  # units {0, 1} vs {0, 2} (both at position 0)
    assert row["spearman"] == pytest.approx(
        spearman(torch.arange(6.0, 0, -1), torch.tensor([6.0, 4, 5, 1, 2, 3]))
    )
    assert row["spearman"] == pytest.approx(1 - 6 * (0 + 1 + 1 + 4 + 0 + 4) / (6 * 35))


def test_spearman_handles_ties_like_pandas():
    a = torch.tensor([1.0, 2.0, 2.0, 3.0])
    b = torch.tensor([1.0, 3.0, 2.0, 4.0])
    import pandas as pd

    assert spearman(a, b) == pytest.approx(
        pd.Series(a.numpy()).corr(pd.Series(b.numpy()), method="spearman")
    )
