"""With the speed layer off, our models compute TransformerLens's own numbers; on, the same up to
float rounding. The reference is a plain TL model (``HookedTransformer`` / ``TransformerBridge``)
loaded separately from the same folder, given the soft-prompt tokens through an ordinary hook on
``hook_embed``: its logits, greedy captions (a full forward per step), attribution (plain
autograd) and ablation (a zeroing hook) against ours."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import ablation_sweep, attribute, generate_captions, hook_names
from transformer_lens_mm.core.lm_loading import load_bridge, load_hooked_transformer
from transformer_lens_mm.fast.fusion import is_fused

KINDS = ["gpt2", "llama"]


def plain_tl(folder, api):
    if api == "hooked":
        return load_hooked_transformer(folder)
    return load_bridge(folder)


def inject(model, batch):
    """A hook writing our model's soft-prompt tokens at the image positions (TL's own path)."""
    with torch.no_grad():
        embeds = model.embed_images(batch)
    rows, cols = batch.image_mask.nonzero(as_tuple=True)

    def hook(x, hook):  # image positions come first: also on a longer sequence (captioning)
        x = x.clone()
        x[rows, cols] = embeds.reshape(-1, embeds.shape[-1]).to(x.dtype)
        return x

    return (hook_names.EMBED, hook)


def plain_logits(plain, batch, hooks=()):
    return plain.run_with_hooks(
        batch.tokens, attention_mask=batch.attention_mask, fwd_hooks=list(hooks)
    )


@pytest.fixture(scope="module", params=[(api, kind) for api in APIS for kind in KINDS])
def pair(request, lm_dirs):
    api, kind = request.param
    ours = build_model(lm_dirs[kind], api, fused=False)
    return ours, plain_tl(lm_dirs[kind], api).eval()


def test_unfused_modules_are_tls_own(pair):
    ours, _ = pair
    assert not is_fused(ours)
    assert not [type(m).__name__ for m in ours.modules() if type(m).__name__.startswith("Fused")]


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_logits_equal_a_plain_tl_model(pair, fused):
    ours, plain = pair
    batch = ours.prepare_inputs(random_images(2))
    with torch.no_grad(), ours.fused(fused):
        logits = ours(batch)
        ref = plain_logits(plain, batch, [inject(ours, batch)])
    if fused:
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(logits, ref)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_greedy_captions_equal_a_full_forward_per_step_on_plain_tl(pair, fused):
    ours, plain = pair
    images = random_images(2, seed=1)
    with ours.fused(fused):
        caps = generate_captions(ours, images, max_new_tokens=5, stop_at_eos=False)
    batch = ours.prepare_inputs(images)
    hook = inject(ours, batch)
    tokens, mask = batch.tokens, batch.attention_mask
    steps = []
    with torch.no_grad():
        for _ in range(5):
            logits = plain.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[hook])
            nxt = logits[:, -1].argmax(-1)
            steps.append(nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(nxt[:, None])], 1)
    assert caps.tokens.tolist() == torch.stack(steps, 1).tolist()


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_attribution_equals_plain_autograd_on_plain_tl(pair, fused):
    ours, plain = pair
    batch = ours.prepare_inputs(random_images(2, seed=2))
    targets = [12, 14]
    with ours.fused(fused):
        attr = attribute(ours, batch, targets)
    acts = {}

    def keep(layer):
        def hook(x, hook):
            x.retain_grad()
            acts[layer] = x
            return x

        return hook

    n_layers = int(ours.cfg.n_layers)
    hooks = [inject(ours, batch)] + [(hook_names.mlp_post(i), keep(i)) for i in range(n_layers)]
    logits = plain_logits(plain, batch, hooks)
    rows = torch.arange(2)
    logits[rows, batch.last_positions, torch.tensor(targets)].sum().backward()
    pos = batch.image_positions
    ref = torch.stack(
        [(acts[i] * acts[i].grad)[rows[:, None], pos] for i in range(n_layers)], 1
    ).detach()
    torch.testing.assert_close(attr.scores, ref, rtol=1e-4, atol=1e-6)
    plain.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_ablation_equals_a_zeroing_hook_on_plain_tl(pair, fused):
    ours, plain = pair
    batch = ours.prepare_inputs(random_images(2, seed=3))
    targets = [12, 14]
    ranked = [[(0, 3), (1, 5), (0, 9), (1, 1)], [(1, 2), (0, 7), (0, 8), (1, 30)]]
    with ours.fused(fused):
        sweep = ablation_sweep(ours, batch, targets, ranked, ks=[0, 2, 4], n_random=0)
    for row in sweep.itertuples():
        units = ranked[row.image][: row.k]
        one = batch.select([row.image])

        def zero(x, hook, layer=None, units=units, one=one):
            layer = int(hook.name.split(".")[1])
            x = x.clone()
            for la, u in units:
                if la == layer:
                    x[:, one.image_positions[0], u] = 0
            return x

        hooks = [inject(ours, one)] + [(hook_names.mlp_post(i), zero) for i in range(2)]
        with torch.no_grad():
            p = plain_logits(plain, one, hooks).softmax(-1)[0, one.last_positions[0]]
        assert float(p[targets[row.image]]) == pytest.approx(row.p_c, rel=1e-4, abs=1e-7)
