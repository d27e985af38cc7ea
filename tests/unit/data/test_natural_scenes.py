"""The natural-object scene generator: deterministic, masks are the drawn pixels, held-out
combinations never leak into the training split."""

import numpy as np
import pytest

from transformer_lens_mm.data.datasets import SceneDataset
from transformer_lens_mm.data.natural_scenes import NOUNS, NaturalSceneSet


def test_at_least_twenty_nouns_and_each_is_drawn():
    assert len(NOUNS) >= 20
    for noun in NOUNS:
        scene = NaturalSceneSet(1, seed=3, nouns=[noun], max_objects=1)[0]
        assert scene.objects[0].shape == noun
        assert scene.masks[0].sum() > 200, noun  # a visible object at 224 px
        assert noun in scene.caption and scene.short_caption.endswith(f"{noun}.")


def test_deterministic_per_seed_and_index():
    a, b = NaturalSceneSet(8, seed=5), NaturalSceneSet(8, seed=5)
    for i in (0, 3, 7):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].caption == b[i].caption
        assert all(np.array_equal(x, y) for x, y in zip(a[i].masks, b[i].masks))
    # scene i does not depend on n
    assert NaturalSceneSet(100, seed=5)[3].caption == a[3].caption
    other = NaturalSceneSet(8, seed=6)
    assert [s.caption for s in other] != [s.caption for s in a]


def test_masks_are_the_drawn_pixels_exactly():
    for scene in NaturalSceneSet(40, seed=1):
        changed = (np.asarray(scene.image) != scene.background_pixels).any(-1)
        union = np.zeros_like(changed)
        for m in scene.masks:
            assert not (union & m).any()  # instance masks do not overlap (occlusion)
            union |= m
        assert np.array_equal(changed, union), scene.caption
        for region in scene.regions.values():  # background regions exclude the objects
            assert not (region & union).any()
        if scene.regions:
            covered = np.zeros_like(union)
            for region in scene.regions.values():
                covered |= region
            assert np.array_equal(covered | union, np.ones_like(union))


def test_captions_name_colours_only_where_they_vary():
    seen = {}
    for scene in NaturalSceneSet(80, seed=2):
        first = scene.objects[0]
        seen[first.shape] = scene.short_caption
        if len(NOUNS[first.shape]) > 1:
            assert f"{first.colour} {first.shape}" in scene.caption
        if len(scene.objects) == 2:
            assert " next to " in scene.caption
    assert seen.get("sun", " the sun.") == " the sun."


def test_held_out_combinations_stay_out_of_training():
    colour_pairs, noun_pairs = NaturalSceneSet.split(8, 8, seed=0)
    assert len(colour_pairs) == 8 and len(noun_pairs) == 8
    train = NaturalSceneSet(200, seed=0, exclude=colour_pairs + noun_pairs)
    for scene in train:
        objs = [(o.colour, o.shape) for o in scene.objects]
        assert not set(objs) & set(colour_pairs)
        if len(objs) == 2:
            assert frozenset(o for _, o in objs) not in noun_pairs
    held = NaturalSceneSet(50, seed=9, only=colour_pairs + noun_pairs)
    for scene in held:
        objs = [(o.colour, o.shape) for o in scene.objects]
        combos = set(objs) | ({frozenset(o for _, o in objs)} if len(objs) == 2 else set())
        assert combos & (set(colour_pairs) | set(noun_pairs))


def test_same_dataset_interface_as_scene_set():
    data = SceneDataset(NaturalSceneSet(4, seed=0))
    item = data[0]
    scene = NaturalSceneSet(4, seed=0)[0]
    assert item.captions == [scene.caption]
    assert item.categories == sorted({o.shape for o in scene.objects})
    masks = item.masks()
    assert set(masks) == set(item.categories) | set(scene.regions)
    for name, region in scene.regions.items():  # background concepts for spatial IoU
        assert np.array_equal(masks[name], region)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown nouns"):
        NaturalSceneSet(2, nouns=["dragon"])
    with pytest.raises(ValueError, match="exclusions leave nothing"):
        NaturalSceneSet(1, nouns=["sun"], max_objects=1, exclude=[("yellow", "sun")])[0]
