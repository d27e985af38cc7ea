"""The unit readout: which norm scales a write passes, read the way each norm computes them."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import APIS, build_hf_lm, build_model, load_hf

from transformer_lens_mm.errors import ReadoutError, TLMMError, UnitIndexError
from transformer_lens_mm.tools import readout as ro
from transformer_lens_mm.tools.decoding import decode_units, unit_token_ranks
from transformer_lens_mm.tools.spatial import mask_iou, patch_map, quantile_mask, spatial_ceiling

FAMILIES = [
    "llama", "mistral", "mixtral", "qwen2", "qwen2_5_vl", "qwen3", "phi3", "granite", "olmo2",
    "smollm3", "gemma", "gemma2", "gemma3",
]  # fmt: skip


def _hf_norm_classes():
    found = []
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
        for name, rule in ro._NORM_RULES.items():
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                found.append((name, cls, rule))
    found += [("LayerNorm", torch.nn.LayerNorm, "w_or_weight")]  # torch's (bias set to 0)
    found += [("RMSNorm", torch.nn.RMSNorm, "w_or_weight")]
    return sorted({n: (n, c, r) for n, c, r in found}.values())


@pytest.mark.parametrize(("name", "cls", "rule"), _hf_norm_classes(), ids=lambda x: str(x)[:30])
def test_each_known_norm_scales_as_its_forward_does(name, cls, rule):
    """The scale the table says is the one the module's own forward applies: probed with a
    zero-mean input of RMS 100 (so neither centring nor eps matter), out / x = scale."""
    torch.manual_seed(0)
    try:
        norm = cls(8, eps=1e-6)
    except TypeError:
        norm = cls(8)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
        if getattr(norm, "bias", None) is not None:
            norm.bias.zero_()
    pattern = torch.tensor([1.0, -1.0] * 4)
    with torch.no_grad():
        probed = norm(100 * pattern[None])[0] / pattern
    torch.testing.assert_close(ro.norm_scale(norm), probed, rtol=1e-4, atol=1e-4)


def test_gemma3_bridge_reads_one_plus_weight_and_the_post_feedforward_norm(tmp_path):
    folder = build_hf_lm(tmp_path / "tiny-gemma3", "gemma3")
    hf = load_hf(folder)
    with torch.no_grad():  # make the scales far from 1 so that leaving one out shows
        for p in hf.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p))
    hf.save_pretrained(folder)
    model = build_model(folder, "bridge")
    layer = hf.model.layers[1]
    final = 1 + hf.model.norm.weight.detach()
    post = 1 + layer.post_feedforward_layernorm.weight.detach()
    torch.testing.assert_close(ro.final_norm_scale(model), final)
    torch.testing.assert_close(ro.post_mlp_norm_scale(model, 1), post)
    readout = ro.readout_for(model)
    assert readout == ro.Readout(signed=True, final_norm=True)
    w_out = layer.mlp.down_proj.weight.detach().T  # [d_mlp, d_model]
    got = ro.unit_write_vectors(model, 1, [3, 9], signs=[-0.5, 2.0])
    want = torch.stack([-w_out[3], w_out[9]]) * post * final
    torch.testing.assert_close(got, want)
    # the decoding is that vector through W_U; without the final norm only the post norm
    no_final = ro.unit_write_vectors(model, 1, [3], signs=[-1], readout=ro.Readout(True, False))
    torch.testing.assert_close(no_final, -w_out[3:4] * post)
    logits = want @ model.W_U.detach().float()
    top = logits[1].topk(3).indices.tolist()
    decoded = decode_units(model, [(1, 9)], signs=[2.0], k=3, mask_special=False)[0]
    assert [t for t, _ in decoded] == [model.tokenizer.decode([i]) for i in top]


@pytest.mark.skipif("hooked" not in APIS, reason="HookedTransformer needs TransformerLens 3.x")
def test_both_apis_read_the_same_write(lm_dirs):
    hooked = build_model(lm_dirs["llama"], "hooked")
    bridge = build_model(lm_dirs["llama"], "bridge")
    units, signs = [(0, 3), (1, 40), (-1, 7)], [1.0, -2.0, -0.3]
    for layer, unit in units:
        a = ro.unit_write_vectors(hooked, layer, [unit], signs=[-1])
        b = ro.unit_write_vectors(bridge, layer, [unit], signs=[-1])
        torch.testing.assert_close(a, b)
    assert decode_units(hooked, units, signs=signs) == decode_units(bridge, units, signs=signs)
    tids = [25, 26, 12]
    assert torch.equal(
        unit_token_ranks(hooked, units, tids, signs=signs),
        unit_token_ranks(bridge, units, tids, signs=signs),
    )


def test_sign_rules(lm_dirs):
    llama = build_model(lm_dirs["llama"], "bridge")
    assert ro.is_gated(llama) and ro.readout_for(llama).signed
    plus = decode_units(llama, [(1, 5)], signs=[1.0], k=4)
    minus = decode_units(llama, [(1, 5)], signs=[-1.0], k=4)
    assert plus != minus  # the two directions decode differently ...
    # ... and "weights" reads +W_out whatever the sign; "activation" follows it
    assert decode_units(llama, [(1, 5)], signs=[-1.0], k=4, sign="weights") == plus
    gptj = build_model(lm_dirs["gptj"], "bridge")
    assert not ro.readout_for(gptj).signed  # GELU: +W_out (the paper's) unless asked
    auto = decode_units(gptj, [(1, 5)], signs=[-1.0], k=4)
    assert auto == decode_units(gptj, [(1, 5)], k=4)
    assert decode_units(gptj, [(1, 5)], signs=[-1.0], k=4, sign="activation") != auto
    neg = ro.unit_write_vectors(gptj, 1, [5], signs=[-1.0], readout=ro.Readout(True, False))
    pos = ro.unit_write_vectors(gptj, 1, [5], signs=[2.0], readout=ro.Readout(True, False))
    torch.testing.assert_close(neg, -pos)
    # an unknown rule: the runtime type check (tests) or the readout's own error (users)
    with pytest.raises((ReadoutError, TypeError), match="sign"):
        ro.readout_for(llama, sign="up")


def test_bad_input_is_a_clear_error(lm_dirs):
    model = build_model(lm_dirs["llama"], "bridge")
    with pytest.raises(UnitIndexError, match="d_mlp=64"):
        decode_units(model, [(0, 64)], signs=[1])
    with pytest.raises(UnitIndexError, match="out of range for a model with 2 layers"):
        decode_units(model, [(2, 0)], signs=[1])
    with pytest.raises(ReadoutError, match="one per unit"):
        decode_units(model, [(0, 1), (0, 2)], signs=[1])
    with pytest.raises(ReadoutError, match="gated"):
        ro.unit_write_vectors(model, 0, [1])

    class OddNorm(torch.nn.Module):  # a norm class the readout has never seen
        weight = torch.nn.Parameter(torch.ones(32))

    real = model.ln_final
    try:
        object.__setattr__(model, "ln_final", OddNorm())
        with pytest.raises(ReadoutError, match="does not know the norm OddNorm") as err:
            decode_units(model, [(0, 1)], signs=[1])
        assert "register_norm_scale" in str(err.value) and "LlamaForCausalLM" in str(err.value)
        assert isinstance(err.value, TLMMError) and isinstance(err.value, ValueError)
        # without the final norm the readout needs no scale of it
        assert decode_units(model, [(0, 1)], signs=[1], final_norm=False)
        ro.register_norm_scale("OddNorm", "w_or_weight")
        assert decode_units(model, [(0, 1)], signs=[1]) == decode_units(
            model, [(0, 1)], signs=[1], final_norm=False
        )  # its weight is ones
    finally:
        ro._NORM_RULES.pop("OddNorm", None)
        object.__setattr__(model, "ln_final", real)
    with pytest.raises(ReadoutError, match="rule must be one of"):
        ro.register_norm_scale("X", "twice")

    class Block(torch.nn.Module):  # an attention-only layer: no mlp
        pass

    real_blocks = model.blocks
    try:
        object.__setattr__(model, "blocks", [Block(), Block()])
        with pytest.raises(ReadoutError, match="attention-only"):
            ro.unit_output_weights(model, 0)
    finally:
        object.__setattr__(model, "blocks", real_blocks)


def test_spatial_ceiling_bounds_every_map():
    """No map on the grid beats the size ceiling, and the mask's own patch averages reach the
    map ceiling; measured IoUs are read against these."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[4:16, 8:20] = True  # 18% of the pixels
    table = spatial_ceiling([mask], (7, 7), q=0.95)
    row = table.iloc[0]
    assert row["object"] == pytest.approx(144 / 784)
    assert row["size_ceiling"] == pytest.approx(0.05 / (144 / 784))  # a 5% region at best
    best = 0.0
    for _ in range(300):
        region = quantile_mask(patch_map(torch.rand(49, generator=g), (7, 7), (28, 28)), 0.95)
        best = max(best, float(mask_iou(region, mask)))
    assert best <= row["size_ceiling"]  # a random map has no ties: a 5% region
    # the mask's own patch averages are 1 over every patch inside the object: that plateau is
    # all in the region (ties), which can then be larger than 5% and beat the size bound
    assert best < row["map_ceiling"] and row["map_ceiling"] == pytest.approx(0.4444, abs=1e-3)
    with pytest.raises(ValueError, match="2-D"):
        spatial_ceiling([torch.zeros(2, 2, 2)], (2, 2))
