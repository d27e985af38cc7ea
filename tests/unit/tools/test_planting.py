"""Planted units: they fire where they were told to, write c, come out again, and a sign-flipped
plant is the same model."""

from __future__ import annotations

import pytest
import torch
from helpers import APIS, WORDS, build_model, random_images

from transformer_lens_mm.errors import ReadoutError
from transformer_lens_mm.tools.decoding import decode_units
from transformer_lens_mm.tools.planting import design_plant, image_mlp_inputs, planted
from transformer_lens_mm.tools.spatial import image_mlp_activations


@pytest.mark.parametrize("api", APIS)
def test_a_planted_unit_fires_on_its_patches_writes_c_and_is_removed(lm_dirs, api):
    model = build_model(lm_dirs["llama"], api)
    batch = model.prepare_inputs(random_images(6, seed=2))
    x = image_mlp_inputs(model, batch, [1])[1]  # [6, 16, d_model]
    # the "object": the first 5 patches of the first 4 images get a shared direction added
    obj = torch.zeros(6, 16, dtype=torch.bool)
    obj[:4, :5] = True
    gen = torch.Generator().manual_seed(0)
    d, common = torch.randn(2, x.shape[-1], generator=gen)
    x = x + 4 * common  # a large shared component, as real LMs' MLP inputs have
    dog = WORDS.index("dog")
    x_obj = x[obj] + 3 * d
    plants = [
        design_plant(model, 1, 7, x_obj, x[~obj], token_id=dog, sign=s, z_target=2.0)
        for s in (1, -1)
    ]
    assert plants[0].facts["separability_auc"] > 0.95
    # a unit that also writes a carried direction: its output row is the sum of both directions
    carried = torch.randn(x.shape[-1], generator=gen)
    both = design_plant(model, 1, 7, x_obj, x[~obj], token_id=dog, z_target=2.0, carried=carried)
    expect = plants[0].out / plants[0].out.norm() + carried / carried.norm()
    cos = torch.nn.functional.cosine_similarity(both.out, expect, dim=0)
    assert float(cos) > 0.999 and "cos_carried_unembedding" in both.facts
    before = model(batch).detach()
    w_out = model.blocks[1].mlp.W_out[7].detach().clone()
    logits = []
    for plant in plants:
        with planted(model, [plant]):
            logits.append(model(batch).detach())
            # the write decodes to c when read with the sign the unit fires with
            tokens = decode_units(model, [(1, 7)], signs=[plant.sign], k=3)[0]
            assert tokens[0][0].strip() == "dog"
            # the unit's activation on inputs like the calibration: high on the object
            z = image_mlp_activations(model, batch, [1])[:, 0, :, 7]
        assert torch.equal(model.blocks[1].mlp.W_out[7].detach(), w_out)  # restored
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)  # +1 and -1: one model
    assert not torch.allclose(logits[0], before)
    torch.testing.assert_close(model(batch).detach(), before)
    assert z.shape == (6, 16)

    # on its own calibration inputs the unit is on over the object and off elsewhere
    gate = plants[0].gate.double()
    up = plants[0].up.double()
    z_obj = torch.nn.functional.silu(x_obj.double() @ gate) * (x_obj.double() @ up)
    z_rest = torch.nn.functional.silu(x[~obj].double() @ gate) * (x[~obj].double() @ up)
    assert float(z_obj.median()) == pytest.approx(2.0, rel=0.35)
    assert float(z_rest.abs().median()) < 0.2 * float(z_obj.median())


def test_plants_are_refused_where_they_cannot_be_written(lm_dirs):
    gptj = build_model(lm_dirs["gptj"], "bridge")
    x = torch.randn(10, 32)
    with pytest.raises(ReadoutError, match="gated"):
        design_plant(gptj, 0, 1, x[:5], x[5:], token_id=3, z_target=1.0)
    llama = build_model(lm_dirs["llama"], "bridge")
    with pytest.raises(ValueError, match="sign must be"):
        design_plant(llama, 0, 1, x[:5], x[5:], token_id=3, z_target=1.0, sign=2)
    with pytest.raises(ValueError, match="calibrate"):
        design_plant(llama, 0, 1, x[:1], x[5:], token_id=3, z_target=1.0)
