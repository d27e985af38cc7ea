"""nnsight traces and intervenes on both classes as on a plain TL model (the fused bridge's
cheaper calls step aside when nnsight wraps a module's forward)."""

import pytest
import torch
from helpers import APIS, build_model, random_images

nnsight = pytest.importorskip("nnsight")

NAME = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module", params=[(api, kind) for api in APIS for kind in ("gpt2", "llama")])
def model(request, lm_dirs):
    api, kind = request.param
    return build_model(lm_dirs[kind], api)


def test_a_trace_saves_what_run_with_cache_records(model):
    batch = model.prepare_inputs(random_images(2))
    traced = nnsight.NNsight(model)
    with traced.trace(batch):
        saved = traced.blocks[0].hook_resid_post.output.save()
        logits = traced.output.save()
    _, cache = model.run_with_cache(batch)
    torch.testing.assert_close(saved, cache[NAME])
    torch.testing.assert_close(logits, model(batch))


def test_an_intervention_at_the_image_positions_equals_run_with_hooks(model):
    batch = model.prepare_inputs(random_images(2, seed=1))
    positions = batch.image_positions[0]
    traced = nnsight.NNsight(model)
    with traced.trace(batch):
        traced.blocks[0].hook_resid_post.output[:, positions] = 0
        logits = traced.output.save()

    def zero(act, hook):
        act = act.clone()
        act[:, positions] = 0
        return act

    with torch.no_grad():
        want = model.run_with_hooks(batch, fwd_hooks=[(NAME, zero)])
    torch.testing.assert_close(logits, want)
    assert (want - model(batch)).abs().max() > 1e-3  # the intervention changed something
