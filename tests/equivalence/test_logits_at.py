"""Logits only where they are read (each row's last position, via Hugging Face's
``logits_to_keep`` on the bridge and the stop-before-unembedding path of the hooked class)
equal the all-position path: logits, p(c) of the sweep, attribution scores; patch maps recorded
by the attribution pass equal a separate forward's."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import ablation_sweep, attribute
from transformer_lens_mm.core.mixin import MultimodalMixin
from transformer_lens_mm.tools.spatial import image_mlp_activations
from transformer_lens_mm.tools.targets import Target, target_inputs

PROMPTS = ["A picture of", "A photo of a big", "a"]  # different lengths: right padding


@pytest.fixture(scope="module", params=[(api, k) for api in APIS for k in ("gptj", "llama")])
def model(request, lm_dirs):
    api, kind = request.param
    return build_model(lm_dirs[kind], api)


@pytest.fixture
def all_positions(monkeypatch):
    """The all-position path: a full forward, then the chosen logits (the mixin's own)."""

    def use(model):
        monkeypatch.setattr(type(model), "logits_at", MultimodalMixin.logits_at)

    return use


def test_logits_at_equals_the_full_forward(model):
    batch = model.prepare_inputs(random_images(3), prompts=PROMPTS)
    with torch.no_grad():
        full = model(batch)
        rows = torch.arange(3)
        last = model.logits_at(batch, rows, batch.last_positions)
        torch.testing.assert_close(last, full[rows, batch.last_positions], rtol=1e-5, atol=1e-5)
        picked_rows, picked = torch.tensor([2, 0, 0, 1]), torch.tensor([3, 17, 5, 16])
        some = model.logits_at(batch, picked_rows, picked)  # repeats and any positions
        torch.testing.assert_close(some, full[picked_rows, picked], rtol=1e-5, atol=1e-5)


def test_sweep_and_attribution_equal_the_all_position_path(model, all_positions):
    base = model.prepare_inputs(random_images(3, seed=2), prompts=PROMPTS)
    targets = [Target(12, "x", None, [8, 9]), Target(13, "y", None, []), Target(14, "z", None, [3])]
    batch = target_inputs(model, base, targets)
    tids = [t.token_id for t in targets]
    ranked = [[(0, u), (1, u + 1), (0, u + 2)] for u in (3, 7, 11)]
    fast_sweep = ablation_sweep(model, batch, tids, ranked, ks=[0, 1, 3], n_random=2, seed=4)
    fast_attr = attribute(model, batch, tids)
    all_positions(model)
    ref_sweep = ablation_sweep(model, batch, tids, ranked, ks=[0, 1, 3], n_random=2, seed=4)
    ref_attr = attribute(model, batch, tids)
    assert fast_sweep["p_c"].tolist() == pytest.approx(ref_sweep["p_c"].tolist(), rel=1e-4)
    torch.testing.assert_close(fast_attr.target_values, ref_attr.target_values)
    torch.testing.assert_close(fast_attr.scores, ref_attr.scores, rtol=1e-4, atol=1e-6)
    # the unablated conditions share one forward per image: equal values, every row kept
    zero = fast_sweep[fast_sweep.k == 0]
    assert len(zero) == 3 * 3 and zero.groupby("image")["p_c"].nunique().eq(1).all()


def test_maps_from_the_attribution_pass_equal_a_separate_forward(model):
    base = model.prepare_inputs(random_images(2, seed=3))
    targets = [Target(12, "x", None, [8, 9]), Target(13, "y", None, [])]
    batch = target_inputs(model, base, targets)  # the attribution runs on prompt + prefix
    attr = attribute(model, batch, [12, 13], top_k=7, keep_maps=True)
    table = attr.top_k(7)
    maps = attr.top_k_maps(7)
    acts = image_mlp_activations(model, base)  # a separate forward on the prompt alone
    want = acts[
        torch.tensor(table["image"]), torch.tensor(table["layer"]), :, torch.tensor(table["unit"])
    ]
    torch.testing.assert_close(maps, want, rtol=1e-5, atol=1e-6)
    full = attribute(model, batch, [12, 13])  # the full tensor's activations give the same
    torch.testing.assert_close(full.top_k_maps(7), maps, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="keep_maps"):
        attribute(model, batch, [12, 13], top_k=7).top_k_maps(7)


def test_lm_blocks_fires_every_block_hook_as_a_full_forward_and_skips_the_unembedding(model):
    """``lm_blocks`` (the contextual index's forward): every block's ``hook_resid_post`` sees
    what a full forward's does; the unembedding runs on no position (hooked) or one per row
    (the bridge's ``logits_to_keep``), not on every position."""
    from transformer_lens_mm import hook_names

    tokens = torch.randint(3, int(model.cfg.d_vocab), (2, 7))
    names = [hook_names.resid_post(layer) for layer in range(int(model.cfg.n_layers))]
    seen: dict[str, list[torch.Tensor]] = {"full": [], "blocks": []}

    def keep(where):
        return [(n, lambda x, hook: seen[where].append(x.detach().clone())) for n in names]

    unembedded: list[int] = []
    count = model.unembed.register_forward_hook(lambda m, i, o: unembedded.append(o.shape[-2]))
    try:
        with torch.no_grad():
            with model.hooks(fwd_hooks=keep("full")):
                model.lm_forward(tokens)
            assert unembedded == [7]
            with model.hooks(fwd_hooks=keep("blocks")):
                assert model.lm_blocks(tokens) is None
    finally:
        count.remove()
    assert unembedded[1:] in ([], [1])
    assert len(seen["blocks"]) == len(names)
    for a, b in zip(seen["full"], seen["blocks"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
