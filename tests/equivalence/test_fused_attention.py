"""Fused (SDPA) attention of HookedMultimodalTransformer (TL 3.x): same numbers as
TransformerLens's eager attention, forward and backward, with and without padding and a KV
cache; TL's own path whenever a hook wants the scores or the pattern."""

import pickle

import pytest
import torch
from helpers import build_model, random_images
from helpers import tl_config_model as tl_model

from transformer_lens_mm import attribute, generate_captions
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

pytestmark = pytest.mark.skipif(
    not HAS_HOOKED_TRANSFORMER, reason="HookedTransformer needs TransformerLens 3.x"
)

CONFIGS = {
    "gpt2-like": {},
    "llama-like (rotary, grouped K/V)": dict(
        positional_embedding_type="rotary",
        rotary_dim=8,
        n_key_value_heads=2,
        normalization_type="RMS",
        act_fn="silu",
        gated_mlp=True,
    ),
    "rotary on part of the head, adjacent pairs": dict(
        positional_embedding_type="rotary", rotary_dim=4, rotary_adjacent_pairs=True
    ),
    "grouped K/V, ungrouped by TL": dict(n_key_value_heads=2, ungroup_grouped_query_attention=True),
    "local attention": dict(attn_types=["local", "global"], window_size=3),
    "bidirectional": dict(attention_dir="bidirectional"),
    "no attention scale": dict(use_attn_scale=False),
}


def tokens_and_padding():
    tokens = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0
    return tokens, mask


def both_ways(model, fn):
    """``fn()`` with the fused attention, then with TL's."""
    from transformer_lens_mm.fast.attention import set_fused_attention

    fused = fn()
    assert set_fused_attention(model, False) == model.cfg.n_layers
    reference = fn()
    set_fused_attention(model, True)
    return fused, reference


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_fused_attention_gives_tl_numbers_and_gradients(name, padded, sdpa_calls):
    model = tl_model(**CONFIGS[name])
    tokens, mask = tokens_and_padding()
    kwargs = {"attention_mask": mask} if padded else {}

    def logits_and_grads():
        model.zero_grad()
        logits = model(tokens, **kwargs)
        (logits[:, -1] * torch.linspace(-1, 1, 50)).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (logits, grads), (ref_logits, ref_grads) = both_ways(model, logits_and_grads)
    assert len(sdpa_calls) == model.cfg.n_layers  # the fused run used SDPA, TL's did not
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(grads) == len(ref_grads) > 0
    scale = max(g.abs().max() for g in ref_grads)  # (b_K's gradient is 0 up to rounding)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2-like", "llama-like (rotary, grouped K/V)"])
def test_kv_cached_decoding_matches_tl(name):
    """Prompt with padding into a cache, then one token at a time: logits as TL's."""
    from transformer_lens import TransformerLensKeyValueCache

    model = tl_model(**CONFIGS[name])
    tokens, mask = tokens_and_padding()

    def decode():
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 3)
        with torch.no_grad():
            steps = [model(tokens, attention_mask=mask, past_kv_cache=cache)[:, -1]]
            for _ in range(4):
                mask_now = torch.ones(3, 1, dtype=torch.long)
                nxt = steps[-1].argmax(-1, keepdim=True)
                steps.append(model(nxt, attention_mask=mask_now, past_kv_cache=cache)[:, -1])
        return torch.stack(steps)

    fused, reference = both_ways(model, decode)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change", ["none", "a step on TL's path", "reordered batch", "no padding"])
