"""LiMBeR's CLIP-ResNet encoder (clip_linear) through open_clip: the tower without attention
pooling, flattened row-major, with CLIP's preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from transformer_lens_mm.core.encoders.clip_resnet import CLIP_MEAN, CLIP_STD, CLIPResNetEncoder

open_clip = pytest.importorskip("open_clip")


def photo(w=300, h=260, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def tiny_clip_resnet(image_size=64):
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return ModifiedResNet(
        layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=image_size, width=8
    ).eval()


def limber_clip_preprocess(n_px):
    """LiMBeR transforms.clip_preprocess, written out with torchvision."""
    return T.Compose(
        [
            T.Resize(n_px, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(n_px),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def test_clip_resnet_is_the_tower_without_attention_pooling():
    visual = tiny_clip_resnet()
    enc = CLIPResNetEncoder(visual)
    assert enc.grid_size == (2, 2) and enc.n_tokens == 4 and enc.d_image == 8 * 32
    images = [photo(), photo(180, 240, seed=2)]
    pixels = enc.preprocess(images)
    ref_pixels = torch.stack([limber_clip_preprocess(64)(im) for im in images])
    assert (pixels - ref_pixels).abs().max() <= 1e-6
    with torch.no_grad():  # LiMBeR: encoder.attnpool = rearrange("b d h w -> b (h w) d")
        x = visual.stem(ref_pixels)
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
        ref = x.flatten(2).transpose(1, 2)
    assert (enc(pixels) - ref).abs().max() <= 1e-6
    # row-major: token r * w + c is map cell (r, c)
    assert torch.equal(enc(pixels)[:, 1], x[:, :, 0, 1])


def test_clip_resnet_from_open_clip_config():
    """open_clip's own model built from a config, kept to its visual tower."""
    model = open_clip.create_model("RN50", pretrained=None, force_image_size=64)
    enc = CLIPResNetEncoder(model.visual)
    assert enc.grid_size == (2, 2) and enc.d_image == 2048
    enc2 = CLIPResNetEncoder(model.visual, layer=2)
    assert enc2.grid_size == (4, 4) and enc2.d_image == 1024


def test_clip_resnet_resolution_must_divide_its_grid():
    with pytest.raises(ValueError, match=r"image_size=380 does not divide.*use 352 or 384"):
        CLIPResNetEncoder(tiny_clip_resnet(), image_size=380)


def test_clip_resnet_refuses_other_towers():
    with pytest.raises(TypeError, match="not a CLIP ResNet tower"):
        CLIPResNetEncoder(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_rn50x16_tower_gives_limbers_144_tokens_of_3072():
    enc = CLIPResNetEncoder.from_open_clip("clip_resnet_large", pretrained=None)
    assert (enc.grid_size, enc.n_tokens, enc.d_image) == ((12, 12), 144, 3072)
    assert enc.data_config["input_size"] == (3, 384, 384)
