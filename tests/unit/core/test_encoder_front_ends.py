"""Encoders beyond timm: transformers vision models and CLIP's ResNet towers, against the
models' own forward and preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from transformer_lens_mm.core.encoders import TimmEncoder
from transformer_lens_mm.core.encoders.transformers_encoder import TransformersEncoder
from transformer_lens_mm.core.feature_cache import FeatureCache

transformers = pytest.importorskip("transformers")


def photo(w=300, h=260, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def tiny(kind: str):
    """A tiny random vision model of each family + its image processor."""
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if kind == "beit":
        cfg = transformers.BeitConfig(image_size=224, patch_size=16, **small)
        return transformers.BeitModel(cfg), transformers.BeitImageProcessor()
    if kind == "clip":
        cfg = transformers.CLIPVisionConfig(image_size=224, patch_size=32, **small)
        return transformers.CLIPVisionModel(cfg), transformers.CLIPImageProcessor()
    if kind == "siglip":
        cfg = transformers.SiglipVisionConfig(image_size=224, patch_size=16, **small)
        return transformers.SiglipVisionModel(cfg), transformers.SiglipImageProcessor()
    if kind == "dinov2":
        cfg = transformers.Dinov2Config(image_size=518, patch_size=14, **small)
        proc = transformers.BitImageProcessor(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}
        )
        return transformers.Dinov2Model(cfg), proc
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=224, patch_size=16, **small)
        return transformers.ViTModel(cfg), transformers.ViTImageProcessor()
    raise ValueError(kind)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny model saved with its processor, as a user's local folder would be."""
    out = {}
    for kind in ("beit", "clip", "siglip", "dinov2", "vit"):
        folder = tmp_path_factory.mktemp(kind)
        model, proc = tiny(kind)
        model.save_pretrained(folder)
        proc.save_pretrained(folder)
        out[kind] = folder
    return out


# (grid, prefix tokens) each family should give
EXPECTED = {
    "beit": ((14, 14), 1),
    "clip": ((7, 7), 1),
    "siglip": ((14, 14), 0),
    "dinov2": ((16, 16), 1),
    "vit": ((14, 14), 1),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_features_are_the_models_patch_tokens(saved, kind):
    enc = TransformersEncoder.from_pretrained(saved[kind])
    grid, n_prefix = EXPECTED[kind]
    assert enc.grid_size == grid and enc.n_tokens == grid[0] * grid[1] and enc.d_image == 32
    images = [photo(), photo(200, 330, seed=1)]
    pixels = enc.preprocess(images)
    # preprocessing is the model's own processor's
    proc = transformers.AutoImageProcessor.from_pretrained(saved[kind])
    ref_pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, ref_pixels)
    assert torch.equal(torch.stack([enc.transform(im) for im in images]), ref_pixels)
    # features: the model's last_hidden_state without its prefix tokens
    model = transformers.AutoModel.from_pretrained(saved[kind]).eval()
    with torch.no_grad():
        ref = model(pixel_values=ref_pixels).last_hidden_state[:, n_prefix:]
    feats = enc(pixels)
    assert feats.shape == (2, grid[0] * grid[1], 32)
    assert (feats - ref).abs().max() <= 1e-6
    # a chosen block: hidden_states[layer + 1]
    enc0 = TransformersEncoder.from_pretrained(saved[kind], layer=0)
    with torch.no_grad():
        ref0 = model(pixel_values=ref_pixels, output_hidden_states=True).hidden_states[1]
    assert (enc0(pixels) - ref0[:, n_prefix:]).abs().max() <= 1e-6
    assert not torch.allclose(enc0(pixels), feats)


def test_beit_matches_limber_wrapper_at_224(saved):
    """LiMBeR's BeitWrapper: BeitModel(x)['last_hidden_state'][:, 1:], BeitFeatureExtractor
    pixels (the PIL processor); 14x14 grid at 224 px for patch 16."""
    enc = TransformersEncoder.from_pretrained(saved["beit"], backend="pil")
    assert enc.grid_size == (14, 14) and enc.data_config["input_size"] == (3, 224, 224)
    proc = transformers.AutoImageProcessor.from_pretrained(saved["beit"], backend="pil")
    image = photo()
    pixels = proc(images=image, return_tensors="pt")["pixel_values"]
    assert torch.equal(enc.preprocess(image), pixels)
    beit = transformers.BeitModel.from_pretrained(saved["beit"]).eval()
    with torch.no_grad():
        ref = beit(pixels)["last_hidden_state"][:, 1:]
    assert (enc(pixels) - ref).abs().max() <= 1e-6


def test_dual_encoder_folder_uses_its_vision_tower(tmp_path):
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = transformers.CLIPConfig(
        vision_config=dict(image_size=64, patch_size=16, **small),
        text_config=dict(vocab_size=50, **small),
        projection_dim=16,
    )
    clip = transformers.CLIPModel(cfg).eval()
    enc = TransformersEncoder(clip, transformers.CLIPImageProcessor(size=64, crop_size=64))
    assert enc.grid_size == (4, 4) and enc.d_image == 32
    pixels = enc.preprocess(photo())
    with torch.no_grad():
        ref = clip.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
    assert (enc(pixels) - ref).abs().max() <= 1e-6


def test_feature_cache_is_keyed_by_the_encoder(saved, tmp_path):
    a = TransformersEncoder.from_pretrained(saved["beit"])
    b = TransformersEncoder.from_pretrained(saved["beit"], layer=0)
    pixels = a.preprocess([photo()])
    ca, cb = FeatureCache(tmp_path, a), FeatureCache(tmp_path, b)
    assert ca.folder != cb.folder
    assert torch.equal(ca.features(pixels), a(pixels))
    assert torch.equal(ca.features(pixels), a(pixels)) and ca.hits == 1
    assert torch.equal(cb.features(pixels), b(pixels)) and cb.misses == 1


def test_not_a_vision_model_is_refused():
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    with pytest.raises(TypeError, match=r"not a vision model.*pixel_values"):
        TransformersEncoder(bert, transformers.ViTImageProcessor())


def test_vision_model_without_patch_tokens_is_refused():
    class Pooled(torch.nn.Module):
        """A vision model that only returns pooled vectors."""

        def __init__(self):
            super().__init__()
            self.config = transformers.ViTConfig(image_size=32, patch_size=8)
            self.lin = torch.nn.Linear(3, 8)

        def forward(self, pixel_values, output_hidden_states=False):
            pooled = self.lin(pixel_values.mean((2, 3)))
            return transformers.modeling_outputs.BaseModelOutputWithPooling(pooler_output=pooled)

    with pytest.raises(ValueError, match="has no patch tokens"):
        TransformersEncoder(Pooled(), transformers.ViTImageProcessor(size=32))


def test_layer_out_of_range_is_refused(saved):
    with pytest.raises(ValueError, match=r"layer=5 is out of range.*2 blocks"):
        TransformersEncoder.from_pretrained(saved["vit"], layer=5)


# ----------------------------------------------------------------------------- pooled timm CNNs


def test_avg_pool_gives_one_token_of_the_mean_map():
    torch.manual_seed(0)
    enc = TimmEncoder.from_timm("resnet10t", num_classes=0, pool="avg")
    flat = TimmEncoder(enc.model)
    assert enc.grid_size == (1, 1) and enc.n_tokens == 1
    pixels = flat.preprocess([photo()])
    assert torch.allclose(enc(pixels)[:, 0], flat(pixels).mean(1), atol=1e-6)
    from transformer_lens_mm.core.feature_cache import encoder_fingerprint

    assert encoder_fingerprint(enc) != encoder_fingerprint(flat)
