"""Fused norms of HookedMultimodalTransformer (TL 3.x): same numbers as TransformerLens's own
computation, one evaluation of ln1 per block, TL's path whenever a norm hook is attached."""

import gc
import pickle

import pytest
import torch
from helpers import build_model, random_images, tl_config_model

from transformer_lens_mm import attribute, generate_captions
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

pytestmark = pytest.mark.skipif(
    not HAS_HOOKED_TRANSFORMER, reason="HookedTransformer needs TransformerLens 3.x"
)


def norms_of(model):
    return [m for m in model.modules() if type(m).__module__ == "transformer_lens_mm.fast.norms"]


def tl_model(normalization_type: str, dtype=torch.float32):
    """A 2-layer HookedTransformer built from a config, converted."""
    model = tl_config_model(normalization_type=normalization_type, dtype=dtype)
    with torch.no_grad():  # LN weights away from 1/0 so that a wrong affine would show
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b")) and "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def logits_both_ways(model, tokens):
    from transformer_lens_mm.fast.norms import set_fused_norms

    with torch.no_grad():
        fused = model.lm_forward(tokens)
        assert set_fused_norms(model, False) == 2 * model.cfg.n_layers + 1
        reference = model.lm_forward(tokens)
        set_fused_norms(model, True)
    return fused, reference


@pytest.mark.parametrize("norm", ["LN", "LNPre", "RMS", "RMSPre"])
def test_fused_norms_give_tl_numbers(norm):
    model = tl_model(norm)
    names = {type(m).__name__ for m in norms_of(model)}
    assert names == {f"Fused{norm.replace('LN', 'LayerNorm').replace('RMS', 'RMSNorm')}"}
    tokens = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    fused, reference = logits_both_ways(model, tokens)
    assert not torch.equal(fused, torch.zeros_like(fused))
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_fused_norms_in_bfloat16(norm):
    """Low precision: TL normalises in fp32, casts, then applies the weights; so do we."""
    model = tl_model(norm, dtype=torch.bfloat16)
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    fused, reference = logits_both_ways(model, tokens)
    assert fused.dtype == reference.dtype == torch.bfloat16
    scale = reference.float().abs().max()
    assert (fused.float() - reference.float()).abs().max() <= 0.02 * scale


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_ln1_is_computed_once_per_block(lm_dirs, kind):
    model = build_model(lm_dirs[kind], "hooked")
    calls = []
    for m in norms_of(model):
        compute = m._compute
        m._compute = lambda x, compute=compute, m=m: calls.append(m) or compute(x)
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        model(batch)
    n_layers = model.cfg.n_layers
    # TL calls ln1 three times per block (queries, keys, values): computed once here
    assert len(calls) == 2 * n_layers + 1
    assert [calls.count(b.ln1) for b in model.blocks] == [1] * n_layers
    gc.collect()  # and nothing is kept once the forward is over
    assert not any("_memo" in m.__dict__ for m in norms_of(model))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_captions_and_attribution_match_tl_norms(lm_dirs, kind):
    from transformer_lens_mm.fast.norms import set_fused_norms

    model = build_model(lm_dirs[kind], "hooked")
    images = random_images(3)
    batch = model.prepare_inputs(images, prompts=["A picture of", "A photo of a", "A"])
    results = []
    for enabled in (True, False):
        set_fused_norms(model, enabled)
        caps = generate_captions(model, images, max_new_tokens=6, stop_at_eos=False)
        results.append((caps.tokens, attribute(model, batch, [12, 13, 14]).scores))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-4)


def test_hooks_on_norms_see_transformer_lens(lm_dirs):
    """A hook on hook_scale / hook_normalized (or run_with_cache) runs TL's own forward."""
    from transformer_lens_mm.fast.norms import set_fused_norms

    model = build_model(lm_dirs["gpt2"], "hooked")
    batch = model.prepare_inputs(random_images(2))
    seen = []
    model.add_hook("blocks.0.ln1.hook_scale", lambda act, hook: seen.append(act.clone()))
    with torch.no_grad():
        hooked = model(batch)
    model.reset_hooks()
    assert len(seen) == 3  # once each for queries, keys and values, as in TL
    _, cache = model.run_with_cache(batch)
    set_fused_norms(model, False)
    _, reference = model.run_with_cache(batch)
    with torch.no_grad():
        plain = model(batch)
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=1e-5)
    for name in ("blocks.1.ln2.hook_scale", "blocks.1.ln1.hook_normalized", "ln_final.hook_scale"):
        assert torch.equal(cache[name], reference[name]), name
    resid = cache["blocks.0.hook_resid_pre"]
    centred = resid - resid.mean(-1, keepdim=True)
    expected = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    torch.testing.assert_close(seen[0], expected)


def test_memo_follows_in_place_edits():
    model = tl_model("LN")
    ln = model.blocks[0].ln1
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        first = ln(x)
        assert ln(x) is first  # same input, same output object
        x.mul_(2.0)  # the input changed in place
        second = ln(x)
        assert second is not first
        ln.w.add_(1.0)  # the weights changed in place
        third = ln(x)
    torch.testing.assert_close(third, torch.nn.functional.layer_norm(x, (32,), ln.w, ln.b, ln.eps))
    with torch.enable_grad():  # a no-grad output is not reused under autograd
        assert ln(x).requires_grad


def test_fused_norms_under_inference_mode():
    model = tl_model("LN")
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.lm_forward(tokens)
    with torch.inference_mode():  # inference tensors have no version counter
        got = model.lm_forward(tokens)
    torch.testing.assert_close(got, expected)


def test_fused_norm_modules_pickle():
    ln = tl_model("RMS").blocks[1].ln2
    again = pickle.loads(pickle.dumps(ln))
    assert type(again) is type(ln) and again.fused
    x = torch.randn(1, 3, 32)
    torch.testing.assert_close(again(x), ln(x))
