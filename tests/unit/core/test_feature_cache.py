"""The encoder-feature cache: a second pass runs no encoder forward and gives the same numbers."""

import pytest
import torch
from helpers import APIS, build_encoder, build_model, random_images

from transformer_lens_mm.core.feature_cache import FeatureCache, encoder_fingerprint, pixel_key
from transformer_lens_mm.pipelines.training import encode_features


@pytest.mark.parametrize("api", APIS)
def test_second_pass_runs_no_encoder_forward(lm_dirs, api, tmp_path):
    model = build_model(lm_dirs["gptj"], api)
    images = random_images(4)
    with torch.no_grad():
        reference = model(images=images)
    cache = model.attach_feature_cache(tmp_path / "features")
    counter = [0]  # images that went through the encoder
    counted = model.image_encoder.register_forward_hook(
        lambda m, i, o: counter.__setitem__(0, counter[0] + i[0].shape[0])
    )
    with torch.no_grad():
        first = model(images=images)
    assert counter[0] == 4 and (cache.hits, cache.misses) == (0, 4)
    with torch.no_grad():
        second = model(images=images[:2] + random_images(1, seed=9))  # two seen, one new
    assert counter[0] == 5 and (cache.hits, cache.misses) == (2, 5)
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second[:2], reference[:2])
    # a fresh model (another process, later) reads the same files: no encoder forward at all
    other = build_model(lm_dirs["gptj"], api)
    other.attach_feature_cache(tmp_path / "features")
    other.image_encoder.register_forward_hook(lambda m, i, o: pytest.fail("encoder ran"))
    with torch.no_grad():
        torch.testing.assert_close(other(images=images), reference)
    feats = encode_features(other, images, verbose=False)
    assert other.feature_cache.hits == 8
    torch.testing.assert_close(feats, model.image_encoder(model.image_encoder.preprocess(images)))
    counted.remove()


def test_keys_cover_content_transform_and_encoder(tmp_path):
    enc = build_encoder()
    pixels = enc.preprocess(random_images(2))
    assert pixel_key(pixels[0]) != pixel_key(pixels[1])
    assert pixel_key(pixels[0]) == pixel_key(pixels[0].clone())
    assert pixel_key(pixels[0]) != pixel_key(pixels[0] * 0.5)  # another normalisation
    other = build_encoder()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert encoder_fingerprint(enc) != encoder_fingerprint(other)
    cache = FeatureCache(tmp_path, enc)
    cache.features(pixels)
    assert pixels[0] in cache
    assert pixels[0] not in FeatureCache(tmp_path, other)  # separate folder per encoder


def test_unreadable_cache_file_is_recomputed(tmp_path):
    enc = build_encoder()
    pixels = enc.preprocess(random_images(1))
    cache = FeatureCache(tmp_path, enc)
    want = cache.features(pixels)
    path = cache._path(pixel_key(pixels[0]))
    path.write_bytes(b"truncated")
    torch.testing.assert_close(FeatureCache(tmp_path, enc).features(pixels), want)
    assert path.stat().st_size > 100  # rewritten whole


def test_fingerprint_of_an_encoder_with_scalar_buffers():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))  # 0-d buffer
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert encoder_fingerprint(net) != encoder_fingerprint(other)
