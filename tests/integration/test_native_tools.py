"""Every analysis tool runs unchanged on a native VLM (tiny LLaVA and Gemma 3), checked
against what each tool must give on any model of the contract."""

import pytest
import torch
from helpers import build_native_vlm, random_images

from transformer_lens_mm import (
    MultimodalModel,
    find_multimodal_neurons,
    generate_captions,
    hook_names,
)
from transformer_lens_mm.core.native import NativeVLMBridge
from transformer_lens_mm.errors import ReadoutError
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_soft_prompts, decode_unit_table
from transformer_lens_mm.tools.lens import logit_lens_logits
from transformer_lens_mm.tools.patching import logit_metric, patch_by_position, patch_by_unit
from transformer_lens_mm.tools.spatial import image_mlp_activations, spatial_selectivity


@pytest.fixture(scope="module", params=["llava", "gemma3", "qwen2_5_vl"])
def model(request, tmp_path_factory):
    folder = build_native_vlm(tmp_path_factory.mktemp("vlm") / request.param, request.param)
    return NativeVLMBridge.from_pretrained(folder, image_size=32)


def test_it_is_a_multimodal_model(model):
    assert isinstance(model, MultimodalModel)
    assert model.image_projection is None and model.n_image_tokens == 16
    assert not any(name.startswith("projector.") for name in model.hook_dict)  # listed once
    batch = model.prepare_inputs(random_images(1))
    labels = model.to_str_tokens(batch)
    assert labels.count("<img 0,0>") == 1 and "<img 3,3>" in labels


def test_logit_lens_last_layer_equals_logits(model):
    batch = model.prepare_inputs(random_images(2), prompts=["a picture of", "the dog"])
    lens, labels, _ = logit_lens_logits(model, batch)
    logits = model(batch)
    last = logits[torch.arange(2), batch.last_positions]
    assert labels[-1] == "final_post"
    torch.testing.assert_close(lens[-1, :, 0], last, atol=1e-4, rtol=1e-4)


def test_soft_prompt_decoding_reads_the_projector_outputs(model):
    batch = model.prepare_inputs(random_images(1))
    with torch.no_grad():
        embeds = model.embed_images(batch)
    table = decode_soft_prompts(model, embeds[0], k=3)
    assert len(table) == 16 * 3
    # the nearest token by cosine, by hand, for the first image token (special tokens skipped)
    cos = torch.nn.functional.cosine_similarity(embeds[0, :1], model.W_E.detach(), dim=-1)
    first = table[(table["index"] == 0) & (table["rank"] == 0)].iloc[0]
    assert float(first.cosine) == pytest.approx(float(cos[int(first.token_id)]), abs=1e-5)
    ordinary = [i for i in range(len(cos)) if i not in model.tokenizer.all_special_ids]
    assert int(first.token_id) == max(ordinary, key=lambda i: float(cos[i]))


def test_ablation_sweep_and_captions_under_ablation(model):
    batch = model.prepare_inputs(random_images(2, seed=1))
    attr = attribute(model, batch, [25, 12])
    ranked = attr.ranked_units()
    table = ablation_sweep(model, batch, [25, 12], ranked, ks=[0, 4, 8])
    with torch.no_grad():
        p = model(batch).softmax(-1)[torch.arange(2), batch.last_positions, torch.tensor([25, 12])]
    at0 = table[(table.k == 0) & (table.kind == "top")].sort_values("image")
    assert at0.p_c.tolist() == pytest.approx(p.tolist(), rel=1e-4)
    top8 = table[(table.k == 8) & (table.kind == "top")].sort_values("image")
    assert (top8.p_c.to_numpy() != at0.p_c.to_numpy()).all()
    everything = [(layer, u) for layer in range(2) for u in range(64)]
    kw = dict(max_new_tokens=3, stop_at_eos=False)
    caps = captions_under_ablation(model, random_images(2, seed=1), everything, **kw)
    slow = captions_under_ablation(
        model, random_images(2, seed=1), everything, use_kv_cache=False, **kw
    )
    assert caps.tokens.tolist() == slow.tokens.tolist()


