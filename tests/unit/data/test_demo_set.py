"""The demo's images as a data set (``[data] kind = "demo"``): searched scenes and photos first,
then the category-selectivity images, which a run without ``limit`` holds out."""

import numpy as np
import pytest
from helpers import build_model

from transformer_lens_mm.data.demo_set import DemoSet
from transformer_lens_mm.data.natural_scenes import NOUNS, NaturalSceneSet
from transformer_lens_mm.errors import ConfigError
from transformer_lens_mm.pipelines.analyze import AnalysisConfig, load_table, run_analysis
from transformer_lens_mm.pipelines.analyze.config import load_dataset


def test_searched_items_then_one_object_images_of_every_concept():
    data = DemoSet("natural", 5, photos=False, n_selectivity=2, seed=2)
    assert data.n_search == 5 and len(data.searched) == 5
    assert [it.id for it in data.searched] == [f"scene-{i:03d}" for i in range(5)]
    # each searched scene's truth names its first object, one of its categories
    for item in data.searched:
        caption, colour, noun = data.truths[item.id]
        # a noun drawn in one colour only is captioned without it
        assert noun in item.categories and (colour in caption or len(NOUNS[noun]) == 1)
    held = data.selectivity
    assert len(held) == 2 * len(NOUNS) and len({it.id for it in held}) == len(held)
    assert sorted({it.categories[0] for it in held}) == sorted(NOUNS)
    assert all(len(it.categories) == 1 for it in held)
    # the held-out images are not the searched ones (other seeds, a combination split apart)
    searched = {np.asarray(it.image()).tobytes() for it in data.searched}
    assert not searched & {np.asarray(it.image()).tobytes() for it in held}
    # the scenes are the natural-scene set's own (the same generator, seed and exclusions)
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    scenes = NaturalSceneSet(5, seed=2, exclude=colour_pairs + noun_pairs)
    assert np.array_equal(np.asarray(data[3].image()), np.asarray(scenes[3].image))


def test_the_config_kind_builds_the_same_set_and_checks_its_keys():
    data = load_dataset({"kind": "demo", "n": 3, "photos": False, "n_selectivity": 1})
    direct = DemoSet("natural", 3, photos=False, n_selectivity=1)
    assert [it.id for it in data] == [it.id for it in direct] and data.n_search == 3
    with pytest.raises(ConfigError, match="scene_set must be one of"):
        DemoSet("photos")


def test_a_run_searches_the_scenes_and_holds_out_the_selectivity_images(lm_dirs, tmp_path):
    model = build_model(lm_dirs["llama"], "bridge")
    cfg = AnalysisConfig(
        out=str(tmp_path / "run"),
        data={"kind": "demo", "n": 3, "photos": False, "n_selectivity": 1},
        caption_source="data",
        k=5,
        batch_size=2,
        steps=["category_selectivity"],
        category_selectivity=1,
    )
    summary = run_analysis(cfg, model=model, verbose=False)
    # no limit: the 3 searched scenes (the tiny test tokenizer finds no noun in some captions)
    assert summary["items"] == 3 and summary["done"] + summary["failed"] == 3
    assert summary["done"] >= 1
    table = load_table(cfg.out, "category_selectivity")
    assert len(table) and table["held_out"].all()
    # every image class is a noun of the held-out one-object images
    assert set(table["image_class"]) <= set(NOUNS)
