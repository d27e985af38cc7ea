"""Bad input gives errors that name the problem and the fix."""

import pytest
import torch
from helpers import APIS, WORDS, build_encoder, build_model, build_projection, random_images

from transformer_lens_mm import ImageProjection, from_parts, generate_captions
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

# Under jaxtyping's runtime checks (CI) annotated types are refused before our own checks.
TYPECHECK = "Type-check error"


@pytest.fixture(scope="module", params=APIS)
def model(request, lm_dirs):
    return build_model(lm_dirs["gptj"], request.param)


def test_wrong_image_types(model):
    with pytest.raises(TypeError, match=f"cannot use an object of type dict|{TYPECHECK}"):
        model(images=[{"not": "an image"}])
    with pytest.raises(ValueError, match="values must lie in"):
        model(images=[torch.full((3, 8, 8), 7.0)])


def test_empty_batch(model):
    with pytest.raises(ValueError, match="empty"):
        model(images=[])
    with pytest.raises(ValueError, match="empty"):
        model.image_encoder(torch.zeros(0, 3, 32, 32))


def test_exactly_one_image_source(model):
    with pytest.raises(ValueError, match="exactly one of"):
        model.prepare_inputs(random_images(1), image_features=torch.zeros(1, 16, 24))
    with pytest.raises(ValueError, match="prompts="):
        model("A picture of", images=random_images(1))


def test_prompt_longer_than_context(model):
    long_prompt = " ".join(["red"] * 60)  # n_ctx is 64 and 16 positions are image tokens
    with pytest.raises(ValueError, match="n_ctx=64") as err:
        model(images=random_images(1), prompts=long_prompt)
    assert "shorten the prompt" in str(err.value)
    with pytest.raises(ValueError, match="lower max_new_tokens"):
        generate_captions(model, random_images(1), max_new_tokens=60)


def test_per_item_prompt_count(model):
    with pytest.raises(ValueError, match="one per image"):
        model(images=random_images(2), prompts=["a", "b", "c"])


def test_wrong_feature_size(model):
    with pytest.raises(ValueError, match="d_image=24"):
        model(image_features=torch.zeros(1, 16, 10))


def test_pixel_values_of_another_size(model):
    with pytest.raises(ValueError, match=r"encoder\.preprocess"):
        model(pixel_values=torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"encoder\.preprocess"):
        model(pixel_values=torch.zeros(1, 1, 32, 32))


def test_mismatched_layout_and_features(model):
    batch = model.prepare_inputs(random_images(1))
    bad = MultimodalInput(
        tokens=batch.tokens,
        attention_mask=batch.attention_mask,
        image_mask=batch.image_mask,
        prompts=batch.prompts,
        image_features=torch.zeros(1, 9, 24),
    )
    with pytest.raises(ValueError, match="produced 9 tokens"):
        model(bad)


def test_model_without_vision(lm_dirs):
    from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
    from transformer_lens_mm.core.lm_loading import load_bridge

    bare = MultimodalTransformerBridge.from_bridge(load_bridge(lm_dirs["gptj"]))
    with pytest.raises(RuntimeError, match="attach_vision"):
        bare(images=random_images(1))
    bare.attach_vision(None, build_projection())
    with pytest.raises(RuntimeError, match="no image encoder"):
        bare(images=random_images(1))
    assert bare(image_features=torch.zeros(1, 5, 24)).shape == (1, 5 + 3, len(WORDS))


def test_bad_lm_argument():
    with pytest.raises(TypeError, match="lm must be"):
        from_parts(lm=torch.nn.Linear(2, 2), encoder=None, projection=ImageProjection(2, 2))
    with pytest.raises((ValueError, TypeError), match=f"api must be|{TYPECHECK}"):
        from_parts(lm="x", encoder=None, projection=ImageProjection(2, 2), api="nope")


@pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER, reason="HookedTransformer exists in TL 3.x only")
def test_attention_only_model_is_refused():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=32,
        n_ctx=64,
        d_head=8,
        attn_only=True,
        d_vocab=len(WORDS),
        act_fn="gelu",
    )
    with pytest.raises(ValueError, match="no MLP layers"):
        from_parts(
            lm=HookedTransformer(cfg), encoder=build_encoder(), projection=build_projection()
        )


def test_attention_only_bridge_is_refused():
    from transformer_lens.model_bridge import TransformerBridge

    if not hasattr(TransformerBridge, "boot_native"):
        pytest.skip("this TransformerLens has no boot_native")
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        n_layers=1,
        d_model=32,
        n_ctx=64,
        d_head=8,
        n_heads=4,
        attn_only=True,
        d_vocab=len(WORDS),
        act_fn="gelu",
    )
    bridge = TransformerBridge.boot_native(cfg)
    with pytest.raises(ValueError, match="no MLP layers"):
        from_parts(lm=bridge, encoder=build_encoder(), projection=build_projection())


@pytest.mark.skipif(HAS_HOOKED_TRANSFORMER, reason="checks the TL 4.x message")
def test_hooked_class_under_tl4_says_what_to_do():
    from transformer_lens_mm import HookedMultimodalTransformer

    with pytest.raises(ImportError, match="MultimodalTransformerBridge") as err:
        HookedMultimodalTransformer()
    assert "transformer-lens==3.9" in str(err.value)
    with pytest.raises(ImportError, match="api='hooked'"):
        from_parts(lm="some-model", encoder=None, projection=ImageProjection(2, 2), api="hooked")


@pytest.mark.parametrize(
    "module,name", [("norms", "norms"), ("attention", "attention"), ("bridge", "bridge")]
)
def test_set_fused_wants_a_model(module, name):
    import importlib

    switch = getattr(
        importlib.import_module(f"transformer_lens_mm.fast.{module}"), f"set_fused_{name}"
    )
    with pytest.raises(TypeError, match=f"expected a TransformerLens model.*got str|{TYPECHECK}"):
        switch("gpt2", False)


def test_fused_switch_check_without_type_checks():
    """What a user's process (no jaxtyping import hook) raises from every ``set_fused_*``."""
    from transformer_lens_mm.fast.classes import check_model

    with pytest.raises(TypeError, match=r"expected a TransformerLens model.*got str"):
        check_model("gpt2")
    check_model(torch.nn.Linear(2, 2))
