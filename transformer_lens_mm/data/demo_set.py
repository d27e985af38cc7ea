"""The demo's images as one data set: what ``tlmm demo`` analyses and what ``tlmm analyze``
reads with ``[data] kind = "demo"``.

The first :attr:`DemoSet.n_search` items are searched: the held-out scenes (natural-object
scenes of combinations the shipped projection's training saw, drawn apart from its training
images; or the shape scenes), then scikit-image's photos (out of the training distribution).
The items after them are the held-out one-object images of the supplement's category
selectivity (``n_selectivity`` per concept, drawn apart from the searched ones), which a run
with ``limit = n_search`` reads as the images beyond its limit.

Example:
    >>> data = DemoSet(n_scenes=4, photos=False, n_selectivity=1)
    >>> data.n_search, len(data) - data.n_search  # 4 scenes, then one image per noun
    (4, 22)
    >>> data[0].id, data.truths[data[0].id][2] in data[0].categories
    ('scene-000', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from transformer_lens_mm.data.datasets import Item, SceneDataset
from transformer_lens_mm.data.natural_scenes import NOUNS, NaturalSceneSet
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.errors import ConfigError

__all__ = ["PHOTOS", "SCENE_SETS", "DemoSet"]

#: scikit-image's bundled photos captioned as out-of-distribution examples.
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
#: the scene sets the demo draws held-out images from (each with a shipped projection)
SCENE_SETS = ("natural", "shapes")


def _photos() -> list[tuple[str, Any]]:
    try:
        import skimage.data
    except ImportError:
        return []
    return [(name, getattr(skimage.data, name)()) for name in PHOTOS]


def _held_out_split() -> list:
    """The combinations the natural-scene projections never saw (their training records')."""
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    return colour_pairs + noun_pairs


class DemoSet(Sequence[Item]):
    """The searched scenes and photos, then the category-selectivity images.

    Args:
        scene_set: ``"natural"`` (22 nouns, masks per noun and background region) or
            ``"shapes"``.
        n_scenes: Held-out scenes searched.
        photos: Also search scikit-image's photos (skipped without scikit-image).
        n_selectivity: Held-out one-object images per concept, after the searched items.
        seed: The scenes' seed (2: the training record's held-out seen set).

    Attributes:
        n_search: How many items come first and are searched (scenes + photos).
        truths: Scene id -> (short caption, colour, noun) of its first object.
    """

    def __init__(
        self,
        scene_set: str = "natural",
        n_scenes: int = 40,
        *,
        photos: bool = True,
        n_selectivity: int = 2,
        seed: int = 2,
    ) -> None:
        if scene_set not in SCENE_SETS:
            raise ConfigError(f"scene_set must be one of {SCENE_SETS}, got {scene_set!r}")
        if n_scenes < 0 or n_selectivity < 0:
            raise ConfigError(
                f"n_scenes and n_selectivity must be >= 0, got {n_scenes}, {n_selectivity}"
            )
        self.scene_set = scene_set
        if scene_set == "natural":
            scenes: Any = NaturalSceneSet(n_scenes, seed=seed, exclude=_held_out_split())
        else:
            seen, _ = SceneSet.split_pairs(8, seed=0)
            scenes = SceneSet(n_scenes, seed=seed, max_objects=1, pairs=seen)
        searched = SceneDataset(scenes)
        self.truths: dict[str, tuple[str, str, str]] = {}
        items: list[Item] = []
        for i in range(len(scenes)):
            item = dataclasses.replace(searched[i], id=f"scene-{i:03d}")
            first = scenes[i].objects[0]
            self.truths[item.id] = (scenes[i].short_caption.strip(" ."), first.colour, first.shape)
            items.append(item)
        if photos:
            items += [Item(f"photo-{name}", img) for name, img in _photos()]
        self.n_search = len(items)
        self._items = items + self._selectivity(n_selectivity)

    def _selectivity(self, n: int) -> list[Item]:
        """Held-out one-object images, ``n`` per concept (their one category)."""
        if n == 0:
            return []
        if self.scene_set == "natural":
            held = _held_out_split()
            sets = [
                NaturalSceneSet(n, seed=100 + j, nouns=[noun], max_objects=1, exclude=held)
                for j, noun in enumerate(NOUNS)
            ]
            items = [item for s in sets for item in SceneDataset(s)]
        else:
            seen, _ = SceneSet.split_pairs(8, seed=0)
            items = list(SceneDataset(SceneSet(n * 8, seed=100, max_objects=1, pairs=seen)))
        # one id each (every per-noun set numbers its scenes from 0)
        return [dataclasses.replace(it, id=f"selectivity-{j:03d}") for j, it in enumerate(items)]

    @property
    def searched(self) -> list[Item]:
        """The items searched (scenes, then photos)."""
        return self._items[: self.n_search]

    @property
    def selectivity(self) -> list[Item]:
        """The category-selectivity images (after the searched items)."""
        return self._items[self.n_search :]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]
