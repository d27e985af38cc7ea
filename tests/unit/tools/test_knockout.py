"""Attention knockout against a hand-built known answer (tools/knockout.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import APIS, build_hf_lm, build_model, load_hf, random_images

from transformer_lens_mm.errors import LayerRangeError, PositionGroupError
from transformer_lens_mm.tools.knockout import (
    knockout_curve,
    knockout_hooks,
    knockout_table,
    layer_windows,
    position_groups,
)

READER_LAYER, READER_HEAD = 1, 2


@pytest.fixture(scope="module")
def one_reader(tmp_path_factory):
    """A 3-layer Llama (rotary) whose only attention output is head 2 of layer 1: the last
    position reads the image through that head alone (MLPs work per position)."""
    folder = build_hf_lm(tmp_path_factory.mktemp("reader") / "lm", "llama", num_hidden_layers=3)
    hf = load_hf(folder)
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            w = block.self_attn.o_proj.weight
            keep = w[:, READER_HEAD * d_head : (READER_HEAD + 1) * d_head].clone()
            w.zero_()
            if layer == READER_LAYER:
                w[:, READER_HEAD * d_head : (READER_HEAD + 1) * d_head] = keep
    hf.save_pretrained(folder)
    return folder


def _no_image_p(model, batch, tids):
    """p(c) of the prompt alone (no image tokens): rotary attention depends on relative
    positions only, so this is the value the last position has when it cannot read the image."""
    text = batch.tokens[0, ~batch.image_mask[0]][None]
    with torch.no_grad():
        logits = model.lm_forward(text.to(model.lm_device))
    return logits[0, -1].float().log_softmax(-1)[tids].exp()


@pytest.mark.parametrize("api", APIS)
def test_knockout_of_the_reading_layer_gives_the_no_image_value(one_reader, api):
    model = build_model(one_reader, api)
    batch = model.prepare_inputs(random_images(3, seed=4))
    clean = knockout_table(model, batch, windows=[(0, 3)], pairs=[("prompt", "last")])
    tids = torch.tensor(clean.drop_duplicates("item").target_id.tolist())
    table = knockout_table(model, batch, tids, window=1, pairs=[("image", "last")], n_controls=0)
    no_image = torch.stack([_no_image_p(model, batch.select([i]), tids[i]) for i in range(3)])
    for start in range(3):
        rows = table[table.start == start].sort_values("item")
        got = torch.tensor(rows.p_c.tolist())
        if start == READER_LAYER:  # the image's only path to the last position
            torch.testing.assert_close(got, no_image.cpu().float(), rtol=1e-4, atol=1e-6)
            assert (got - torch.tensor(rows.p_clean.tolist())).abs().max() > 1e-3
        else:  # a layer whose attention writes nothing: no effect at all
            torch.testing.assert_close(got, torch.tensor(rows.p_clean.tolist()), rtol=1e-5, atol=0)
    # the reading head alone gives the same; the other heads do nothing
    only = knockout_table(
        model,
        batch,
        tids,
        windows=[(1, 2)],
        heads=[READER_HEAD],
        pairs=[("image", "last")],
        n_controls=0,
    )
    torch.testing.assert_close(
        torch.tensor(only.sort_values("item").p_c.tolist()),
        no_image.cpu().float(),
        rtol=1e-4,
        atol=1e-6,
    )
    others = knockout_table(
        model,
        batch,
        tids,
        windows=[(1, 2)],
        heads=[0, 1, 3],
        pairs=[("image", "last")],
        n_controls=0,
    )
    torch.testing.assert_close(
        torch.tensor(others.p_c.tolist()), torch.tensor(others.p_clean.tolist()), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("api", APIS)
def test_knockout_masks_the_pattern_and_fused_attention_steps_aside(tmp_path, api):
    folder = build_hf_lm(tmp_path / "lm", "llama")
    images = random_images(2, seed=1)
    fused = build_model(folder, api)
    plain = build_model(folder, api, fused=False)
    batch = fused.prepare_inputs(images)
    groups = position_groups(batch)
    cut = groups["last"][:, :, None] & groups["image"][:, None, :]
    hooks = knockout_hooks(fused, {0: cut})
    _, cache = fused.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    with fused.hooks(fwd_hooks=hooks):
        _, cut_cache = fused.run_with_cache(
            batch, names_filter=lambda n: n.endswith("hook_pattern")
        )
    pat = cut_cache["blocks.0.attn.hook_pattern"]
    last = batch.last_positions
    img = batch.image_positions
    rows = torch.arange(2)[:, None]
    assert pat[rows, :, last[:, None]][..., :].shape[0] == 2
    for i in range(2):
        assert pat[i, :, last[i], img[i]].abs().max() == 0  # no attention to the image
        assert torch.allclose(pat[i, :, last[i]].sum(-1), torch.ones(pat.shape[1]))
        # the other queries are untouched
        torch.testing.assert_close(
            pat[i, :, : last[i]], cache["blocks.0.attn.hook_pattern"][i, :, : last[i]]
        )
    a = knockout_table(fused, batch, window=2, n_controls=2, seed=3)
    b = knockout_table(plain, batch, window=2, n_controls=2, seed=3)
    torch.testing.assert_close(
        torch.tensor(a.p_c.values), torch.tensor(b.p_c.values), rtol=1e-4, atol=1e-6
    )
    assert (a.kind == "control").sum() == 2 * len(a[a.kind == "knockout"])
    ko = a[(a.kind == "knockout") & (a.from_group == "image") & (a.to_group == "last")]
    assert (ko.p_c != ko.p_clean).all()  # the cut changed p(c): the hook was not ignored
    assert "steps aside" in a.attrs["attention"]


def test_position_groups_and_controls(tmp_path):
    folder = build_hf_lm(tmp_path / "lm", "llama")
    model = build_model(folder, APIS[0])
    batch = model.prepare_inputs(random_images(2), prompts=["a b c d e", "a"])
    groups = position_groups(batch)
    real = batch.attention_mask.bool()
    union = sum(g.long() for g in groups.values())
    assert union.max() == 1  # disjoint
    assert (union.bool() == real).all()  # and, without BOS or captions, cover every real token
    assert (groups["image"] == batch.image_mask).all()
    table = knockout_table(model, batch, window=2, n_controls=1, pairs=[("image", "last")])
    ctrl = table[table.kind == "control"].drop_duplicates("item").sort_values("item")
    # the second item's prompt is one token: its control can cut at most that one position
    assert ctrl.n_blocked.tolist()[1] <= int(groups["prompt"][1].sum())
    curve = knockout_curve(table)
    assert set(curve.kind) == {"knockout", "control"}
    assert (curve.n_items == 2).all()


def test_bad_input(tmp_path):
    folder = build_hf_lm(tmp_path / "lm", "llama")
    model = build_model(folder, APIS[0])
    batch = model.prepare_inputs(random_images(1))
    with pytest.raises(LayerRangeError, match="outside the model"):
        knockout_table(model, batch, windows=[(1, 5)])
    with pytest.raises(LayerRangeError, match="does not fit"):
        knockout_table(model, batch, window=3)
    with pytest.raises(PositionGroupError, match="empty"):
        knockout_table(model, batch, pairs=[("caption", "last")])
    with pytest.raises(PositionGroupError, match="overlap"):
        knockout_table(model, batch, pairs=[(batch.attention_mask.bool(), "last")])
    with pytest.raises(PositionGroupError, match="unknown"):
        knockout_table(model, batch, pairs=[("images", "last")])
    with pytest.raises(LayerRangeError, match="heads"):
        knockout_table(model, batch, heads=[7])
    assert layer_windows(4, 2) == [(0, 2), (1, 3), (2, 4)]