def test_patching_restores_clean_at_the_extremes(model):
    clean = model.prepare_inputs(random_images(1, seed=5))
    corrupted = model.prepare_inputs(random_images(1, seed=6))
    metric = logit_metric(25)
    res = patch_by_position(model, clean, corrupted, metric)
    seq = clean.tokens.shape[1]
    assert res.values.shape == (2, seq)
    image = clean.image_positions[0].tolist()
    text = [p for p in range(seq) if p not in image]
    # text tokens are the same in both inputs: patching one changes nothing at layer 0
    assert torch.allclose(res.values[0, text], torch.tensor(res.corrupted), atol=1e-4)
    assert (res.values[0, image] - res.corrupted).abs().max() > 1e-4
    final = patch_by_position(
        model, clean, corrupted, metric, layers=[1],
        hook=lambda layer: f"blocks.{layer}.hook_resid_post", positions=[seq - 1],
    )  # fmt: skip
    assert float(final.values[0, 0]) == pytest.approx(res.clean, abs=1e-4)
    units = patch_by_unit(model, clean, corrupted, metric, layers=[0], units=[0, 1, 2])
    assert units.values.shape == (1, 3)


def test_spatial_maps_use_the_image_token_grid(model):
    batch = model.prepare_inputs(random_images(2, seed=2))
    acts = image_mlp_activations(model, batch, layers=[0, 1])
    assert acts.shape == (2, 2, 16, 64)
    masks = [torch.zeros(32, 32, dtype=torch.bool) for _ in range(2)]
    for m in masks:
        m[:16, :16] = True
    table = spatial_selectivity(model, batch, [[(0, 1), (1, 2)]] * 2, masks, n_random=1)
    assert set(table.kind) == {"top", "random"} and table.iou.between(0, 1).all()


def test_the_search_and_unit_decoding(model):
    found = find_multimodal_neurons(model, random_images(3, seed=3), k=5, max_new_tokens=4)
    assert len(found.items) == 3
    assert len(found.units) == 5 * len(found.targets)
    table = decode_unit_table(model, found.units[["layer", "unit", "activation"]].head(3), k=4)
    assert table.tokens.map(len).tolist() == [4, 4, 4]
    # the LMs are gated: each entry is read with the sign of its activation, as the search did
    assert table["sign"].tolist() == found.units["sign"].head(3).tolist()
    assert [t[:4] for t in found.units["tokens"].head(3)] == table.tokens.tolist()
    with pytest.raises(ReadoutError, match="gated"):
        decode_unit_table(model, found.units[["layer", "unit"]].head(3), k=4)


def test_greedy_captions_under_a_hook_on_the_image_embeddings(model):
    images = random_images(2, seed=7)
    plain = generate_captions(model, images, max_new_tokens=4, stop_at_eos=False)
    noise = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 8
    edited = generate_captions(
        model,
        images,
        max_new_tokens=4,
        stop_at_eos=False,
        fwd_hooks=[(hook_names.IMAGE_EMBED, lambda x, hook: x + noise)],
    )
    assert plain.tokens.tolist() != edited.tokens.tolist()


def test_bad_inputs_name_the_model_and_the_fix(model, tmp_path):
    with pytest.raises(ValueError, match="image placeholder"):
        model.prepare_inputs(random_images(1), prompts=f"{model.image_placeholder} what is it")
    with pytest.raises(ValueError, match="pixel_values must be"):
        model.prepare_inputs(pixel_values=torch.zeros(1, 3, 8, 8))

    def refuse(*args, **kwargs):  # what a processor says of an image it cannot take
        raise ValueError("Unsupported number of image dimensions")

    processor = model.processor.image_processor
    processor.__dict__["__call__"] = refuse  # instance-level, undone below
    try:
        cls = type(processor)
        original, cls.__call__ = cls.__call__, lambda self, *a, **k: refuse()
        with pytest.raises(ValueError, match=f"{model.lm_name} rejected the images"):
            model.prepare_inputs(random_images(1))
    finally:
        cls.__call__ = original
        del processor.__dict__["__call__"]
    with pytest.raises(ValueError, match="context"):
        model.prepare_inputs(random_images(1), prompts=" ".join(["dog"] * 200))
    with pytest.raises(ValueError, match="exactly one"):
        model.prepare_inputs()


