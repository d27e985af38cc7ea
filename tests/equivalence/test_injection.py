"""Injected forward == the Hugging Face model fed inputs_embeds, on both TL APIs."""

import pytest
import torch
from helpers import APIS, build_model, load_hf, random_images

from transformer_lens_mm import hook_names
from transformer_lens_mm.core.layout import MultimodalInput

KINDS = ["gptj", "llama"]


def hf_reference_logits(hf, model, batch: MultimodalInput, image_embeds=None, edit=None):
    """Independent computation: concat(projection(features), embed(prompt)) into HF."""
    with torch.no_grad():
        if image_embeds is None:
            feats = model.image_encoder(batch.pixel_values)
            image_embeds = model.image_projection(feats)
        embeds = hf.get_input_embeddings()(batch.tokens).clone()
        for i in range(len(batch)):
            embeds[i, batch.image_positions[i]] = image_embeds[i]
        if edit is not None:
            embeds = edit(embeds)
        return hf(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_injected_forward_matches_hf_inputs_embeds(lm_dirs, api, kind, fused):
    model = build_model(lm_dirs[kind], api, fused=fused)
    hf = load_hf(lm_dirs[kind])
    batch = model.prepare_inputs(random_images(2), prompts="A picture of")
    assert batch.image_positions.tolist() == [list(range(16))] * 2
    with torch.no_grad():
        logits = model(batch)
    ref = hf_reference_logits(hf, model, batch)
    assert logits.shape == ref.shape == (2, 16 + 3, hf.config.vocab_size)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    # the images matter: other images give other logits at the prompt positions
    other = model(model.prepare_inputs(random_images(2, seed=5)))
    assert (other[:, -1] - logits[:, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("api", APIS)
def test_gpt2_folder_from_recent_transformers(lm_dirs, api, fused):
    """GPT-2 folders written by recent transformers lack n_ctx; TL 3.9 needs it."""
    assert "n_ctx" not in (lm_dirs["gpt2"] / "config.json").read_text()
    model = build_model(lm_dirs["gpt2"], api, fused=fused)
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        logits = model(batch)
    ref = hf_reference_logits(load_hf(lm_dirs["gpt2"]), model, batch)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_per_item_prompts_with_padding(lm_dirs, api, kind, fused):
    model = build_model(lm_dirs[kind], api, prepend_bos=True, fused=fused)
    hf = load_hf(lm_dirs[kind])
    prompts = ["A picture of", "A photo of a big red"]
    batch = model.prepare_inputs(random_images(2), prompts=prompts)
    assert batch.tokens[:, 0].tolist() == [0, 0]  # BOS first
    assert batch.image_positions.tolist() == [list(range(1, 17))] * 2
    assert batch.last_positions.tolist() == [1 + 16 + 3 - 1, 1 + 16 + 6 - 1]
    with torch.no_grad():
        logits = model(batch)
    ref = hf_reference_logits(hf, model, batch)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(logits[real], ref[real], atol=1e-4, rtol=0)
    # each item equals running it alone (padding does not leak)
    alone = model(model.prepare_inputs(random_images(2)[:1], prompts=prompts[:1]))
    torch.testing.assert_close(logits[0, : alone.shape[1]], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("api", APIS)
def test_hook_points_in_cache_and_last_input(lm_dirs, api, fused):
    model = build_model(lm_dirs["llama"], api, fused=fused)
    images = random_images(3)
    _, cache = model.run_with_cache(images=images)
    assert cache[hook_names.IMAGE_FEATURES].shape == (3, 16, 24)
    assert cache[hook_names.IMAGE_EMBED].shape == (3, 16, 32)
    assert cache[hook_names.mlp_post(1)].shape == (3, 16 + 3, 64)
    # the cached soft tokens are what sits in the residual stream at the image positions
    emb = cache[hook_names.EMBED]
    torch.testing.assert_close(emb[:, :16], cache[hook_names.IMAGE_EMBED])
    assert model.last_input is not None and model.last_input.n_image_tokens == 16
    # same as calling the projection on the cached features by hand
    torch.testing.assert_close(
        model.image_projection(cache[hook_names.IMAGE_FEATURES]), cache[hook_names.IMAGE_EMBED]
    )
    assert hook_names.IMAGE_EMBED in model.hook_dict
    assert hook_names.IMAGE_FEATURES in model.hook_dict


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_hook_edits_change_logits_as_computed_by_hand(lm_dirs, api, kind, fused):
    model = build_model(lm_dirs[kind], api, fused=fused)
    hf = load_hf(lm_dirs[kind])
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        feats = model.image_encoder(batch.pixel_values)
        embeds = model.image_projection(feats)

    # 1) zero the soft token at image position 3
    def zero_token(x, hook):
        x = x.clone()
        x[:, 3] = 0
        return x

    edited = model.run_with_hooks(batch, fwd_hooks=[(hook_names.IMAGE_EMBED, zero_token)])
    by_hand = embeds.clone()
    by_hand[:, 3] = 0
    torch.testing.assert_close(
        edited, hf_reference_logits(hf, model, batch, by_hand), atol=1e-4, rtol=0
    )
    assert (edited - model(batch)).abs().max() > 1e-4

    # 2) scale the encoder features by 2 before the projection
    scaled = model.run_with_hooks(
        batch, fwd_hooks=[(hook_names.IMAGE_FEATURES, lambda x, hook: 2 * x)]
    )
    ref2 = hf_reference_logits(hf, model, batch, model.image_projection(2 * feats))
    torch.testing.assert_close(scaled, ref2, atol=1e-4, rtol=0)

    # 3) a user hook on hook_embed sees the injected embeddings (injection runs first)
    seen = {}
    model.run_with_hooks(
        batch, fwd_hooks=[(hook_names.EMBED, lambda x, hook: seen.setdefault("x", x.clone()))]
    )
    torch.testing.assert_close(seen["x"][:, :16], embeds)


@pytest.mark.parametrize("api", APIS)
def test_plain_text_forward_still_works(lm_dirs, api, fused):
    model = build_model(lm_dirs["gptj"], api, fused=fused)
    hf = load_hf(lm_dirs["gptj"])
    tokens = torch.tensor([[3, 5, 7, 8, 12]])
    torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("api", APIS)
def test_precomputed_features_equal_pixels(lm_dirs, api, fused):
    model = build_model(lm_dirs["gptj"], api, fused=fused)
    batch = model.prepare_inputs(random_images(2))
    feats = model.image_encoder(batch.pixel_values)
    a = model(batch)
    b = model(image_features=feats)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("api", APIS)
def test_gradients_flow_to_projection(lm_dirs, api, fused):
    model = build_model(lm_dirs["llama"], api, fused=fused)
    batch = model.prepare_inputs(random_images(1))
    logits = model(batch)
    logits[0, -1, 5].backward()
    grad = model.image_projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.skipif("hooked" not in APIS, reason="needs TransformerLens 3.x HookedTransformer")
@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_hooked_weights_are_stored_in_the_forward_layout(lm_dirs, kind):
    """W.T / rearranged attention weights are views, not copies, and reloading keeps that."""
    model = build_model(lm_dirs[kind], "hooked")
    mlp, attn = model.blocks[0].mlp, model.blocks[0].attn
    assert mlp.W_in.T.is_contiguous() and mlp.W_out.T.is_contiguous()
    assert model.unembed.W_U.T.is_contiguous()
    assert attn.W_Q.permute(0, 2, 1).is_contiguous() and attn.W_O.permute(2, 0, 1).is_contiguous()
    batch = model.prepare_inputs(random_images(2))
    before = model(batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert mlp.W_in.T.is_contiguous()
    assert torch.equal(model(batch), before)


@pytest.mark.skipif("hooked" not in APIS, reason="needs TransformerLens 3.x HookedTransformer")
@pytest.mark.parametrize("kind", ["gptj", "llama", "gpt2"])
def test_unpadded_mask_is_dropped_with_the_same_numbers(lm_dirs, kind, monkeypatch):
    """Without padding the blocks get no mask (TL's fast slices); logits, KV-cached steps and
    captions equal TL's own masked path, and a padded batch still gets its mask."""
    from transformer_lens import HookedTransformer

    from transformer_lens_mm import generate_captions

    model = build_model(lm_dirs[kind], "hooked")
    images = random_images(2)
    seen = []
    spy = model.blocks[0].attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    unpadded = model.prepare_inputs(images)
    padded = model.prepare_inputs(images, prompts=["A picture of", "A photo of a big"])
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def caption(resids):
        hook = (last, lambda x, hook: resids.append(x.clone()))
        return generate_captions(
            model, batch=unpadded, max_new_tokens=4, stop_at_eos=False, fwd_hooks=[hook]
        )

    fast = model(unpadded)
    fast_resids, ref_resids = [], []
    caps = caption(fast_resids)
    model(padded)
    assert all(m is None for m in seen[:-1]) and seen[-1] is not None
    # TL's own input_to_embed keeps the all-ones mask: the reference path
    monkeypatch.setattr(type(model), "input_to_embed", HookedTransformer.input_to_embed)
    seen.clear()
    slow = model(unpadded)
    ref = caption(ref_resids)
    spy.remove()
    assert seen and all(m is not None for m in seen)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert caps.tokens.tolist() == ref.tokens.tolist()
    assert len(fast_resids) == 4 and [r.shape[1] for r in fast_resids[1:]] == [1, 1, 1]
    for a, b in zip(fast_resids, ref_resids):  # the prompt, then each cached step
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gemma3_injection_matches_hf_inputs_embeds(tmp_path, fused):
    """Gemma scales token embeddings by sqrt(d_model) inside its embedding module; hook_embed is
    after the scaling, like Hugging Face's inputs_embeds, so image tokens are placed in the same
    space as the text embeddings they sit beside (no extra factor)."""
    from helpers import build_hf_lm

    folder = build_hf_lm(tmp_path / "tiny-gemma3", "gemma3")
    model = build_model(folder, "bridge", fused=fused)
    hf = load_hf(folder)
    batch = model.prepare_inputs(random_images(2), prompts="A picture of")
    with torch.no_grad():
        logits = model(batch)
        _, cache = model.run_with_cache(batch)
    ref = hf_reference_logits(hf, model, batch)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    # the text positions of hook_embed are the scaled embeddings: W_E row * sqrt(d_model)
    text = batch.tokens[0, -1]
    scale = hf.config.hidden_size**0.5
    torch.testing.assert_close(
        cache["hook_embed"][0, -1], hf.model.embed_tokens.weight[text] * scale, atol=1e-5, rtol=0
    )
