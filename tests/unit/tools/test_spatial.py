"""Spatial selectivity: IoU against torchmetrics and hand-counted cases, unit maps against a
plain cache, and the planted neuron's region against random units."""

import numpy as np
import pytest
import torch
from helpers import APIS, build_model, build_planted_model, planted_features, random_images
from torchmetrics.functional.classification import binary_jaccard_index

from transformer_lens_mm import from_parts, hook_names
from transformer_lens_mm.tools.spatial import (
    image_mlp_activations,
    mask_iou,
    patch_map,
    quantile_mask,
    spatial_selectivity,
)


def test_mask_iou_hand_counted_cases():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[:2] = True  # 8 pixels
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[1:3] = True  # 8 pixels, 4 shared
    assert mask_iou(a, b).item() == pytest.approx(4 / 12)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, ~a).item() == 0.0
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 0.0  # empty union: 0, not NaN
    # broadcasting: a stack of regions against one mask
    stack = torch.stack([a, b, ~a])
    assert mask_iou(stack, a).tolist() == pytest.approx([1.0, 4 / 12, 0.0])
    with pytest.raises((ValueError, TypeError)):  # TypeError under runtime shape checks
        mask_iou(a, torch.zeros(5, 5, dtype=torch.bool))


def test_batched_maps_and_regions_equal_one_by_one():
    acts = torch.randn(3, 2, 16)
    maps = patch_map(acts, (4, 4), (10, 12))
    regions = quantile_mask(maps, 0.9)
    assert maps.shape == regions.shape == (3, 2, 10, 12)
    for i in range(3):
        for j in range(2):
            one = patch_map(acts[i, j], (4, 4), (10, 12))
            assert torch.equal(maps[i, j], one)
            assert torch.equal(regions[i, j], quantile_mask(one, 0.9))
    with pytest.raises(ValueError, match="do not fill a 4x4 patch grid"):
        patch_map(torch.randn(2, 15), (4, 4))


def test_mask_iou_equals_torchmetrics_jaccard():
    g = torch.Generator().manual_seed(0)
    for density in (0.05, 0.3, 0.7):
        a = torch.rand(6, 37, 41, generator=g) < density
        b = torch.rand(6, 37, 41, generator=g) < 0.4
        ours = mask_iou(a, b)
        ref = torch.stack([binary_jaccard_index(x.int(), y.int()) for x, y in zip(a, b)])
        assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("api", APIS)
def test_image_mlp_activations_equal_the_cache(lm_dirs, api):
    model = build_model(lm_dirs["llama"], api)
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "An image showing a"])
    acts = image_mlp_activations(model, batch, layers=[1, 0])
    _, cache = model.run_with_cache(batch)
    rows = torch.arange(2)[:, None]
    for slot, layer in enumerate([1, 0]):
        ref = cache[hook_names.mlp_post(layer)][rows, batch.image_positions]
        assert torch.allclose(acts[:, slot], ref.float(), atol=1e-6)


@pytest.mark.parametrize("api", APIS)
def test_spatial_selectivity_region_of_a_unit(lm_dirs, api):
    """A mask equal to the unit's own quantile region gives IoU 1; its complement gives 0."""
    model = build_model(lm_dirs["gptj"], api)
    images = random_images(2, seed=3)
    batch = model.prepare_inputs(images)
    acts = image_mlp_activations(model, batch)
    grid = model.image_encoder.grid_size
    units = [[(1, 5), (0, 2)], [(0, 7)]]
    masks = []
    for i, (layer, unit) in enumerate([(1, 5), (0, 7)]):
        heat = patch_map(acts[i, layer, :, unit], grid, (40, 40))
        masks.append(quantile_mask(heat, 0.8).numpy())
    table = spatial_selectivity(model, batch, units, masks, q=0.8, n_random=2)
    top = table[table.kind == "top"].set_index(["image", "layer", "unit"])
    assert top.loc[(0, 1, 5), "iou"] == pytest.approx(1.0)
    assert top.loc[(1, 0, 7), "iou"] == pytest.approx(1.0)
    assert top.loc[(0, 0, 2), "iou"] < 1.0
    inverse = spatial_selectivity(model, batch, units, [~m for m in masks], q=0.8, n_random=0)
    assert inverse.set_index(["image", "layer", "unit"]).loc[(0, 1, 5), "iou"] == 0.0
    rnd = table[table.kind == "random"]
    assert len(rnd) == 2 * 3  # two draws of as many units, from the same layers
    assert sorted(rnd[(rnd.image == 0) & (rnd.draw == 0)].layer) == [0, 1]
    assert table.region.between(0.15, 0.25).all()  # q=0.8: about a fifth of the pixels


def test_planted_neuron_marks_the_patches_it_reads(tmp_path):
    """The planted unit fires on the top half of the 4x4 grid; random units do not."""
    folder, proj, f = build_planted_model(tmp_path / "tiny-gptj", unit=7)
    model = from_parts(lm=folder, encoder=None, projection=proj, api="bridge")
    batch = model.prepare_inputs(image_features=planted_features(f, 3, on=True))
    top_half = np.zeros((32, 32), dtype=bool)
    top_half[:16] = True
    table = spatial_selectivity(
        model, batch, [[(0, 7)]] * 3, [top_half] * 3, q=0.5, n_random=20, grid_size=(4, 4)
    )
    planted = table[table.kind == "top"].iou
    assert (planted > 0.9).all()
    assert table[table.kind == "random"].iou.mean() < 0.7


def test_spatial_selectivity_bad_input(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    batch = model.prepare_inputs(random_images(2))
    with pytest.raises(ValueError, match="one unit list and one mask per image"):
        spatial_selectivity(model, batch, [[(0, 1)]], [np.ones((40, 40), bool)] * 2)
    with pytest.raises(ValueError, match="must be 2-D"):
        spatial_selectivity(model, batch, [[(0, 1)]] * 2, [np.ones((2, 40, 40), bool)] * 2)
    with pytest.raises(IndexError, match="out of range"):
        spatial_selectivity(model, batch, [[(9, 1)]] * 2, [np.ones((40, 40), bool)] * 2)
