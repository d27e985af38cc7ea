"""Encoders as a family: the abstract contract, one class per family, picked by kind through a
registry a user extends. A hand-built family (quadrant colour means: a known answer) goes
through `register_encoder` into `create_encoder`, `from_parts(encoder_kind=...)` and a recipe."""

import pytest
import torch
from helpers import build_hf_lm
from PIL import Image
from torch import nn

from transformer_lens_mm import ImageProjection, from_parts
from transformer_lens_mm.core.encoders import (
    ImageEncoder,
    TimmEncoder,
    create_encoder,
    encoder_kinds,
    register_encoder,
)
from transformer_lens_mm.core.recipes import Recipe
from transformer_lens_mm.errors import EncoderError, TLMMError


class Quadrants(ImageEncoder):
    """Four tokens: the mean RGB of each quadrant of a 16x16 image (row-major), times ``gain``."""

    def __init__(self, gain: float = 1.0) -> None:
        model = nn.Linear(1, 1)  # the frozen module (here: unused weights)
        self.gain = gain
        super().__init__(
            model,
            layer=None,
            name=f"quadrants x{gain}",
            data_config={"input_size": (3, 16, 16)},
            transform=lambda im: (
                torch.tensor(list(im.getdata()), dtype=torch.float32)
                .view(16, 16, 3)
                .permute(2, 0, 1)
                / 255
            ),
            fixed_size=True,
        )

    def _features(self, pixel_values):
        self.grid_size = (2, 2)
        q = pixel_values.unfold(2, 8, 8).unfold(3, 8, 8).mean((-1, -2))  # b c 2 2
        return self.gain * q.flatten(2).transpose(1, 2)


@pytest.fixture(scope="module")
def quadrants_kind():
    @register_encoder("test-quadrants", replace=True)
    def build(name, *, pretrained, source, layer, gain=1.0):
        assert name == "q" and layer is None
        return Quadrants(gain=gain if pretrained else 0.0)

    return "test-quadrants"


def _image() -> Image.Image:
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((255, 0, 0), (8, 0, 16, 8))  # top right red
    image.paste((0, 0, 255), (0, 8, 8, 16))  # bottom left blue
    return image


def test_a_registered_family_is_built_by_kind_with_its_options(quadrants_kind):
    assert {"timm", "transformers", "clip-resnet", quadrants_kind} <= set(encoder_kinds())
    enc = create_encoder(quadrants_kind, "q", gain=2.0)
    assert isinstance(enc, ImageEncoder) and (enc.n_tokens, enc.d_image) == (4, 3)
    feats = enc(enc.preprocess(_image()))
    want = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 0, 2], [0, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(feats[0], want)
    assert not any(p.requires_grad for p in enc.parameters())  # frozen by the base
    assert (
        create_encoder(quadrants_kind, "q", pretrained=False)(enc.preprocess(_image())).abs().sum()
        == 0
    )


def test_from_parts_and_a_recipe_use_the_registry(quadrants_kind, tmp_path):
    lm = build_hf_lm(tmp_path / "lm", "gpt2")
    torch.manual_seed(0)
    proj = ImageProjection(3, 32)
    model = from_parts(
        lm=str(lm), encoder="q", encoder_kind=quadrants_kind, projection=proj, api="bridge"
    )
    assert isinstance(model.image_encoder, Quadrants)
    _, cache = model.run_with_cache(images=[_image()], names_filter="hook_image_features")
    want = Quadrants()(Quadrants().preprocess(_image()))
    torch.testing.assert_close(cache["hook_image_features"], want)

    recipe = Recipe(
        name="quadrant-recipe",
        checkpoint="none",
        kind=quadrants_kind,
        encoder="q",
        d_image=3,
        n_tokens=4,
        image_size=16,
        encoder_options={"gain": 3.0},
    )
    assert recipe.build_encoder().gain == 3.0
    wrong = Recipe(**{**recipe.__dict__, "n_tokens": 9})
    with pytest.raises(TLMMError, match="needs 9 image tokens"):
        wrong.build_encoder()


def test_the_contract_is_abstract_and_bad_registrations_are_refused(quadrants_kind):
    with pytest.raises(EncoderError, match="interface, not an encoder") as err:
        ImageEncoder(nn.Linear(1, 1))
    assert isinstance(err.value, TypeError)  # what instantiating an abstract class was
    with pytest.raises(EncoderError, match=r"no encoder kind 'nope'.*'timm'"):
        create_encoder("nope", "x")
    with pytest.raises(EncoderError, match="already registered"):
        register_encoder(quadrants_kind, lambda name, **kw: Quadrants())
    register_encoder("test-not-an-encoder", lambda name, **kw: nn.Linear(1, 1), replace=True)
    with pytest.raises(EncoderError, match="returned Linear, not an ImageEncoder"):
        create_encoder("test-not-an-encoder", "x")
    with pytest.raises(EncoderError, match="not a timm model"):
        TimmEncoder(nn.Linear(1, 1))


def test_the_timm_kind_equals_the_timm_class():
    torch.manual_seed(0)
    a = create_encoder("timm", "resnet10t", pretrained=False, num_classes=0)
    torch.manual_seed(0)
    b = TimmEncoder.from_timm("resnet10t", num_classes=0)
    x = torch.rand(1, 3, 64, 64)
    assert isinstance(a, TimmEncoder) and torch.equal(a(x), b(x))
