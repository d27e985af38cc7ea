"""A captioned scene set we generate: coloured shapes on textured backgrounds, with masks.

Deterministic from a seed: 8 colours x 8 shapes, three horizontal positions, two sizes, five
background textures, one or two objects per scene. Each scene has a caption ("a red circle on
the left", "a blue star on the left and a green ring on the right"), a short caption naming
only the first object (" a red circle."), and a boolean instance mask per object. Colour/shape
pairs can be held out of the training split entirely (``unseen_pairs``).

Example:
    >>> scenes = SceneSet(n=4, seed=0)
    >>> s = scenes[0]
    >>> s.image.size, len(s.masks) == len(s.objects)
    ((224, 224), True)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from transformer_lens_mm.errors import DataSetError, OutOfRangeError

__all__ = ["BACKGROUNDS", "COLOURS", "SHAPES", "Scene", "SceneObject", "SceneSet"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "stripe")
BACKGROUNDS = ("plain", "noise", "stripes", "checker", "gradient")
POSITIONS = {"left": 0.25, "middle": 0.5, "right": 0.75}
SIZES = {"small": 0.16, "large": 0.28}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    position: str  # "left", "middle" or "right"
    size: str  # "small" or "large"


@dataclass
class Scene:
    image: Image.Image  # RGB, size x size
    caption: str  # every object with its position
    short_caption: str  # " a red circle." (the first object; used to train projections)
    objects: list[SceneObject]
    masks: list[np.ndarray]  # one boolean [size, size] mask per object
    background: str


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * math.sin(a))
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.35 * r
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise DataSetError(shape)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(0.35 * r)))
    elif shape == "stripe":
        draw.rectangle([cx - 1.2 * r, cy - 0.3 * r, cx + 1.2 * r, cy + 0.3 * r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(90, 170)
    if kind == "plain":
        img = np.full((size, size, 3), base)
    elif kind == "noise":
        img = base + rng.normal(0, 25, (size, size, 3))
    elif kind == "stripes":
        period = rng.integers(8, 24)
        rows = (np.arange(size) // period) % 2
        img = base + 30 * rows[:, None, None] * np.ones((1, size, 3))
    elif kind == "checker":
        period = rng.integers(10, 28)
        idx = (np.arange(size) // period) % 2
        img = base + 30 * ((idx[:, None] + idx[None, :]) % 2)[..., None] * np.ones((1, 1, 3))
    else:
        ramp = np.linspace(-40, 40, size)
        img = base + (ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None])
        img = img * np.ones((size, size, 3))
    tint = rng.normal(0, 8, 3)
    return np.clip(img + tint, 0, 255)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(position: str) -> str:
    return "in the middle" if position == "middle" else f"on the {position}"


class SceneSet(Sequence[Scene]):
    """``n`` deterministic scenes; item ``i`` depends only on ``(seed, i)``.

    Args:
        n: Number of scenes.
        seed: Seed of the whole set.
        size: Image side in pixels.
        max_objects: 1 or 2 objects per scene.
        pairs: Allowed (colour, shape) pairs for the first object (default: all 64).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        size: int = 224,
        max_objects: int = 2,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        if n < 0 or max_objects not in (1, 2):
            raise DataSetError("n must be >= 0 and max_objects 1 or 2")
        self.n, self.seed, self.size, self.max_objects = n, seed, size, max_objects
        self.pairs = list(pairs) if pairs is not None else [(c, s) for c in COLOURS for s in SHAPES]
        if not self.pairs:
            raise DataSetError("no (colour, shape) pairs to draw from")

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Scene]:
        return (self[i] for i in range(self.n))

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise OutOfRangeError(f"scene {i} out of range (n={self.n})")
        i %= self.n
        rng = np.random.default_rng([self.seed, i])
        colour, shape = self.pairs[int(rng.integers(len(self.pairs)))]
        n_obj = 1 if self.max_objects == 1 else int(rng.integers(1, 3))
        positions = list(rng.permutation(list(POSITIONS)))[:n_obj]
        objects = [SceneObject(colour, shape, str(positions[0]), str(rng.choice(list(SIZES))))]
        if n_obj == 2:
            c2 = str(rng.choice([c for c in COLOURS if c != colour]))
            s2 = str(rng.choice([s for s in SHAPES if s != shape]))
            objects.append(SceneObject(c2, s2, str(positions[1]), str(rng.choice(list(SIZES)))))
        background = str(rng.choice(BACKGROUNDS))
        canvas = Image.fromarray(_background(background, self.size, rng).astype(np.uint8))
        masks = []
        for obj in objects:
            r = SIZES[obj.size] * self.size * rng.uniform(0.9, 1.1)
            cx = POSITIONS[obj.position] * self.size + rng.uniform(-0.04, 0.04) * self.size
            cy = self.size * rng.uniform(0.35, 0.65)
            layer = Image.new("L", (self.size, self.size), 0)
            _draw(ImageDraw.Draw(layer), obj.shape, cx, cy, r, 255)
            mask = np.asarray(layer) > 127
            for m in masks:  # later objects occlude earlier ones
                m &= ~mask
            masks.append(mask)
            canvas.paste(Image.new("RGB", canvas.size, COLOURS[obj.colour]), mask=layer)
        parts = [f"a {o.colour} {o.shape} on the {o.position}" for o in objects]
        caption = " and ".join(parts)
        return Scene(
            canvas,
            caption,
            f" a {objects[0].colour} {objects[0].shape}.",
            objects,
            masks,
            background,
        )

    @staticmethod
    def split_pairs(
        n_unseen: int = 8, seed: int = 0
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(seen, unseen) colour/shape pairs: ``n_unseen`` pairs held out, one per shape."""
        rng = np.random.default_rng(seed)
        pairs = [(c, s) for c in COLOURS for s in SHAPES]
        unseen = []
        for j, shape in enumerate(SHAPES[:n_unseen]):
            colour = list(COLOURS)[int(rng.permutation(len(COLOURS))[j % len(COLOURS)])]
            unseen.append((colour, shape))
        seen = [p for p in pairs if p not in unseen]
        return seen, unseen
