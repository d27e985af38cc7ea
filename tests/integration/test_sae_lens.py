"""SAELens on images (TL 3.x, where SAELens runs): SAELens's own class given sight, SAE features
at image positions equal ``sae.encode`` of the cached activations, ``exclude_special_tokens``
keeps the SAE at image positions, an SAE may sit on ``hook_embed``, the error term gives the
clean logits."""

import pytest
import torch
from helpers import build_encoder, build_projection, random_images

from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

pytestmark = pytest.mark.skipif(
    not HAS_HOOKED_TRANSFORMER, reason="SAELens runs on TransformerLens 3.x only"
)
sae_lens = pytest.importorskip("sae_lens") if HAS_HOOKED_TRANSFORMER else None


def random_sae(hook_name: str, d_in: int = 32, d_sae: int = 48, seed: int = 0):
    torch.manual_seed(seed)
    cfg = sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook_name
    sae = sae_lens.StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    return sae


@pytest.fixture(scope="module")
def model(lm_dirs):
    from transformer_lens_mm import from_parts
    from transformer_lens_mm.core.lm_loading import load_hooked_transformer
    from transformer_lens_mm.core.sae import HookedMultimodalSAETransformer

    lm = load_hooked_transformer(lm_dirs["gptj"], cls=sae_lens.HookedSAETransformer)
    model = from_parts(lm=lm, encoder=build_encoder(), projection=build_projection())
    assert isinstance(model, HookedMultimodalSAETransformer)
    return model


def test_sae_features_at_image_positions_equal_encoding_the_cached_activations(model):
    from transformer_lens_mm.tools.sae import image_sae_features

    name = "blocks.0.hook_resid_post"
    sae = random_sae(name)
    batch = model.prepare_inputs(random_images(2))
    feats = image_sae_features(model, batch, sae)
    _, cache = model.run_with_cache(batch)
    want = sae.encode(cache[name][:, batch.image_positions[0]])
    assert feats.shape == (2, 16, 48)
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)
    assert (feats > 0).any()


def test_exclude_special_tokens_still_runs_the_sae_at_image_positions(model):
    name = "blocks.0.hook_resid_post"
    sae = random_sae(name, seed=1)
    batch = model.prepare_inputs(random_images(2))
    assert (batch.tokens[batch.image_mask] == model.tokenizer.pad_token_id).all()  # special ids
    out = f"{name}.hook_sae_output"  # what flows on: the SAE's output, or (skipped) its input
    _, kept = model.run_with_cache_with_saes(batch, saes=[sae], exclude_special_tokens=True)
    _, plain = model.run_with_cache_with_saes(batch, saes=[sae])
    image = batch.image_mask
    torch.testing.assert_close(kept[out][image], plain[out][image])
    original = kept[f"{name}.hook_sae_input"][image]
    assert (kept[out][image] - original).abs().max() > 1e-3  # the SAE ran there
    with torch.no_grad():
        torch.testing.assert_close(
            model.run_with_saes(batch, saes=[sae], exclude_special_tokens=True),
            model.run_with_saes(batch, saes=[sae]),
        )


def test_an_sae_on_hook_embed_sees_the_injected_image_tokens(model):
    sae = random_sae("hook_embed", seed=2)
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        soft = model.embed_images(batch)
    _, cache = model.run_with_cache_with_saes(batch, saes=[sae])
    seen = cache["hook_embed.hook_sae_input"][:, batch.image_positions[0]]
    torch.testing.assert_close(seen, soft)


def test_the_error_term_gives_the_clean_logits(model):
    sae = random_sae("blocks.1.hook_resid_pre", seed=3)
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        clean = model(batch)
        with_error = model.run_with_saes(batch, saes=[sae], use_error_term=True)
        without = model.run_with_saes(batch, saes=[sae])
    torch.testing.assert_close(with_error, clean, rtol=1e-4, atol=1e-4)
    assert (without - clean).abs().max() > 1e-3