def test_loading_refuses_what_it_cannot_run(tmp_path, lm_dirs):
    from transformers import LlavaNextConfig

    from transformer_lens_mm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"not a vision-language model.*from_parts"):
        NativeVLMBridge.from_pretrained(lm_dirs["llama"])
    tiled = tmp_path / "llava-next"
    LlavaNextConfig(architectures=["LlavaNextForConditionalGeneration"]).save_pretrained(tiled)
    with pytest.raises(ConfigError, match=r"does not run yet.*tiles.*Supported"):
        NativeVLMBridge.from_pretrained(tiled)
    no_processor = build_native_vlm(tmp_path / "bare", "llava")
    for f in no_processor.glob("*"):
        if "processor" in f.name or "preprocessor" in f.name or "chat_template" in f.name:
            f.unlink()
    with pytest.raises(ConfigError, match="processor"):
        NativeVLMBridge.from_pretrained(no_processor)


def test_tl_vision_hooks_fire_where_the_bridged_tower_is_used(model):
    from transformer_lens_mm.core.native import _vision_module

    bridged = model.image_encoder.model is _vision_module(model.original_model)
    _, cache = model.run_with_cache(model.prepare_inputs(random_images(1)))
    assert any(name.startswith("vision_encoder.") for name in cache.keys()) == bridged


def test_tl_projector_hooks_see_the_same_tensors_as_ours(model):
    _, cache = model.run_with_cache(model.prepare_inputs(random_images(2)))
    for tl_name, ours in (
        ("vision_projector.hook_vision_proj_in", hook_names.IMAGE_FEATURES),
        ("vision_projector.hook_vision_proj_out", hook_names.IMAGE_EMBED),
    ):  # Qwen2.5-VL's merger sees every image's patches flattened into one sequence
        assert torch.equal(cache[tl_name].reshape(cache[ours].shape), cache[ours])


def test_knockout_of_every_image_to_text_flow_makes_the_text_blind(model):
    """Image -> text attention cut in every layer: the last position's logits no longer depend
    on the image (and do without the cut)."""
    from transformer_lens_mm.tools.knockout import knocked_out, knockout_table, position_groups

    batch = model.prepare_inputs(random_images(2, seed=7), prompts=["a picture of"] * 2)
    groups = position_groups(batch)
    text = groups["prompt"] | groups["last"]
    cut = text[:, :, None] & groups["image"][:, None, :]
    n = int(model.cfg.n_layers)
    rows = torch.arange(2)
    with torch.no_grad():
        free = model(batch)[rows, batch.last_positions]
        with knocked_out(model, dict.fromkeys(range(n), cut)):
            blind = model(batch)[rows, batch.last_positions]
    assert (free[0] - free[1]).abs().max() > 1e-3
    torch.testing.assert_close(blind[0], blind[1], atol=1e-4, rtol=1e-4)
    table = knockout_table(model, batch, window=1, n_controls=1)
    assert set(table.from_group) == {"image", "prompt"} and len(table) == 3 * n * 2 * 2


def test_knockout_of_single_heads_where_hugging_face_computes_attention(model):
    from transformer_lens_mm.errors import UnsupportedModelError
    from transformer_lens_mm.tools.knockout import _delegating_attention, knockout_table

    batch = model.prepare_inputs(random_images(1))
    if _delegating_attention(model, 0) is None:
        table = knockout_table(model, batch, window=1, heads=[0], n_controls=0)
        assert len(table) == 3 * int(model.cfg.n_layers)
    else:
        with pytest.raises(UnsupportedModelError, match="whole layers"):
            knockout_table(model, batch, window=1, heads=[0])
