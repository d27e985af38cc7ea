"""TransformerLens's own helpers take a MultimodalInput where they take tokens: its patching
functions (equal to a hand-made patching loop), ``generate`` (equal to greedy captions),
``to_str_tokens`` (readable image labels); backward hooks on the image hook points fire."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import generate_captions, hook_names


@pytest.fixture(scope="module", params=APIS)
def model(request, lm_dirs):
    return build_model(lm_dirs["gptj"], request.param).eval()


def test_tl_activation_patching_equals_a_hand_made_loop(model):
    from transformer_lens import patching

    clean = model.prepare_inputs(random_images(1, seed=1))
    corrupted = model.prepare_inputs(random_images(1, seed=2))
    _, cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[0, -1, 12] - logits[0, -1, 13]

    got = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    n_layers, seq = int(model.cfg.n_layers), corrupted.tokens.shape[1]
    assert got.shape == (n_layers, seq)
    want = torch.zeros(n_layers, seq)
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for pos in range(seq):

            def patch(act, hook, pos=pos, name=name):
                act = act.clone()
                act[:, pos] = cache[name][:, pos]
                return act

            with torch.no_grad():
                want[layer, pos] = metric(
                    model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])
                )
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


def test_generate_on_a_multimodal_input_equals_greedy_captions(model):
    images = random_images(2, seed=3)
    batch = model.prepare_inputs(images, padding_side="left")
    caps = generate_captions(model, batch=batch, max_new_tokens=5, stop_at_eos=False)
    out = model.generate(batch, max_new_tokens=5, do_sample=False, stop_at_eos=False)
    assert out.shape == (2, batch.tokens.shape[1] + 5)
    assert out[:, batch.tokens.shape[1] :].tolist() == caps.tokens.tolist()
    texts = model.generate(
        batch, max_new_tokens=5, do_sample=False, stop_at_eos=False, return_type="str"
    )
    assert texts == caps.texts
    with pytest.raises(ValueError, match="freq_penalty"):
        model.generate(batch, freq_penalty=1.0)


def test_to_str_tokens_labels_image_positions(model):
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "A photo of"])
    labels = model.to_str_tokens(batch)
    assert len(labels) == 2 and len(labels[0]) == batch.tokens.shape[1]
    assert labels[0][:4] == ["<img 0,0>", "<img 0,1>", "<img 0,2>", "<img 0,3>"]
    assert labels[0][15] == "<img 3,3>" and labels[0][16].strip() == "A"
    one = model.to_str_tokens(batch.select([1]))
    assert one == labels[1]
    assert model.to_str_tokens(torch.tensor([3, 5])) == model.tokenizer.batch_decode([[3], [5]])


def test_backward_hooks_on_the_image_hook_points_fire(model):
    batch = model.prepare_inputs(random_images(1))
    grads = {}

    def keep(name):
        def hook(grad, hook):
            grads[name] = grad
            return None

        return hook

    hooks = [(n, keep(n)) for n in (hook_names.IMAGE_FEATURES, hook_names.IMAGE_EMBED)]
    with model.hooks(bwd_hooks=hooks):
        model(batch)[0, -1, 12].backward()
    assert set(grads) == {hook_names.IMAGE_FEATURES, hook_names.IMAGE_EMBED}
    assert grads[hook_names.IMAGE_FEATURES].shape == (1, 16, 24)
    # d logit / d features = (d logit / d embeds) @ W (the projection)
    want = grads[hook_names.IMAGE_EMBED] @ model.image_projection.weight
    torch.testing.assert_close(grads[hook_names.IMAGE_FEATURES], want, rtol=1e-5, atol=1e-6)
    model.zero_grad(set_to_none=True)