def test_cached_rotated_keys_are_tls_rotated_keys(change):
    """KV-cached decoding rotates only the new keys and keeps the rest from the last step:
    ``hook_rot_k`` gets TL's keys bit for bit, also after a step that took TL's own path or a
    reordering of the cache (the kept rotation is then stale and everything is rotated again)."""
    from transformer_lens import TransformerLensKeyValueCache

    model = tl_model(**CONFIGS["llama-like (rotary, grouped K/V)"])
    tokens, mask = tokens_and_padding()
    if change == "no padding":  # (a mask of ones is dropped: TL's no-mask rotary path)
        mask = torch.ones_like(mask)
    perm = torch.tensor([2, 0, 1])
    rotated_lengths = []
    attn = model.blocks[0].attn

    def spy(x, offset=0, attention_mask=None):
        rotated_lengths.append(x.shape[1])
        return type(attn).apply_rotary(attn, x, offset, attention_mask)

    def decode():
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 3)
        keys = []
        record = ("blocks.0.attn.hook_rot_k", lambda k, hook: keys.append(k.clone()))
        pattern = ("blocks.0.attn.hook_pattern", lambda p, hook: None)
        with torch.no_grad(), model.hooks(fwd_hooks=[record]):
            logits = model(tokens, past_kv_cache=cache, attention_mask=mask)[:, -1]
            for step in range(4):
                nxt = logits.argmax(-1, keepdim=True)
                if change == "reordered batch" and step == 2:
                    for entry in cache.entries:
                        entry.past_keys, entry.past_values = (
                            entry.past_keys[perm],
                            entry.past_values[perm],
                        )
                    cache.previous_attention_mask = cache.previous_attention_mask[perm]
                    nxt = nxt[perm]
                hooks = [pattern] if change == "a step on TL's path" and step == 1 else []
                with model.hooks(fwd_hooks=hooks):
                    step_mask = torch.ones(3, 1, dtype=torch.long)
                    logits = model(nxt, past_kv_cache=cache, attention_mask=step_mask)[:, -1]
        return keys

    attn.apply_rotary = spy
    fused, reference = both_ways(model, decode)
    del attn.apply_rotary
    assert len(fused) == len(reference) == 5
    for got, expected in zip(fused, reference):
        assert torch.equal(got, expected)
    # the fused run's calls: q then k, 5 forwards; after the prompt only new keys are rotated,
    # except by TL's path itself (call 5) and once after it or after the reordering (call 7)
    fused_lengths = rotated_lengths[:10]
    assert fused_lengths[:2] == [10, 10]
    full = [i for i in range(2, 10) if fused_lengths[i] > 1]
    expected_full = {"none": [], "no padding": [], "reordered batch": [7]}
    assert full == expected_full.get(change, [5, 7])


def test_a_padded_query_that_sees_no_key_gets_z_zero(sdpa_calls):
    """TL's NaN guard: a left-padded position attends to nothing and its z is 0; SDPA is
    pointed at every key there and the row zeroed, on whichever backend runs."""
    model = tl_model()
    tokens, mask = tokens_and_padding()

    def z():
        _, cache = model.run_with_cache(
            tokens, attention_mask=mask, names_filter=lambda n: n.endswith("hook_z")
        )
        return cache["blocks.1.attn.hook_z"]

    fused, reference = both_ways(model, z)
    assert sdpa_calls  # hook_z does not need the eager path
    for call in sdpa_calls:  # no row fully masked (some backends give NaN for one)
        assert bool(call["attn_mask"].any(-1).all())
    assert torch.equal(fused[0, :4], torch.zeros_like(fused[0, :4]))
    assert not torch.equal(fused[0, 4:], torch.zeros_like(fused[0, 4:]))
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=1e-5)


