"""Image inputs of every kind, and patch tokens from ViT-like and CNN encoders."""

import numpy as np
import pytest
import timm
import torch
from helpers import build_encoder
from PIL import Image

from transformer_lens_mm.core.encoders import TimmEncoder
from transformer_lens_mm.core.images import to_rgb_image, to_rgb_images


def test_modes_are_converted(tmp_path):
    gray = Image.fromarray(np.full((6, 5), 100, dtype=np.uint8), mode="L")
    assert to_rgb_image(gray).getpixel((0, 0)) == (100, 100, 100)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    assert to_rgb_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    opaque = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert to_rgb_image(opaque).getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 255] * 256)
    assert to_rgb_image(pal).getpixel((1, 1)) == (0, 0, 255)
    path = tmp_path / "img.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    assert to_rgb_image(path).getpixel((2, 2)) == (1, 2, 3)
    assert to_rgb_image(str(path)).size == (3, 3)


def test_arrays_and_tensors():
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[0, 0] = (10, 20, 30)
    assert to_rgb_image(arr).getpixel((0, 0)) == (10, 20, 30)
    t = torch.zeros(3, 4, 4)
    t[:, 0, 0] = torch.tensor([1.0, 0.5, 0.0])
    assert to_rgb_image(t).getpixel((0, 0)) == (255, 128, 0)
    assert len(to_rgb_images(torch.rand(3, 3, 8, 8))) == 3
    assert to_rgb_image(np.ones((4, 4), dtype=bool)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (42, TypeError, "cannot use an object of type int|Type-check error"),
        (torch.rand(3, 4, 4) * 5, ValueError, "must lie in \\[0, 1\\]"),
        (np.zeros((4, 4, 7), dtype=np.uint8), ValueError, "cannot read an image array"),
        (np.zeros((4, 4), dtype=np.int64), ValueError, "must be uint8"),
        ("/no/such/file.png", FileNotFoundError, "does not exist"),
        ([], ValueError, "empty"),
    ],
)
def test_bad_images_give_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        to_rgb_images(bad)


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="cannot read image file"):
        to_rgb_image(path)


def test_vit_drops_prefix_tokens():
    enc = build_encoder(depth=2)
    x = torch.randn(2, 3, 32, 32)
    tokens = enc(x)
    ref = enc.model.forward_features(x)[:, enc.model.num_prefix_tokens :]
    torch.testing.assert_close(tokens, ref)
    assert enc.grid_size == (4, 4) and tokens.shape == (2, 16, 24)
    # another block, through forward_intermediates
    mid = build_encoder(depth=2, layer=0)
    assert mid(x).shape == (2, 16, 24)
    assert not torch.allclose(mid(x), tokens)


def test_cnn_feature_map_is_flattened_row_major():
    torch.manual_seed(0)
    enc = TimmEncoder(
        timm.create_model("resnet10t", num_classes=0),
        data_config={
            "input_size": (3, 64, 64),
            "mean": (0.5,) * 3,
            "std": (0.5,) * 3,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
        },
    )
    x = torch.randn(1, 3, 64, 64)
    fmap = enc.model.forward_features(x)  # [1, C, h, w]
    tokens = enc(x)
    h, w = enc.grid_size
    assert (h, w) == (2, 2) and tokens.shape == (1, 4, fmap.shape[1])
    torch.testing.assert_close(tokens[0, 1], fmap[0, :, 0, 1])  # row 0, column 1
    torch.testing.assert_close(tokens[0, 2], fmap[0, :, 1, 0])  # row 1, column 0


def test_encoder_is_frozen_and_preprocesses_any_input(tmp_path):
    enc = build_encoder()
    enc.train()
    assert not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())
    Image.new("L", (50, 40), 7).save(tmp_path / "g.png")
    pixels = enc.preprocess(
        [tmp_path / "g.png", np.zeros((40, 40, 4), np.uint8), torch.rand(3, 9, 9)]
    )
    assert pixels.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="timm has no model"):
        TimmEncoder.from_timm("no_such_model_xyz")


def test_a_16_bit_png_of_a_real_photo_equals_its_8_bit_version(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = skimage_data.camera()  # a real 8-bit grayscale photograph
    Image.fromarray(photo.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # mode I;16
    deep = to_rgb_image(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # a high-bit-depth file
    plain = np.asarray(to_rgb_image(photo)).astype(int)
    got = np.asarray(deep).astype(int)
    assert np.abs(got - plain).max() <= 1 and abs(got.mean() - plain.mean()) < 0.5
    # the same through a uint16 array and a 32-bit integer image
    assert (
        np.abs(np.asarray(to_rgb_image(photo.astype(np.uint16) * 257)).astype(int) - plain).max()
        <= 1
    )
    as_int32 = Image.fromarray(photo.astype(np.int32) * 257)  # mode I
    assert np.abs(np.asarray(to_rgb_image(as_int32)).astype(int) - plain).max() <= 1
    floats = Image.fromarray(photo.astype(np.float32) / 255.0)  # mode F
    assert np.abs(np.asarray(to_rgb_image(floats)).astype(int) - plain).max() <= 1
    with pytest.raises(ValueError, match="scale it to"):
        to_rgb_image(Image.fromarray(photo.astype(np.float32) * 4))


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    upright = np.zeros((20, 40, 3), dtype=np.uint8)  # wide, red on the left
    upright[:, :10] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    seen = np.asarray(to_rgb_image(tmp_path / "phone.jpg"))
    assert seen.shape == (20, 40, 3)  # upright: wide again
    assert seen[:, :10, 0].mean() > 200 and seen[:, 30:, 0].mean() < 50  # red on the left
