"""Attribution g = Z * dy_c/dZ against independent computations."""

import pytest
import torch
from helpers import APIS, build_model, load_hf, random_images

from transformer_lens_mm import hook_names
from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_unit_table


def hf_plain_autograd_scores(hf, model, batch, target_ids, kind):
    """Independent: HF model fed inputs_embeds, torch hooks on the MLP activations."""
    with torch.no_grad():
        image_embeds = model.image_projection(model.image_encoder(batch.pixel_values))
        embeds = hf.get_input_embeddings()(batch.tokens).clone()
        for i in range(len(batch)):
            embeds[i, batch.image_positions[i]] = image_embeds[i]
    acts, handles = [], []
    blocks = hf.transformer.h if kind == "gptj" else hf.model.layers
    for block in blocks:
        if kind == "gptj":
            handles.append(
                block.mlp.act.register_forward_hook(
                    lambda m, i, o: (o.retain_grad(), acts.append(o))[1] and None
                )
            )
        else:
            handles.append(
                block.mlp.down_proj.register_forward_pre_hook(
                    lambda m, i: (i[0].retain_grad(), acts.append(i[0]))[1] and None
                )
            )
    for p in hf.parameters():
        p.requires_grad_(True)
    logits = hf(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    rows = torch.arange(len(batch))
    y = logits[rows, batch.last_positions, torch.tensor(target_ids)]
    y.sum().backward()
    for h in handles:
        h.remove()
    pos = batch.image_positions
    return torch.stack([(a * a.grad)[rows[:, None], pos] for a in acts], 1), y.detach()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_attribution_equals_plain_autograd(lm_dirs, api, kind):
    model = build_model(lm_dirs[kind], api)
    hf = load_hf(lm_dirs[kind])
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "A photo of a"])
    targets = [12, 25]
    attr = attribute(model, batch, targets)
    ref, y = hf_plain_autograd_scores(hf, model, batch, targets, kind)
    d_mlp = 128 if kind == "gptj" else 64  # GPT-J: 4 * n_embd; Llama: intermediate_size
    assert attr.scores.shape == ref.shape == (2, 2, 16, d_mlp)
    torch.testing.assert_close(attr.target_values, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attr.scores, ref, atol=1e-5, rtol=1e-5)
    assert attr.scores.abs().max() > 1e-3  # not trivially zero
    # parameters were left as they were (no gradient bookkeeping on the model)
    assert all(p.grad is None for p in model.image_projection.parameters())


@pytest.mark.parametrize("kind", ["gptj", "llama"])
def test_both_apis_give_the_same_scores(lm_dirs, kind):
    if len(APIS) < 2:
        pytest.skip("HookedTransformer needs TransformerLens 3.x")
    scores = []
    for api in APIS:
        model = build_model(lm_dirs[kind], api)
        batch = model.prepare_inputs(random_images(2))
        scores.append(attribute(model, batch, [12, 13]).scores)
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=1e-5)


def test_ranking_agrees_with_brute_force_zero_ablation(lm_dirs):
    """Spearman >= 0.9 between g and the drop of y_c when zeroing each unit alone."""
    model = build_model(lm_dirs["gptj"], "bridge")
    batch = model.prepare_inputs(random_images(1, seed=4))
    target = 12
    attr = attribute(model, batch, [target])
    top = attr.top_k(200)
    with torch.no_grad():
        base = model(batch)[0, batch.last_positions[0], target]
        effects = []
        for row in top.itertuples():

            def zero(act, hook, unit=row.unit, pos=row.position):
                act = act.clone()
                act[:, pos, unit] = 0.0
                return act

            out = model.run_with_hooks(batch, fwd_hooks=[(hook_names.mlp_post(row.layer), zero)])
            effects.append(float(base - out[0, batch.last_positions[0], target]))
    score = torch.tensor(top["score"].to_numpy())
    effect = torch.tensor(effects)
    rho = _spearman(score, effect)
    print(f"spearman(attribution, brute-force ablation) = {rho:.3f}")
    assert rho >= 0.9, rho


def _spearman(a, b):
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_top_k_mode_matches_full_mode(lm_dirs):
    model = build_model(lm_dirs["llama"], "bridge")
    batch = model.prepare_inputs(random_images(3))
    full = attribute(model, batch, [12, 13, 14])
    stream = attribute(model, batch, [12, 13, 14], top_k=50)
    a, b = full.top_k(50), stream.top_k(50)
    assert a[["image", "layer", "unit", "position"]].equals(
        b[["image", "layer", "unit", "position"]]
    )
    torch.testing.assert_close(torch.tensor(a["score"].values), torch.tensor(b["score"].values))
    torch.testing.assert_close(
        torch.tensor(a["activation"].values), torch.tensor(b["activation"].values)
    )
    with pytest.raises(ValueError, match="top_k=60"):
        stream.top_k(60)
    with pytest.raises(ValueError, match="full score tensor"):
        stream.unit_scores()