def test_hooks_on_scores_or_pattern_run_tl_attention(sdpa_calls):
    model = tl_model(**CONFIGS["llama-like (rotary, grouped K/V)"])
    tokens, _ = tokens_and_padding()
    seen = []
    model.add_hook("blocks.0.attn.hook_pattern", lambda act, hook: seen.append(act.clone()))
    with torch.no_grad():
        model(tokens)
    assert len(seen) == 1 and len(sdpa_calls) == 1  # layer 0 eager, layer 1 fused
    model.reset_hooks()
    rows = seen[0].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # a real pattern
    assert torch.equal(seen[0].tril(), seen[0])  # causal

    # run_with_cache hooks every point: TL's path everywhere, TL's values
    _, cache = model.run_with_cache(tokens)
    assert len(sdpa_calls) == 1
    # (run_with_cache also puts the norms on TL's path: equal up to rounding)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], seen[0])
    # other hook points keep TL's values on the fused path
    names = ("blocks.1.attn.hook_rot_k", "blocks.1.attn.hook_q", "blocks.1.attn.hook_z")
    _, partial = model.run_with_cache(tokens, names_filter=list(names))
    assert len(sdpa_calls) == 1 + model.cfg.n_layers
    for name in names:
        torch.testing.assert_close(partial[name], cache[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attn_scores_soft_cap=5.0),
        dict(positional_embedding_type="alibi"),
        dict(use_attn_result=True),
    ],
    ids=["softcap", "alibi", "use_attn_result"],
)
def test_configs_sdpa_does_not_express_run_tl_attention(overrides, sdpa_calls):
    model = tl_model(**overrides)
    tokens, _ = tokens_and_padding()
    fused, reference = both_ways(model, lambda: model(tokens).detach())
    assert sdpa_calls == []
    assert torch.equal(fused, reference)


def test_split_qkv_input_keeps_tl_block(sdpa_calls):
    """With per-head inputs TL's block adds nothing to skip; values as TL's."""
    model = tl_model()
    model.set_use_split_qkv_input(True)
    tokens, _ = tokens_and_padding()
    fused, reference = both_ways(model, lambda: model(tokens).detach())
    assert len(sdpa_calls) == model.cfg.n_layers
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_fused_attention_in_bfloat16():
    model = tl_model(**CONFIGS["llama-like (rotary, grouped K/V)"], dtype=torch.bfloat16)
    tokens, mask = tokens_and_padding()
    fused, reference = both_ways(model, lambda: model(tokens, attention_mask=mask).detach())
    assert fused.dtype == torch.bfloat16
    assert (fused.float() - reference.float()).abs().max() <= 0.02 * reference.float().abs().max()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_captions_and_attribution_match_tl_attention(lm_dirs, kind):
    model = build_model(lm_dirs[kind], "hooked")
    images = random_images(3)
    batch = model.prepare_inputs(images, prompts=["A picture of", "A photo of a", "A"])

    def run():
        caps = generate_captions(model, images, max_new_tokens=6, stop_at_eos=False)
        return caps.tokens, attribute(model, batch, [12, 13, 14]).scores

    (tokens, scores), (ref_tokens, ref_scores) = both_ways(model, run)
    assert torch.equal(tokens, ref_tokens)
    assert scores.abs().max() > 0
    torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=1e-4)


def test_fused_attention_modules_pickle():
    model = tl_model(**CONFIGS["llama-like (rotary, grouped K/V)"])
    block = pickle.loads(pickle.dumps(model.blocks[0]))
    assert type(block).__name__ == "FusedTransformerBlock"
    assert type(block.attn).__name__ == "FusedGroupedQueryAttention" and block.attn.fused
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(block(x), model.blocks[0](x))


def test_a_pickled_model_loads_in_a_fresh_process(tmp_path):
    """The fused classes live in transformer_lens_mm's modules and are built on first use: a
    fresh process that unpickles a model must find them by name."""
    import subprocess
    import sys

    model = tl_model(**CONFIGS["llama-like (rotary, grouped K/V)"])
    tokens, _ = tokens_and_padding()
    with torch.no_grad():
        expected = model(tokens)
    torch.save({"model": model, "tokens": tokens, "expected": expected}, tmp_path / "m.pt")
    code = (
        "import torch\n"
        f"d = torch.load({str(tmp_path / 'm.pt')!r}, weights_only=False)\n"
        "m = d['model']\n"
        "assert type(m.blocks[0].attn).__name__ == 'FusedGroupedQueryAttention'\n"
        "assert type(m.blocks[0].ln1).__name__ == 'FusedRMSNorm'\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(m(d['tokens']), d['expected'])\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
