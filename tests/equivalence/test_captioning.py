"""Greedy captions with the KV cache == step-by-step argmax without a cache."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import generate_captions, hook_names


def manual_greedy(model, images, prompts, n_steps, fwd_hooks=()):
    """Independent reference: full forward each step (right padding, one item at a time)."""
    out = []
    for i, image in enumerate(images):
        batch = model.prepare_inputs([image], prompts=[prompts[i]])
        tokens = []
        for _ in range(n_steps):
            # the whole sequence is recomputed from scratch every step
            logits = model.run_with_hooks(batch, fwd_hooks=list(fwd_hooks))
            nxt = int(logits[0, -1].argmax())
            tokens.append(nxt)
            text = model.tokenizer.decode([*batch.tokens[0, batch.n_image_tokens :].tolist(), nxt])
            batch = model.prepare_inputs([image], prompts=[text])
        out.append(tokens)
    return out


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_kv_cache_greedy_equals_argmax_without_cache(lm_dirs, api, kind, fused):
    model = build_model(lm_dirs[kind], api, fused=fused)
    images = random_images(2)
    prompts = ["A picture of", "A photo of a big"]  # different lengths: left padding
    n = 6
    cached = generate_captions(model, images, prompts=prompts, max_new_tokens=n, stop_at_eos=False)
    uncached = generate_captions(
        model, images, prompts=prompts, max_new_tokens=n, stop_at_eos=False, use_kv_cache=False
    )
    assert cached.tokens.tolist() == uncached.tokens.tolist()
    assert cached.tokens.tolist() == manual_greedy(model, images, prompts, n)
    assert cached.texts == [model.tokenizer.decode(t) for t in cached.tokens.tolist()]


@pytest.mark.parametrize("api", APIS)
def test_kv_cache_greedy_under_a_user_hook(lm_dirs, api, fused):
    model = build_model(lm_dirs["llama"], api, fused=fused)
    images = random_images(2, seed=3)
    prompts = ["A picture of"] * 2

    noise = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 8.0

    def boost(x, hook):  # edits the image tokens only: the first step sees them
        return x + noise

    hooks = [(hook_names.IMAGE_EMBED, boost)]
    with_hook = generate_captions(
        model, images, max_new_tokens=5, stop_at_eos=False, fwd_hooks=hooks
    )
    plain = generate_captions(model, images, max_new_tokens=5, stop_at_eos=False)
    assert with_hook.tokens.tolist() == manual_greedy(model, images, prompts, 5, hooks)
    assert with_hook.tokens.tolist() != plain.tokens.tolist()
    # the hook is gone afterwards
    assert (
        generate_captions(model, images, max_new_tokens=5, stop_at_eos=False).tokens.tolist()
        == plain.tokens.tolist()
    )

    # a hook on an MLP of every position also agrees between the two paths
    mlp = [(hook_names.mlp_post(0), lambda x, hook: x * 0.0)]
    a = generate_captions(model, images, max_new_tokens=4, stop_at_eos=False, fwd_hooks=mlp)
    b = generate_captions(
        model, images, max_new_tokens=4, stop_at_eos=False, fwd_hooks=mlp, use_kv_cache=False
    )
    assert a.tokens.tolist() == b.tokens.tolist()


@pytest.mark.parametrize("api", APIS)
def test_sampling_is_seeded_and_stops_at_eos(lm_dirs, api, fused):
    model = build_model(lm_dirs["gptj"], api, fused=fused)
    images = random_images(3)
    a = generate_captions(model, images, max_new_tokens=8, do_sample=True, seed=7, top_k=5)
    b = generate_captions(model, images, max_new_tokens=8, do_sample=True, seed=7, top_k=5)
    assert a.tokens.tolist() == b.tokens.tolist()
    eos = model.tokenizer.eos_token_id
    for row, length in zip(a.tokens.tolist(), a.lengths.tolist()):
        if eos in row:
            assert length == row.index(eos) + 1
            assert all(t == model.tokenizer.pad_token_id for t in row[length:])


def test_top_p_keeps_the_nucleus():
    from transformer_lens_mm.core.generation import sample_next_token

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    g = torch.Generator().manual_seed(0)
    picks = {
        int(sample_next_token(logits, do_sample=True, top_p=0.8, generator=g)) for _ in range(200)
    }
    assert picks == {0, 1}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_first_cached_step_unembeds_only_the_last_position(lm_dirs, api, kind, fused):
    """Like HF's generate: the prompt's other positions skip the unembedding, same logits."""
    model = build_model(lm_dirs[kind], api, fused=fused)
    batch = model.prepare_inputs(
        random_images(2), prompts=["A picture of", "A photo of a big"], padding_side="left"
    )
    with torch.no_grad(), model.inject_images(model.embed_images(batch), batch):
        logits, _ = model.kv_first_step(batch.tokens, batch.attention_mask)
        full = model.lm_forward(batch.tokens, attention_mask=batch.attention_mask)
    assert logits.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_bridge_captioning_uses_the_cache_argument_transformers_asks_for(lm_dirs, kind):
    """transformers 5 deprecates ``past_key_values=`` (a FutureWarning at every step)."""
    import warnings

    model = build_model(lm_dirs[kind], "bridge")
    images = random_images(2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cached = generate_captions(model, images, max_new_tokens=4, stop_at_eos=False)
    assert not [w for w in seen if "past_key_values" in str(w.message)]
    uncached = generate_captions(
        model, images, max_new_tokens=4, stop_at_eos=False, use_kv_cache=False
    )
    assert cached.tokens.tolist() == uncached.tokens.tolist()


@pytest.mark.parametrize("api", APIS)
def test_prompt_hooks_run_on_the_first_cached_step_only(lm_dirs, api):
    model = build_model(lm_dirs["gptj"], api)
    images = random_images(2)
    calls = []

    def zero_image_units(act, hook):
        calls.append(act.shape[1])
        act = act.clone()
        act[:, :16, :8] = 0  # the 16 image positions come first
        return act

    hook = [(hook_names.mlp_post(0), zero_image_units)]
    on_prompt = generate_captions(
        model, images, max_new_tokens=5, stop_at_eos=False, prompt_hooks=hook
    )
    assert len(calls) == 1  # the prompt step; the 4 cached steps see one new position each
    calls.clear()
    throughout = generate_captions(
        model,
        images,
        max_new_tokens=5,
        stop_at_eos=False,
        fwd_hooks=[
            (
                hook_names.mlp_post(0),
                lambda a, hook: zero_image_units(a, hook) if a.shape[1] > 1 else a,
            )
        ],
    )
    assert len(calls) == 1 and on_prompt.tokens.tolist() == throughout.tokens.tolist()
    uncached = generate_captions(
        model, images, max_new_tokens=5, stop_at_eos=False, prompt_hooks=hook, use_kv_cache=False
    )
    assert uncached.tokens.tolist() == on_prompt.tokens.tolist()  # every step recomputes