def test_streamed_unit_ranking_matches_full_mode(lm_dirs):
    model = build_model(lm_dirs["gptj"], default_api())  # hooked on TL 3.x
    batch = model.prepare_inputs(random_images(3))
    full = attribute(model, batch, [12, 13, 14])
    # few entries kept, many units ranked: the ranking cannot come from the kept entries
    stream = attribute(model, batch, [12, 13, 14], top_k=5, rank_units=60)
    assert stream.ranked_units("max", limit=60) == full.ranked_units("max", limit=60)
    want = full.unit_scores("max").reshape(3, -1).topk(60).values
    torch.testing.assert_close(stream.best_unit_scores, want)
    with pytest.raises(ValueError, match="reduce='max'"):
        stream.ranked_units("sum")
    with pytest.raises(ValueError, match="needs top_k"):
        attribute(model, batch, [12, 13, 14], rank_units=10)


def test_layer_subset_positions_and_logprob(lm_dirs):
    model = build_model(lm_dirs["gptj"], "bridge")
    batch = model.prepare_inputs(random_images(1))
    full = attribute(model, batch, [12])
    last = attribute(model, batch, [12], layers=[-1])
    torch.testing.assert_close(last.scores[:, 0], full.scores[:, 1])
    allpos = attribute(model, batch, [12], positions="all")
    assert allpos.scores.shape[2] == batch.tokens.shape[1]
    torch.testing.assert_close(allpos.scores[:, :, :16], full.scores)
    lp = attribute(model, batch, [12], metric="logprob")
    assert lp.target_values[0] < 0
    table = decode_unit_table(model, full.top_k(5))
    assert list(table.columns) == [
        "image",
        "rank",
        "layer",
        "unit",
        "position",
        "score",
        "activation",
        "sign",
        "tokens",
    ]
    assert (table["sign"] == 1).all()  # GPT-J's GELU MLP: the paper's +W_out readout
    assert len(table) == 5 and all(len(t) == 10 for t in table["tokens"])
    assert (table["score"].diff().dropna() <= 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(target_ids=[10_000]), ValueError, "target ids must lie"),
        (dict(target_ids=[1, 2]), ValueError, "one per image"),
        (dict(layers=[5]), IndexError, "out of range"),
        (dict(layers=[]), ValueError, "layers is empty"),
        (dict(layers=[0, -2]), ValueError, "duplicates"),
        (dict(positions=torch.tensor([0, 99])), IndexError, "positions must lie"),
        (dict(top_k=0), ValueError, "top_k must be"),
    ],
)
def test_bad_input(lm_dirs, kwargs, error, match):
    model = build_model(lm_dirs["gptj"], "bridge")
    batch = model.prepare_inputs(random_images(1))
    args = dict(target_ids=[12])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        attribute(model, batch, **args)
    attr = attribute(model, batch, [12])
    with pytest.raises(ValueError, match="must be between 1 and"):
        attr.top_k(10**9)


@pytest.mark.parametrize("api", APIS)
def test_a_layer_whose_activations_get_no_gradient_scores_zero(lm_dirs, api):
    """Z is written into the result in the forward and multiplied by its gradient in the
    backward; a layer cut off from y_c (here by a hook that detaches it) must score 0, not Z."""
    model = build_model(lm_dirs["gptj"], api)
    batch = model.prepare_inputs(random_images(1))
    last = model.cfg.n_layers - 1
    uncut = attribute(model, batch, [12], positions="all")
    assert uncut.scores[:, last].abs().max() > 1e-4  # the last position reads the last layer
    cut = [(hook_names.mlp_post(last), lambda act, hook: act.detach().clone())]
    attr = attribute(model, batch, [12], positions="all", fwd_hooks=cut)
    assert torch.equal(attr.scores[:, last], torch.zeros_like(attr.scores[:, last]))
    assert attr.activations[:, last].abs().max() > 0  # its activations are still reported
    assert attr.scores[:, :last].abs().max() > 1e-4
    # the top-k path (which keeps Z aside until the backward) agrees; it ranks only the
    # entries that got a gradient
    n = attr.scores[:, :last].numel()
    ranked = attribute(model, batch, [12], positions="all", fwd_hooks=cut, top_k=n)
    torch.testing.assert_close(
        ranked.best_scores[0], attr.scores[:, :last].reshape(-1).sort(descending=True).values
    )


def test_scattered_and_per_row_positions_equal_the_all_position_scores(lm_dirs):
    model = build_model(lm_dirs["llama"], "bridge")
    batch = model.prepare_inputs(random_images(2), prompts=["A picture of", "A photo of a big"])
    every = attribute(model, batch, [12, 13], positions="all")
    picked = torch.tensor([5, 2, 9])  # not contiguous, not sorted
    some = attribute(model, batch, [12, 13], positions=picked)
    torch.testing.assert_close(some.scores, every.scores[:, :, picked])
    per_row = torch.tensor([[0, 1, 2], [3, 4, 6]])
    rows = attribute(model, batch, [12, 13], positions=per_row, top_k=20)
    ref = every.scores[torch.arange(2)[:, None], :, per_row].transpose(1, 2)
    want = ref.reshape(2, -1).topk(20, dim=-1).values
    torch.testing.assert_close(rows.best_scores, want)