def test_the_plain_converter_converts_saelens_class_keeping_its_sae_methods(lm_dirs):
    """docs/interop.md's promise: HookedMultimodalTransformer.from_hooked_transformer on
    SAELens's class gives the SAE subclass (it raised a TypeError before)."""
    from transformer_lens_mm import HookedMultimodalTransformer
    from transformer_lens_mm.core.lm_loading import load_hooked_transformer
    from transformer_lens_mm.core.sae import HookedMultimodalSAETransformer

    lm = load_hooked_transformer(lm_dirs["gptj"], cls=sae_lens.HookedSAETransformer)
    model = HookedMultimodalTransformer.from_hooked_transformer(lm)
    assert model is lm and isinstance(model, HookedMultimodalSAETransformer)
    assert hasattr(model, "run_with_cache_with_saes") and "hook_image_embed" in model.hook_dict


@pytest.fixture(scope="module")
def bridge_model(lm_dirs):
    from transformer_lens_mm import from_parts
    from transformer_lens_mm.core.sae import MultimodalSAETransformerBridge

    model = from_parts(
        lm=lm_dirs["llama"], encoder=build_encoder(), projection=build_projection(), api="bridge"
    )
    converted = MultimodalSAETransformerBridge.from_multimodal(model)
    assert converted is model and isinstance(model, sae_lens.SAETransformerBridge)
    return model


@pytest.mark.parametrize("which", ["hooked", "bridge"])
def test_an_sae_at_image_positions_equals_a_hand_applied_hook(which, model, bridge_model):
    from transformer_lens_mm.tools.sae import image_sae_features

    m = model if which == "hooked" else bridge_model
    name = "blocks.1.hook_resid_pre"
    sae = random_sae(name, seed=5)
    batch = m.prepare_inputs(random_images(2))
    with torch.no_grad():
        by_hand = m.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook: sae(x))])
        with_sae = m.run_with_saes(batch, saes=[sae])
        plain = m(batch)
    torch.testing.assert_close(with_sae, by_hand, rtol=1e-5, atol=1e-5)
    assert (with_sae - plain).abs().max() > 1e-3  # the SAE changed the run
    feats = image_sae_features(m, batch, sae)
    _, cache = m.run_with_cache(batch)
    want = sae.encode(cache[name][:, batch.image_positions[0]])
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-6)


def test_bridge_exclude_special_tokens_keeps_image_positions(bridge_model):
    m = bridge_model
    name = "blocks.0.hook_resid_post"
    sae = random_sae(name, seed=6)
    batch = m.prepare_inputs(random_images(2), prompts=["a picture of", "a"])
    assert (batch.tokens[batch.image_mask] == m.tokenizer.pad_token_id).all()
    out = m.get_sae_hook_name(sae, "hook_sae_output")
    _, kept = m.run_with_cache_with_saes(batch, saes=[sae], exclude_special_tokens=True)
    _, plain = m.run_with_cache_with_saes(batch, saes=[sae])
    image = batch.image_mask
    torch.testing.assert_close(kept[out][image], plain[out][image])
    inp = m.get_sae_hook_name(sae, "hook_sae_input")
    assert (kept[out][image] - kept[inp][image]).abs().max() > 1e-3  # the SAE ran there
    # a list of ids: the SAE is bypassed where the prompt's first word stands, nowhere else
    word = int(batch.tokens[0, ~batch.image_mask[0]][0])
    _, skip = m.run_with_cache_with_saes(batch, saes=[sae], exclude_special_tokens=[word])
    where = (batch.tokens == word) & ~image
    torch.testing.assert_close(skip[out][where], skip[inp][where])
    torch.testing.assert_close(skip[out][~where], plain[out][~where])


def test_saelens_bridge_from_parts_and_a_mismatched_sae(lm_dirs, bridge_model):
    from transformer_lens_mm import from_parts
    from transformer_lens_mm.core.sae import MultimodalSAETransformerBridge
    from transformer_lens_mm.errors import HookShapeError, TLMMError
    from transformer_lens_mm.tools.sae import image_sae_features

    booted = sae_lens.SAETransformerBridge.boot_transformers(str(lm_dirs["llama"]), device="cpu")
    model = from_parts(lm=booted, encoder=build_encoder(), projection=build_projection())
    assert isinstance(model, MultimodalSAETransformerBridge)
    batch = bridge_model.prepare_inputs(random_images(1))
    with pytest.raises(HookShapeError, match="d_in is 24") as err:
        image_sae_features(bridge_model, batch, random_sae("blocks.0.hook_resid_post", d_in=24))
    assert isinstance(err.value, TLMMError)
