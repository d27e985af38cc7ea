"""Ablation hooks, the stacked sweep, the logit lens and activation patching."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import generate_captions, hook_names
from transformer_lens_mm.tools.ablation import (
    ablated,
    ablation_hooks,
    ablation_sweep,
    captions_under_ablation,
    unit_means,
)
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.lens import logit_lens, logit_lens_logits
from transformer_lens_mm.tools.patching import logit_metric, patch_by_position, patch_by_unit
from transformer_lens_mm.tools.units import random_units_like


@pytest.fixture(scope="module", params=APIS)
def model(request, lm_dirs):
    return build_model(lm_dirs["gptj"], request.param)


def test_zero_ablation_only_touches_chosen_units_at_image_positions(model):
    batch = model.prepare_inputs(random_images(2))
    units = [(0, 3), (0, 5), (1, 7)]
    _, clean = model.run_with_cache(batch)
    with ablated(model, units):
        _, cache = model.run_with_cache(batch)
    a0 = cache[hook_names.mlp_post(0)]
    c0 = clean[hook_names.mlp_post(0)]
    assert (a0[:, :16, [3, 5]] == 0).all()
    torch.testing.assert_close(a0[:, 16:], c0[:, 16:])  # prompt positions untouched
    torch.testing.assert_close(a0[:, :16, 6], c0[:, :16, 6])  # other units untouched
    assert (cache[hook_names.mlp_post(1)][:, :16, 7] == 0).all()


def test_mean_and_resample_ablation(model):
    batch = model.prepare_inputs(random_images(2))
    other = model.prepare_inputs(random_images(2, seed=9))
    means = unit_means(model, [other], layers=[0])
    hooks = ablation_hooks(model, [(0, 4)], mode="mean", means=means)
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(batch)
    torch.testing.assert_close(cache[hook_names.mlp_post(0)][:, :16, 4], means[0][4].expand(2, 16))
    _, src = model.run_with_cache(other)
    with ablated(model, [(0, 4)], mode="resample", source={0: src[hook_names.mlp_post(0)]}):
        _, cache = model.run_with_cache(batch)
    torch.testing.assert_close(
        cache[hook_names.mlp_post(0)][:, :16, 4], src[hook_names.mlp_post(0)][:, :16, 4]
    )
    with pytest.raises(ValueError, match="unit_means"):
        ablation_hooks(model, [(0, 4)], mode="mean")


def test_sweep_equals_one_forward_per_condition(model):
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "A photo of a"])
    targets = [12, 13]
    attr = attribute(model, batch, targets)
    ranked = attr.ranked_units()
    ks = [0, 3, 10, 40]
    sweep = ablation_sweep(model, batch, targets, ranked, ks=ks, n_random=2, seed=1, chunk_size=5)
    assert len(sweep) == 2 * len(ks) * 3
    for row in sweep.sample(8, random_state=0).itertuples():
        item = batch.select([row.image])
        if row.kind == "top":
            units = ranked[row.image][: row.k]
        else:
            top = ranked[row.image][: row.k]
            units = random_units_like(
                model, top, seed=1 * 1_000_003 + row.image * 10_007 + row.k * 31 + row.draw
            )
        with ablated(model, units), torch.no_grad():
            logits = model(item)
        p = logits.softmax(-1)[0, item.last_positions[0], targets[row.image]]
        assert float(p) == pytest.approx(row.p_c, rel=1e-4, abs=1e-7)
    # random units come from the same layers in the same numbers
    top = ranked[0][:40]
    rnd = random_units_like(model, top, seed=0)
    count = lambda us: sorted(torch.tensor([u[0] for u in us]).bincount().tolist())  # noqa: E731
    assert count(top) == count(rnd)


def test_sweep_bad_input(model):
    batch = model.prepare_inputs(random_images(1))
    with pytest.raises(ValueError, match="ranked units but k=5"):
        ablation_sweep(model, batch, [12], [[(0, 1)] * 4], ks=[0, 5])
    with pytest.raises(ValueError, match="more than the model's"):
        ablation_sweep(model, batch, [12], [[(0, 1)]], ks=[10**6])


def test_captions_under_ablation(model):
    images = random_images(2)
    plain = generate_captions(model, images, max_new_tokens=4, stop_at_eos=False)
    all_units = [(layer, u) for layer in range(2) for u in range(int(model.cfg.d_mlp))]
    ablated_caps = captions_under_ablation(
        model, images, all_units, max_new_tokens=4, stop_at_eos=False
    )
    no_cache = captions_under_ablation(
        model, images, all_units, max_new_tokens=4, stop_at_eos=False, use_kv_cache=False
    )
    assert ablated_caps.tokens.tolist() == no_cache.tokens.tolist()
    assert ablated_caps.tokens.tolist() != plain.tokens.tolist()


def test_logit_lens_last_layer_equals_logits(model):
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "A photo of a"])
    logits = model(batch)
    lens, labels, _ = logit_lens_logits(model, batch)
    assert labels[-1] == "final_post"
    rows = torch.arange(2)
    torch.testing.assert_close(
        lens[-1, :, 0], logits[rows, batch.last_positions], atol=1e-5, rtol=1e-5
    )
    table = logit_lens(model, batch, k=3, target_ids=[12, 13])
    final = table[(table.component == "final_post") & (table["rank"] == 0)]
    assert final["token_id"].tolist() == logits[rows, batch.last_positions].argmax(-1).tolist()
    assert set(table.layer) == {0.0, 1.0, 2.0}
    with pytest.raises(IndexError, match="positions must lie"):
        logit_lens(model, batch, positions=[999])


def test_patching_restores_clean_at_the_extremes(model):
    clean = model.prepare_inputs(random_images(1, seed=1))
    corrupted = model.prepare_inputs(random_images(1, seed=2))
    metric = logit_metric(12)
    res = patch_by_position(model, clean, corrupted, metric, chunk_size=7)
    seq = clean.tokens.shape[1]
    assert res.values.shape == (2, seq)
    # patching the whole residual at a position before layer 0 = swapping that token's input;
    # the last position's clean residual at layer 1 carries everything the output depends on
    final = patch_by_position(
        model,
        clean,
        corrupted,
        metric,
        layers=[1],
        hook=lambda layer: f"blocks.{layer}.hook_resid_post",
        positions=[seq - 1],
    )
    assert float(final.values[0, 0]) == pytest.approx(res.clean, abs=1e-4)
    # text positions are identical in both inputs: patching them changes nothing at layer 0
    assert torch.allclose(res.values[0, 16:], torch.tensor(res.corrupted), atol=1e-4)
    units = patch_by_unit(model, clean, corrupted, metric, layers=[0], units=[0, 1, 2])
    assert units.values.shape == (1, 3)
    for bad in ([seq], [-1]):  # negative positions are refused, as in patch_by_position
        with pytest.raises(IndexError, match="positions must be a non-empty list"):
            patch_by_unit(model, clean, corrupted, metric, layers=[0], units=[0], positions=bad)
    for patch in (patch_by_position, patch_by_unit):
        with pytest.raises(ValueError, match="layers is empty"):
            patch(model, clean, corrupted, metric, layers=[])
    with pytest.raises(ValueError, match="same layout"):
        patch_by_position(
            model, clean, model.prepare_inputs(random_images(1), prompts="A photo of a"), metric
        )
