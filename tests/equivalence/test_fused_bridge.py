"""Fused norms and (SDPA) attention of MultimodalTransformerBridge (TL 4.3): same numbers as the
bridge's own computation, forward and backward, with and without padding and a KV cache; the
bridge's own path whenever a hook wants what only it computes."""

import pytest
import torch
from helpers import build_model

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm import attribute, generate_captions
from transformer_lens_mm.fast.bridge import _attend, _mask_plan, set_fused_bridge

pytestmark = pytest.mark.skipif(
    not versions.verified("fused_bridge"),
    reason=f"the fused bridge classes are verified on TL {versions.VERIFIED['fused_bridge']}",
)

KINDS = ["gpt2", "llama"]  # JointQKVAttentionBridge + LayerNorm; PositionEmbeddings... + RMSNorm
PROMPTS = ["A picture of", "A photo of a"]  # different lengths: left padding


@pytest.fixture(scope="module")
def models(lm_dirs):
    return {kind: build_model(lm_dirs[kind], "bridge") for kind in KINDS}


def both_ways(model, fn):
    """``fn()`` fused, then with the bridge's own computation (the model is left fused)."""
    fused = fn()
    n_switched = set_fused_bridge(model, False)
    assert n_switched == 3 * model.cfg.n_layers + 1  # ln1, attn, ln2 per block; ln_final
    try:
        reference = fn()
    finally:
        set_fused_bridge(model, True)
    return fused, reference


def record_calls(monkeypatch, cls, name):
    """The modules on which ``cls.<name>`` runs from now on (the method itself still runs)."""
    method, ran = getattr(cls, name), []

    def counting(self, *args, **kwargs):
        ran.append(self)
        return method(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counting)
    return ran


def features(n, seed=0):
    """Encoder output for ``n`` images (no encoder run: its own SDPA calls are not counted)."""
    return torch.randn(n, 16, 24, generator=torch.Generator().manual_seed(seed))


