"""Named LiMBeR recipes: recipe="limber-beit" with a tiny GPT-J and a proj.ckpt the test writes
is LiMBeR's layout fed to Hugging Face as inputs_embeds."""

import numpy as np
import pytest
import torch
from helpers import APIS, build_hf_lm, load_hf
from PIL import Image

from transformer_lens_mm import from_parts
from transformer_lens_mm.core.recipes import RECIPES, get_recipe, recipes_for_width
from transformer_lens_mm.errors import ProjectionShapeError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def beit_folder(tmp_path_factory):
    """A 1-block BEiT with the real BEiT-L's patch grid and width (224 px, patch 16, 1024-d),
    random weights, saved with its image processor."""
    torch.manual_seed(0)
    cfg = transformers.BeitConfig(
        image_size=224,
        patch_size=16,
        hidden_size=1024,
        num_hidden_layers=1,
        num_attention_heads=16,
        intermediate_size=64,
    )
    folder = tmp_path_factory.mktemp("beit-pt22k")
    transformers.BeitModel(cfg).save_pretrained(folder)
    transformers.BeitImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gptj_folder(tmp_path_factory):
    """A tiny GPT-J with room for LiMBeR's 199 positions."""
    return build_hf_lm(tmp_path_factory.mktemp("tiny-gptj-256"), "gptj", n_positions=256)


def write_ckpt(path, d_image, d_model, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "weight": torch.randn(d_model, d_image, generator=g) * 0.05,
        "bias": torch.randn(d_model, generator=g) * 0.1,
    }
    torch.save(state, path)
    return state


def photos():
    rng = np.random.default_rng(3)
    return [
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
        for w, h in ((300, 240), (224, 224))
    ]


@pytest.mark.parametrize("api", APIS)
def test_limber_beit_recipe_is_limbers_forward(gptj_folder, beit_folder, tmp_path, api):
    hf = load_hf(gptj_folder)
    ckpt = tmp_path / "proj.ckpt"
    state = write_ckpt(ckpt, 1024, hf.config.n_embd)
    model = from_parts(
        lm=gptj_folder, recipe="limber-beit", encoder=beit_folder, projection=ckpt, api=api
    )
    images = photos()
    with torch.no_grad():
        logits = model(images=images)
    # LiMBeR, independently: BeitFeatureExtractor pixels -> BeitModel(...).last_hidden_state[:, 1:]
    # -> nn.Linear(proj.ckpt) -> [196 image embeddings]["A picture of"], no BOS -> GPT-J
    proc = transformers.AutoImageProcessor.from_pretrained(beit_folder, backend="pil")
    beit = transformers.BeitModel.from_pretrained(beit_folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(gptj_folder)
    text = tok("A picture of", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pixels = proc(images=images, return_tensors="pt")["pixel_values"]
        feats = beit(pixels)["last_hidden_state"][:, 1:]
        image_embeds = feats @ state["weight"].T + state["bias"]
        text_embeds = hf.get_input_embeddings()(text).expand(len(images), -1, -1)
        ref = hf(inputs_embeds=torch.cat([image_embeds, text_embeds], 1)).logits
    assert feats.shape == (2, 196, 1024)
    assert logits.shape == ref.shape == (2, 196 + 3, hf.config.vocab_size)
    assert (logits - ref).abs().max() <= 1e-4
    assert model.image_encoder.grid_size == (14, 14)


def test_recipe_names_the_checkpoint_that_fits(lm_dirs, tmp_path):
    """A clip_linear-sized proj.ckpt (3072 inputs) given to the BEiT recipe: the error names
    both recipes, the widths and the fix, before any encoder is loaded."""
    ckpt = tmp_path / "proj.ckpt"
    write_ckpt(ckpt, 3072, 32)
    with pytest.raises(ProjectionShapeError) as err:
        from_parts(lm=lm_dirs["gptj"], recipe="limber-beit", projection=ckpt)
    msg = str(err.value)
    assert "'limber-beit'" in msg and "1024" in msg and "3072" in msg
    assert "recipe='limber-clip'" in msg and "clip_linear" in msg
    write_ckpt(ckpt, 777, 32)
    with pytest.raises(ProjectionShapeError, match="no LiMBeR recipe has that width"):
        from_parts(lm=lm_dirs["gptj"], recipe="limber-clip", projection=ckpt)


def test_recipe_checks_a_given_encoder(lm_dirs, tmp_path):
    from helpers import build_encoder

    ckpt = tmp_path / "proj.ckpt"
    write_ckpt(ckpt, 1024, 32)
    with pytest.raises(ProjectionShapeError, match=r"needs 196 image tokens of 1024.*gives 16"):
        from_parts(
            lm=lm_dirs["gptj"], recipe="limber-beit", encoder=build_encoder(), projection=ckpt
        )


def test_recipe_table():
    assert sorted(RECIPES) == ["limber-beit", "limber-beit-ft", "limber-clip", "limber-nfrn50"]
    beit = get_recipe("limber-beit")
    assert beit.encoder == "microsoft/beit-large-patch16-224-pt22k"
    assert (beit.n_tokens, beit.d_image, beit.image_size) == (196, 1024, 224)
    assert get_recipe("limber-beit-ft").encoder.endswith("pt22k-ft22k")
    clip = get_recipe("limber-clip")
    assert (clip.n_tokens, clip.d_image, clip.image_size) == (144, 3072, 384)
    assert [r.name for r in recipes_for_width(1024)] == ["limber-beit", "limber-beit-ft"]
    assert all(r.prompt == "A picture of" and r.prepend_bos is False for r in RECIPES.values())
    with pytest.raises(ValueError, match="unknown recipe 'limber-vit'"):
        get_recipe("limber-vit")


def test_nfrn50_recipe_encoder_is_one_pooled_token():
    enc = get_recipe("limber-nfrn50").build_encoder(pretrained=False)
    assert (enc.n_tokens, enc.d_image, enc.grid_size) == (1, 2048, (1, 1))
    assert enc.data_config["input_size"] == (3, 384, 384)
    # LiMBeR: nn.Sequential(*children()[:-1]) then AdaptiveAvgPool2d((1, 1))
    body = torch.nn.Sequential(*list(enc.model.children())[:-1])
    x = torch.rand(1, 3, 384, 384)
    with torch.no_grad():
        ref = torch.nn.AdaptiveAvgPool2d((1, 1))(body(x)).flatten(1)
    assert (enc(x)[:, 0] - ref).abs().max() <= 1e-5
