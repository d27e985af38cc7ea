"""One state-dict rule on both classes: the language model's tensors and the projection's are
in ``state_dict()`` and ``parameters()``, the frozen encoder's only when asked for; a round trip
into a fresh model restores the image logits exactly."""

import pytest
import torch
from helpers import APIS, build_model, build_projection, random_images

from transformer_lens_mm.core.lm_loading import load_bridge, load_hooked_transformer


@pytest.fixture(scope="module", params=APIS)
def api(request):
    return request.param


def test_round_trip_into_a_fresh_model_restores_the_image_logits(lm_dirs, api):
    trained = build_model(lm_dirs["gptj"], api, projection=build_projection(seed=1))
    fresh = build_model(lm_dirs["gptj"], api, projection=build_projection(seed=2))
    batch = trained.prepare_inputs(random_images(2))
    with torch.no_grad():
        want, before = trained(batch), fresh(batch)
    assert (want - before).abs().max() > 1e-3  # the projections differ
    state = trained.state_dict()
    assert {"image_projection.weight", "image_projection.bias"} <= set(state)
    assert not any(k.startswith("image_encoder.") for k in state)
    keys = fresh.load_state_dict(state)
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    with torch.no_grad():
        assert torch.equal(fresh(batch), want)


def test_parameters_agree_with_the_state_dict(lm_dirs, api):
    model = build_model(lm_dirs["gptj"], api)
    names = [n for n, _ in model.named_parameters()]
    assert "image_projection.weight" in names and not any("image_encoder" in n for n in names)
    proj = model.image_projection.weight
    assert any(p is proj for p in model.parameters())  # an optimizer over parameters() trains it
    assert not any(p is q for p in model.parameters() for q in model.image_encoder.parameters())
    with_encoder = model.state_dict(encoder=True)
    assert any(k.startswith("image_encoder.") for k in with_encoder)
    assert set(with_encoder) - set(model.state_dict()) == {
        f"image_encoder.{k}" for k in model.image_encoder.state_dict()
    }


def test_the_lm_part_loads_into_a_plain_model_and_a_plain_state_needs_strict_false(lm_dirs, api):
    model = build_model(lm_dirs["gptj"], api)
    plain = (load_hooked_transformer if api == "hooked" else load_bridge)(lm_dirs["gptj"])
    plain.load_state_dict(model.lm_state_dict())  # strict: the plain model's own keys
    with pytest.raises(RuntimeError, match="image_projection"):
        model.load_state_dict(plain.state_dict())  # a plain LM's state has no projection
    keys = model.load_state_dict(plain.state_dict(), strict=False)
    assert keys.missing_keys == ["image_projection.weight", "image_projection.bias"]
