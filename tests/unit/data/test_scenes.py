"""The generated scene set: deterministic, masks where the objects are, captions that say so."""

import numpy as np
import pytest

from transformer_lens_mm.data.scenes import COLOURS, SHAPES, SceneSet


def test_deterministic_and_indexable():
    a, b = SceneSet(6, seed=3), SceneSet(6, seed=3)
    assert np.array_equal(np.asarray(a[4].image), np.asarray(b[4].image))
    assert a[4].caption == b[4].caption
    assert not np.array_equal(np.asarray(a[4].image), np.asarray(SceneSet(6, seed=4)[4].image))
    assert len(a[1:4]) == 3 and a[-1].caption == a[5].caption
    with pytest.raises(IndexError):
        a[6]


def test_masks_cover_the_objects_colour_and_captions_name_them():
    scenes = SceneSet(40, seed=0)
    n_two = 0
    for scene in scenes:
        img = np.asarray(scene.image).astype(int)
        assert len(scene.objects) in (1, 2) and len(scene.masks) == len(scene.objects)
        n_two += len(scene.objects) == 2
        for obj, mask in zip(scene.objects, scene.masks):
            assert mask.shape == (224, 224) and mask.sum() > 50
            colour = np.array(COLOURS[obj.colour])
            inside = np.abs(img[mask] - colour).max(-1)
            assert (inside <= 2).mean() > 0.95  # mask pixels have the object's colour
            assert f"{obj.colour} {obj.shape}" in scene.caption
            assert obj.position in scene.caption
        if len(scene.masks) == 2:
            assert not (scene.masks[0] & scene.masks[1]).any()  # occlusion handled
        first = scene.objects[0]
        assert scene.short_caption.endswith(f"{first.colour} {first.shape}.")
    assert 5 < n_two < 35
    assert {s.background for s in scenes} == {"plain", "noise", "stripes", "checker", "gradient"}


def test_held_out_pairs_never_appear_in_training_scenes():
    seen, unseen = SceneSet.split_pairs(8, seed=0)
    assert len(unseen) == 8 and len(seen) == 56 and {s for _, s in unseen} == set(SHAPES)
    train = SceneSet(200, seed=1, max_objects=1, pairs=seen)
    assert all((s.objects[0].colour, s.objects[0].shape) not in unseen for s in train)
    val = SceneSet(50, seed=2, max_objects=1, pairs=unseen)
    assert all((s.objects[0].colour, s.objects[0].shape) in unseen for s in val)