def batch_of(model, padding_side):
    return model.prepare_inputs(
        image_features=features(2), prompts=PROMPTS, padding_side=padding_side
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_fused_bridge_gives_the_bridges_numbers_and_gradients(
    models, kind, padding_side, sdpa_calls
):
    model = models[kind]
    batch = batch_of(model, padding_side)

    def logits_and_grads():
        model.zero_grad()
        logits = model(batch)
        (logits[:, -1] * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    (logits, grads), (ref_logits, ref_grads) = both_ways(model, logits_and_grads)
    assert len(sdpa_calls) == model.cfg.n_layers  # the fused run used SDPA, the bridge's did not
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    scale = max(g.abs().max() for g in ref_grads.values())
    for name, expected in ref_grads.items():
        torch.testing.assert_close(grads[name], expected, atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cached_captions_and_attribution_match_the_bridge(models, kind, sdpa_calls):
    model = models[kind]
    feats = features(3, seed=1)

    def run():
        caps = generate_captions(
            model,
            image_features=feats,
            prompts=[*PROMPTS, "A"],
            max_new_tokens=5,
            stop_at_eos=False,
        )
        batch = model.prepare_inputs(
            image_features=feats, prompts=[*PROMPTS, "A"], padding_side="left"
        )
        return caps.tokens, attribute(model, batch, [5, 6, 7], positions="all")

    (tokens, result), (ref_tokens, ref_result) = both_ways(model, run)
    assert len(sdpa_calls) > 0
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=0)
    torch.testing.assert_close(result.scores, ref_result.scores, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_a_hook_on_the_pattern_or_the_norm_scale_runs_the_bridges_own_path(
    models, kind, sdpa_calls
):
    """Only the hooked layer computes the bridge's way; the hook sees the bridge's values, and
    run_with_cache gets every pattern; other hook points keep their values."""
    model = models[kind]
    batch = batch_of(model, "left")
    seen = {}

    def grab(name):
        def hook(x, hook):
            seen[name] = x.detach().clone()

        return hook

    hooks = [
        ("blocks.1.attn.hook_pattern", grab("pattern")),
        ("blocks.0.ln2.hook_scale", grab("scale")),
    ]
    hooks += [(f"blocks.{i}.attn.hook_z", grab(f"z{i}")) for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    assert len(sdpa_calls) == model.cfg.n_layers - 1  # block 1 ran the bridge's attention
    fused_seen = dict(seen)
    set_fused_bridge(model, False)
    try:
        with torch.no_grad():
            ref_logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            _, cache = model.run_with_cache(batch)
    finally:
        set_fused_bridge(model, True)
    with torch.no_grad():
        _, fused_cache = model.run_with_cache(batch)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for name, expected in seen.items():
        torch.testing.assert_close(fused_seen[name], expected, atol=1e-5, rtol=1e-5, msg=name)
    assert fused_seen["pattern"].shape[-1] == batch.tokens.shape[1]
    names = [n for n in cache if "hook_pattern" in n or "hook_scale" in n]
    assert len(names) >= 2 * model.cfg.n_layers
    for name in names:
        torch.testing.assert_close(fused_cache[name], cache[name], atol=1e-5, rtol=1e-5, msg=name)


def _bridge_attention(scores_from, q, k, v, mask):
    """The bridge's own masking and softmax (compatibility mode) on random tensors."""
    attn = scores_from
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    scores = attn._apply_reconstruct_attention_mask(scores, mask, k.shape[-2], q.shape[-2])
    return attn._masked_softmax(scores) @ v


def _masks(n_query, n_key, batch=2):
    g = torch.Generator().manual_seed(0)
    allowed = torch.ones(n_query, n_key, dtype=torch.bool).tril(n_key - n_query)
    padded = allowed.expand(batch, 1, n_query, n_key).clone()
    padded[0, ..., :3] = False  # left padding: the first queries of item 0 see no key
    random = torch.rand(batch, 1, n_query, n_key, generator=g) > 0.4
    additive = lambda a: torch.zeros(a.shape).masked_fill(~a, torch.finfo(torch.float32).min)  # noqa: E731
    return {
        "none": None,
        "causal (4-D, HF)": additive(allowed.expand(batch, 1, n_query, n_key)),
        "all keys (4-D)": torch.zeros(batch, 1, n_query, n_key),
        "left padding (4-D)": additive(padded),
        "boolean, random": random,
        "additive, random": additive(random),
    }


@pytest.mark.parametrize("n_query,n_key", [(6, 6), (1, 7), (3, 8)], ids=["prompt", "step", "chunk"])
def test_mask_plan_and_sdpa_equal_the_bridges_masked_softmax(models, n_query, n_key):
    """Independent of any model run: SDPA with the plan's arguments (and the zeroing of queries
    that see no key) against the bridge's own mask, softmax and NaN guard."""
    attn = models["gpt2"].blocks[0].attn
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, n_query, 8, generator=g)
    k, v = (torch.randn(2, 4, n_key, 8, generator=g) for _ in range(2))
    for name, mask in _masks(n_query, n_key).items():
        plan = _mask_plan(mask, n_query, n_key, causal=True)
        got = _attend(q, k, v, plan, 8**-0.5)
        torch.testing.assert_close(got, _bridge_attention(attn, q, k, v, mask), msg=name)
    no_pad = _mask_plan(_masks(n_query, n_key)["causal (4-D, HF)"], n_query, n_key, True)
    # no mask tensor for a prompt (is_causal) or one new token; a chunk after a cache needs one
    assert (no_pad.attn_mask is None) == (n_query in (1, n_key))
    assert no_pad.is_causal == (n_query == n_key > 1)


def test_a_mask_carrying_a_bias_is_left_to_the_bridge():
    bias = torch.zeros(1, 1, 4, 4)
    bias[..., 0] = -2.0  # ALiBi-like: not a 0 / -inf mask
    assert _mask_plan(bias, 4, 4, causal=True) is None
    assert _mask_plan(torch.zeros(1, 4), 1, 4, causal=True) is None  # 2-D: the bridge's path


def test_nothing_is_switched_on_an_unverified_transformer_lens(models, monkeypatch):
    monkeypatch.setattr(versions, "TL_VERSION", "4.99.0")
    assert set_fused_bridge(models["gpt2"], False) == 0
    assert all(m.fused for m in models["gpt2"].modules() if hasattr(m, "fused"))


def test_the_blocks_keyword_filter_equals_the_bridges(models):
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge

    kwargs = {"attention_mask": 1, "position_ids": 2, "hidden_states": 3, "not_a_parameter": 4}
    for model in models.values():
        block = model.blocks[0]
        for n_positional in (0, 1):
            assert block._filter_kwargs_for_forward(kwargs, n_positional) == (
                BlockBridge._filter_kwargs_for_forward(block, kwargs, n_positional)
            )


def test_accelerate_alignment_is_skipped_only_without_an_accelerate_hook(models, monkeypatch):
    import contextlib

    from transformer_lens.model_bridge.generalized_components import base

    aligned = []

    @contextlib.contextmanager
    def counting(module):
        aligned.append(module)
        yield

    monkeypatch.setattr(base, "align_module_device", counting)
    model = models["gpt2"]
    batch = batch_of(model, "right")
    with torch.no_grad():
        model(batch)
    switched = {
        id(m.original_component)
        for m in model.modules()
        if hasattr(m, "fused") and hasattr(m, "original_component")
    }
    assert len(switched) > 5 * model.cfg.n_layers  # norms, attention, linear layers, blocks
    assert not switched & {id(m) for m in aligned}  # no module has an Accelerate hook
    linear = model.blocks[0].mlp.out.original_component
    monkeypatch.setattr(linear, "_hf_hook", object(), raising=False)
    aligned.clear()
    with torch.no_grad():
        model(batch)
    assert [m for m in aligned if id(m) in switched] == [linear]  # TL's alignment again


@pytest.mark.parametrize("kind", KINDS)
def test_every_hook_point_fires_and_every_edit_lands_on_the_fused_bridge(models, kind):
    """The cheaper calls of hook points and linear layers hand over to TL whenever a hook is
    attached: run_with_cache records every hook point with the bridge's values, and edits on a
    projection's hook_in/hook_out and on q change the output exactly as on the bridge."""
    model = models[kind]
    batch = batch_of(model, "left")
    names = ["blocks.0.attn.q.hook_in", "blocks.1.attn.hook_q", "blocks.1.mlp.out.hook_out"]
    assert all(name in model.hook_dict for name in names)

    def edit(x, hook):
        return x * 0.5 + 0.25

    def run():
        with torch.no_grad():
            logits, cache = model.run_with_cache(batch)
            edited = model.run_with_hooks(batch, fwd_hooks=[(n, edit) for n in names])
            plain = model(batch)
        return logits, dict(cache), edited, plain

    (logits, cache, edited, plain), (ref_logits, ref_cache, ref_edited, _) = both_ways(model, run)
    assert sorted(cache) == sorted(ref_cache)
    assert len(cache) > 20 * model.cfg.n_layers
    for name, value in ref_cache.items():
        torch.testing.assert_close(cache[name], value, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(edited, ref_edited, atol=1e-5, rtol=1e-5)
    assert (edited - plain).abs().max() > 1e-2  # the edits did change the output


def test_a_global_module_hook_sees_every_call_on_the_fused_bridge(models):
    """With a global forward hook registered, no module call is skipped."""
    model = models["gpt2"]
    batch = batch_of(model, "right")

    def count():
        calls = []
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: calls.append(type(module).__name__.removeprefix("Fused"))
        )
        try:
            with torch.no_grad():
                model(batch)
        finally:
            handle.remove()
        return sorted(calls)

    def cheap_calls(enabled):
        switched = [
            m
            for m in model.modules()
            if type(m).__name__ in ("FusedHookPoint", "FusedLinearBridge")
        ]
        assert len(switched) > 10 * model.cfg.n_layers
        for module in switched:
            module.fused = enabled

    fused = count()
    cheap_calls(False)  # the norms and attention stay fused
    try:
        reference = count()
    finally:
        cheap_calls(True)
    assert fused == reference
    assert fused.count("HookPoint") > 10 * model.cfg.n_layers


def _matmuls(model, batch):
    """Matrix products dispatched by one forward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {"addmm", "mm", "bmm", "matmul", "linear"}
    seen = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in names:
                seen.append(func)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        logits = model(batch)
    return len(seen), logits


def test_gpt2_q_k_v_are_one_product_of_c_attn_and_follow_weight_edits(models):
    """TL's q/k/v weights are views of c_attn's: one product stands for three (2 fewer per
    layer), in-place edits of q's weight show in it, and a replaced weight (no longer a view)
    brings TL's own projections back; the logits equal the bridge's own every time."""
    model = models["gpt2"]
    batch = batch_of(model, "left")
    attn = model.blocks[0].attn
    n_fused, logits = _matmuls(model, batch)
    projections = [model.blocks[i].attn.q for i in range(model.cfg.n_layers)]
    for proj in projections:
        proj.fused = False  # no joint product: TL's three
    try:
        n_three, ref = _matmuls(model, batch)
    finally:
        for proj in projections:
            proj.fused = True
    assert n_three - n_fused == 2 * model.cfg.n_layers
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)

    q = attn.q.original_component
    original = q.weight
    with torch.no_grad():
        original.mul_(-2.0)  # through q's view: c_attn's weight changes with it
    try:
        with torch.no_grad():
            assert attn._joint_qkv() is not None
            fused, reference = both_ways(model, lambda: model(batch))
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
        assert (fused - logits).abs().max() > 1e-3
        view = original.data
        original.data = view.clone()  # the same Parameter on its own storage: not a view
        with torch.no_grad():
            assert attn._joint_qkv() is None
        original.data = view  # a view again
        with torch.no_grad():
            assert attn._joint_qkv() is not None
        q.weight = torch.nn.Parameter(original.detach() * 0.5)  # a new tensor, not a view
        with torch.no_grad():
            assert attn._joint_qkv() is None
            fused, reference = both_ways(model, lambda: model(batch))
        torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    finally:
        q.weight = original
        with torch.no_grad():
            original.div_(-2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unhooked_block_is_its_layers_call_and_a_hooked_one_runs_tls_forward(
    models, kind, monkeypatch
):
    """A block whose hook_in/hook_out/hook_mlp_in have no hook skips TL's BlockBridge.forward
    (the wrapped layer's call alone); a hook on one block's residual brings TL's forward back
    for that block only, the hook fires, and the output is the same."""
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge

    model = models[kind]
    batch = batch_of(model, "right")
    tl_forward = BlockBridge.forward
    ran = record_calls(monkeypatch, BlockBridge, "forward")
    with torch.no_grad():
        plain = model(batch)
    assert ran == []
    seen = []
    with torch.no_grad():
        hooked = model.run_with_hooks(
            batch, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: seen.append(x.shape))]
        )
    assert ran == [model.blocks[1]] and len(seen) == 1
    torch.testing.assert_close(hooked, plain, atol=0, rtol=0)
    ran.clear()
    with torch.no_grad():  # the bridge's own computation: TL's forward in every block
        set_fused_bridge(model, False)
        try:
            reference = model(batch)
        finally:
            set_fused_bridge(model, True)
    assert len(ran) == model.cfg.n_layers
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-5)
    if kind == "gpt2":  # a direct block(hidden_states) call keeps TL's tuple convention
        x = torch.randn(2, 5, model.cfg.d_model)
        with torch.no_grad():
            got, want = model.blocks[0](x), tl_forward(model.blocks[0], x)
        assert type(got) is type(want) and len(got) == len(want)
        torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unhooked_mlp_is_its_modules_call_and_a_hooked_one_runs_tls_forward(
    models, kind, monkeypatch
):
    """An MLP bridge without hooks on its own or its projections' hook points skips TL's
    forward; a hook on one of them brings it back for that MLP only, and it fires."""
    model = models[kind]
    tl_class = type(model.blocks[0].mlp)._tl
    batch = batch_of(model, "right")
    ran = record_calls(monkeypatch, tl_class, "forward")
    with torch.no_grad():
        plain = model(batch)
    assert ran == []
    seen = []
    for name in ("blocks.1.mlp.hook_out", "blocks.1.mlp.out.hook_in"):
        seen.clear()
        ran.clear()
        with torch.no_grad():
            hooked = model.run_with_hooks(
                batch, fwd_hooks=[(name, lambda x, hook: seen.append(x.shape))]
            )
        assert ran == [model.blocks[1].mlp] and len(seen) == 1, name
        torch.testing.assert_close(hooked, plain, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_an_unhooked_attention_is_one_function_and_a_hook_brings_the_hook_points_back(
    models, kind, padding_side, monkeypatch
):
    """Without a hook on the attention's or its projections' hook points every layer computes
    its whole attention in one function (none of TL's per-call helpers runs); a hook on one
    layer's ``hook_z``/``hook_in`` or one projection's hook point brings that layer's hook
    points back (the hook fires) and only that layer's; the outputs are identical, and equal
    the bridge's own computation."""
    model = models[kind]
    batch = batch_of(model, padding_side)
    fused_class = type(model.blocks[0].attn)
    helper = "_apply_output_projection" if kind == "gpt2" else "_apply_position_embedding_hooks"
    ran = record_calls(monkeypatch, fused_class, helper)
    with torch.no_grad():
        plain = model(batch)
    assert ran == []
    points = ["blocks.1.attn.hook_z", "blocks.1.attn.hook_in", "blocks.1.attn.k.hook_out"]
    if kind == "llama":
        points.append("blocks.1.attn.hook_rot_q")
    seen = []
    for name in points:
        seen.clear()
        ran.clear()
        with torch.no_grad():
            hooked = model.run_with_hooks(
                batch, fwd_hooks=[(name, lambda x, hook: seen.append(x.shape))]
            )
        assert ran == [model.blocks[1].attn] and len(seen) == 1, name
        torch.testing.assert_close(hooked, plain, atol=0, rtol=0, msg=name)
    ran.clear()
    with torch.no_grad():  # KV-cached captions: the cache is written once per layer and step
        caps = generate_captions(
            model, image_features=features(2), prompts=PROMPTS, max_new_tokens=4, stop_at_eos=False
        )
    assert ran == []
    set_fused_bridge(model, False)
    try:
        with torch.no_grad():
            reference = model(batch)
            ref_caps = generate_captions(
                model,
                image_features=features(2),
                prompts=PROMPTS,
                max_new_tokens=4,
                stop_at_eos=False,
            )
    finally:
        set_fused_bridge(model, True)
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(caps.tokens, ref_caps.tokens)


@pytest.mark.parametrize("kind", KINDS)
def test_a_torch_hook_on_a_wrapped_projection_fires_on_the_fused_bridge(models, kind):
    """The short paths read the weights of the modules TL wraps: a plain torch hook on one of
    those modules (an MLP's input projection, an attention's output projection) still fires,
    with the module's own output, and changes what it returns."""
    model = models[kind]
    batch = batch_of(model, "right")
    with torch.no_grad():
        plain = model(batch)
    seen = []
    for module in (
        model.blocks[1].mlp.out.original_component,
        model.blocks[0].attn.o.original_component,
    ):
        seen.clear()

        def double(mod, inputs, output):
            seen.append(output.shape)
            return output * 2

        handle = module.register_forward_hook(double)
        try:
            with torch.no_grad():
                hooked = model(batch)
        finally:
            handle.remove()
        assert len(seen) == 1
        assert (hooked - plain).abs().max() > 1e-4  # the doubled output reached the logits
    with torch.no_grad():
        torch.testing.assert_close(model(batch), plain, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_bridge_has_hugging_face_build_boolean_masks_and_gives_them_back(
    models, kind, monkeypatch
):
    """Fused, the wrapped model builds SDPA's masks (TL loaded it eager); unfused it is eager
    again; a model type not in the tested list keeps its eager masks. Every pattern from
    run_with_cache (TL's own attention reading the boolean mask) equals the eager one's, with
    left padding (queries that see no key)."""
    import transformer_lens_mm.fast.bridge as fused_bridge

    model = models[kind]
    config = model.original_model.config
    assert config._attn_implementation == "sdpa"
    batch = batch_of(model, "left")
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch)
    set_fused_bridge(model, False)
    try:
        assert config._attn_implementation == "eager"
        with torch.no_grad():
            ref_logits, ref_cache = model.run_with_cache(batch)
        monkeypatch.setattr(fused_bridge, "BOOLEAN_MASK_MODELS", ())
        set_fused_bridge(model, True)
        assert config._attn_implementation == "eager"
        set_fused_bridge(model, False)
        monkeypatch.undo()
    finally:
        set_fused_bridge(model, True)
    assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    patterns = [name for name in ref_cache if name.endswith("hook_pattern")]
    assert len(patterns) == model.cfg.n_layers
    for name in patterns:
        torch.testing.assert_close(cache[name], ref_cache[name], atol=1e-6, rtol=1e-5, msg=name)
