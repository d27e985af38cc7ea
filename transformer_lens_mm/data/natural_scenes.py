"""Natural-object scenes we generate: common concrete nouns that text LMs write often, drawn
procedurally with real variation, with instance masks and background-region masks.

22 objects (tree, house, sun, moon, car, boat, fish, bird, flower, apple, cloud, mountain,
ball, cup, key, umbrella, balloon, kite, clock, hat, bottle, candle), each built from several
coloured parts with varying colour, size, position and details (petals, rays, windows, wheels,
stripes), on five backgrounds (sky, grass, water, indoor, plain) whose regions (``sky``,
``grass``, ``water``, ``wall``, ``floor``) have masks too. One or two objects per scene;
captions such as "a red car next to a tree" and a short caption naming the first object
(" a red car."). Deterministic: scene ``i`` depends only on ``(seed, i)``; the masks are the
drawn pixels exactly (each object is pasted through its own mask; later objects occlude
earlier ones). The interface is :class:`~transformer_lens_mm.data.scenes.SceneSet`'s
(``Scene`` items; ``SceneDataset`` wraps either), so every run and report takes it.

Held-out combinations: :meth:`NaturalSceneSet.split` holds out some (colour, noun) pairs and
some noun pairs entirely, for a split of seen and unseen combinations.

Example:
    >>> scenes = NaturalSceneSet(n=3, seed=0)
    >>> s = scenes[0]
    >>> s.image.size, len(s.masks) == len(s.objects), s.caption.startswith(("a ", "an ", "the "))
    ((224, 224), True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from transformer_lens_mm.data.scenes import Scene, SceneObject
from transformer_lens_mm.errors import DataSetError, OutOfRangeError

__all__ = ["BACKGROUND_REGIONS", "NATURAL_BACKGROUNDS", "NOUNS", "NaturalScene", "NaturalSceneSet"]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "blue": (35, 70, 210),
    "green": (40, 160, 60),
    "yellow": (240, 215, 40),
    "orange": (240, 135, 25),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "grey": (130, 130, 130),
}
#: noun -> the colours it may take (named in the caption when more than one is possible)
NOUNS: dict[str, tuple[str, ...]] = {
    "tree": ("green",),
    "house": ("red", "blue", "yellow", "white"),
    "sun": ("yellow",),
    "moon": ("white",),
    "car": ("red", "blue", "green", "yellow", "black"),
    "boat": ("red", "blue", "white", "yellow"),
    "fish": ("orange", "blue", "yellow", "red"),
    "bird": ("blue", "red", "yellow", "black"),
    "flower": ("red", "yellow", "pink", "purple"),
    "apple": ("red", "green"),
    "cloud": ("white",),
    "mountain": ("grey",),
    "ball": ("red", "blue", "yellow", "green"),
    "cup": ("red", "blue", "white", "yellow"),
    "key": ("yellow", "grey"),
    "umbrella": ("red", "blue", "purple", "black"),
    "balloon": ("red", "blue", "yellow", "pink"),
    "kite": ("red", "blue", "yellow", "green"),
    "clock": ("white",),
    "hat": ("black", "red", "blue", "brown"),
    "bottle": ("green", "blue", "brown"),
    "candle": ("white", "red"),
}
#: the nouns a caption names with "the" (one of them in the sky)
_DEFINITE = {"sun", "moon"}
#: where an object may stand: "sky" objects high up, the rest lower
_SKY = {"sun", "moon", "cloud", "bird", "kite", "balloon"}
NATURAL_BACKGROUNDS = ("sky", "grass", "water", "indoor", "plain")
#: the background regions a scene has masks for (``NaturalScene.regions``)
BACKGROUND_REGIONS = ("sky", "grass", "water", "wall", "floor")
_REGIONS = {
    "sky": ("sky",),
    "grass": ("sky", "grass"),
    "water": ("sky", "water"),
    "indoor": ("wall", "floor"),
    "plain": (),
}


@dataclass
class NaturalScene(Scene):
    """A :class:`~transformer_lens_mm.data.scenes.Scene` (``objects[i].shape`` is the noun)
    with background-region masks (``regions``: ``sky``/``grass``/``water``/``wall``/``floor``)."""

    regions: dict[str, np.ndarray] = field(default_factory=dict)
    background_pixels: np.ndarray | None = None  # the background before any object was pasted


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)  # type: ignore[return-value]


# Each drawer paints an object's parts with ``paint(xy_fn, colour)`` where ``xy_fn`` draws one
# primitive on an ImageDraw with a given fill; the object's mask is the union of its parts.
Painter = Callable[[Callable[[ImageDraw.ImageDraw, int | tuple], None], tuple], None]


def _draw_object(
    noun: str,
    colour: tuple,
    cx: float,
    cy: float,
    r: float,
    rng: np.random.Generator,
    paint: Painter,
) -> None:
    e = lambda box: [box[0], box[1], box[2], box[3]]  # noqa: E731
    if noun == "tree":
        paint(
            lambda d, f: d.rectangle(e([cx - 0.15 * r, cy, cx + 0.15 * r, cy + r]), fill=f),
            PALETTE["brown"],
        )
        for dx, dy, s in ((0, -0.35, 0.7), (-0.35, -0.05, 0.5), (0.35, -0.05, 0.5)):
            rr = s * r * rng.uniform(0.9, 1.1)
            paint(
                lambda d, f, dx=dx, dy=dy, rr=rr: d.ellipse(
                    e([cx + dx * r - rr, cy + dy * r - rr, cx + dx * r + rr, cy + dy * r + rr]),
                    fill=f,
                ),
                _shade(colour, rng.uniform(0.8, 1.1)),
            )
    elif noun == "house":
        paint(
            lambda d, f: d.rectangle(e([cx - 0.7 * r, cy - 0.2 * r, cx + 0.7 * r, cy + r]), fill=f),
            colour,
        )
        paint(
            lambda d, f: d.polygon(
                [(cx - 0.9 * r, cy - 0.2 * r), (cx, cy - r), (cx + 0.9 * r, cy - 0.2 * r)], fill=f
            ),
            PALETTE["brown"] if colour != PALETTE["brown"] else PALETTE["red"],
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.15 * r, cy + 0.45 * r, cx + 0.15 * r, cy + r]), fill=f
            ),
            PALETTE["brown"],
        )
        for wx in (-0.45, 0.3)[: int(rng.integers(1, 3))]:
            paint(
                lambda d, f, wx=wx: d.rectangle(
                    e([cx + wx * r, cy + 0.05 * r, cx + (wx + 0.2) * r, cy + 0.3 * r]), fill=f
                ),
                (170, 210, 240),
            )
    elif noun == "sun":
        n_rays = int(rng.integers(8, 14))
        for k in range(n_rays):
            a = 2 * math.pi * k / n_rays
            paint(
                lambda d, f, a=a: d.line(
                    [
                        (cx + 0.7 * r * math.cos(a), cy + 0.7 * r * math.sin(a)),
                        (cx + r * math.cos(a), cy + r * math.sin(a)),
                    ],
                    fill=f,
                    width=max(2, int(0.08 * r)),
                ),
                colour,
            )
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r]), fill=f
            ),
            colour,
        )
    elif noun == "moon":
        # a crescent: a disc minus an offset disc (drawn as the background-coloured cut later)
        off = rng.uniform(0.3, 0.5) * r
        paint(
            lambda d, f: (
                d.ellipse(e([cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r]), fill=f),
                d.ellipse(
                    e([cx - 0.6 * r + off, cy - 0.65 * r, cx + 0.6 * r + off, cy + 0.55 * r]),
                    fill=0,
                ),
            ),
            colour,
        )
    elif noun == "car":
        paint(
            lambda d, f: d.rectangle(e([cx - r, cy - 0.1 * r, cx + r, cy + 0.4 * r]), fill=f),
            colour,
        )
        paint(
            lambda d, f: d.polygon(
                [
                    (cx - 0.55 * r, cy - 0.1 * r),
                    (cx - 0.35 * r, cy - 0.5 * r),
                    (cx + 0.35 * r, cy - 0.5 * r),
                    (cx + 0.55 * r, cy - 0.1 * r),
                ],
                fill=f,
            ),
            _shade(colour, 0.8),
        )
        for wx in (-0.55, 0.55):
            paint(
                lambda d, f, wx=wx: d.ellipse(
                    e(
                        [
                            cx + wx * r - 0.22 * r,
                            cy + 0.25 * r,
                            cx + wx * r + 0.22 * r,
                            cy + 0.69 * r,
                        ]
                    ),
                    fill=f,
                ),
                PALETTE["black"],
            )
    elif noun == "boat":
        paint(
            lambda d, f: d.polygon(
                [
                    (cx - r, cy + 0.2 * r),
                    (cx + r, cy + 0.2 * r),
                    (cx + 0.7 * r, cy + 0.6 * r),
                    (cx - 0.7 * r, cy + 0.6 * r),
                ],
                fill=f,
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.04 * r, cy - r, cx + 0.04 * r, cy + 0.2 * r]), fill=f
            ),
            PALETTE["brown"],
        )
        paint(
            lambda d, f: d.polygon(
                [
                    (cx + 0.06 * r, cy - 0.9 * r),
                    (cx + 0.06 * r, cy + 0.1 * r),
                    (cx + 0.7 * r, cy + 0.1 * r),
                ],
                fill=f,
            ),
            PALETTE["white"],
        )
    elif noun == "fish":
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.8 * r, cy - 0.45 * r, cx + 0.5 * r, cy + 0.45 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.polygon(
                [(cx + 0.4 * r, cy), (cx + r, cy - 0.45 * r), (cx + r, cy + 0.45 * r)], fill=f
            ),
            _shade(colour, 0.8),
        )
        paint(
            lambda d, f: d.ellipse(e([cx - 0.55 * r, cy - 0.15 * r, cx - 0.4 * r, cy]), fill=f),
            PALETTE["black"],
        )
    elif noun == "bird":
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.6 * r, cy - 0.35 * r, cx + 0.5 * r, cy + 0.35 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx + 0.25 * r, cy - 0.6 * r, cx + 0.75 * r, cy - 0.1 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.polygon(
                [
                    (cx + 0.72 * r, cy - 0.4 * r),
                    (cx + r, cy - 0.3 * r),
                    (cx + 0.72 * r, cy - 0.25 * r),
                ],
                fill=f,
            ),
            PALETTE["orange"],
        )
        paint(
            lambda d, f: d.polygon(
                [
                    (cx - 0.3 * r, cy - 0.1 * r),
                    (cx + 0.1 * r, cy - 0.1 * r),
                    (cx - 0.2 * r, cy - 0.8 * r),
                ],
                fill=f,
            ),
            _shade(colour, 0.75),
        )
    elif noun == "flower":
        paint(
            lambda d, f: d.rectangle(e([cx - 0.05 * r, cy, cx + 0.05 * r, cy + r]), fill=f),
            PALETTE["green"],
        )
        n_petals = int(rng.integers(5, 9))
        for k in range(n_petals):
            a = 2 * math.pi * k / n_petals
            px, py = cx + 0.35 * r * math.cos(a), cy - 0.3 * r + 0.35 * r * math.sin(a)
            paint(
                lambda d, f, px=px, py=py: d.ellipse(
                    e([px - 0.22 * r, py - 0.22 * r, px + 0.22 * r, py + 0.22 * r]), fill=f
                ),
                colour,
            )
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.17 * r, cy - 0.47 * r, cx + 0.17 * r, cy - 0.13 * r]), fill=f
            ),
            PALETTE["yellow"] if colour != PALETTE["yellow"] else PALETTE["orange"],
        )
    elif noun == "apple":
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.6 * r, cy - 0.5 * r, cx + 0.6 * r, cy + 0.6 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.04 * r, cy - 0.8 * r, cx + 0.04 * r, cy - 0.45 * r]), fill=f
            ),
            PALETTE["brown"],
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx + 0.04 * r, cy - 0.8 * r, cx + 0.35 * r, cy - 0.6 * r]), fill=f
            ),
            PALETTE["green"] if colour != PALETTE["green"] else _shade(PALETTE["green"], 0.6),
        )
    elif noun == "cloud":
        for dx, dy, s in (
            (0, -0.2, 0.45),
            (-0.45, 0.05, 0.35),
            (0.45, 0.05, 0.38),
            (0.0, 0.15, 0.4),
        ):
            s *= rng.uniform(0.85, 1.15)
            paint(
                lambda d, f, dx=dx, dy=dy, s=s: d.ellipse(
                    e(
                        [
                            cx + dx * r - s * r,
                            cy + dy * r - s * r * 0.8,
                            cx + dx * r + s * r,
                            cy + dy * r + s * r * 0.8,
                        ]
                    ),
                    fill=f,
                ),
                colour,
            )
    elif noun == "mountain":
        paint(
            lambda d, f: d.polygon(
                [(cx - r, cy + 0.7 * r), (cx, cy - 0.8 * r), (cx + r, cy + 0.7 * r)], fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.polygon(
                [(cx - 0.27 * r, cy - 0.4 * r), (cx, cy - 0.8 * r), (cx + 0.27 * r, cy - 0.4 * r)],
                fill=f,
            ),
            PALETTE["white"],
        )
    elif noun == "ball":
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.5 * r, cy - 0.08 * r, cx + 0.5 * r, cy + 0.08 * r]), fill=f
            ),
            PALETTE["white"],
        )
    elif noun == "cup":
        paint(
            lambda d, f: d.polygon(
                [
                    (cx - 0.5 * r, cy - 0.5 * r),
                    (cx + 0.5 * r, cy - 0.5 * r),
                    (cx + 0.4 * r, cy + 0.5 * r),
                    (cx - 0.4 * r, cy + 0.5 * r),
                ],
                fill=f,
            ),
            colour,
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx + 0.35 * r, cy - 0.35 * r, cx + 0.8 * r, cy + 0.2 * r]),
                outline=f,
                width=max(2, int(0.1 * r)),
            ),
            _shade(colour, 0.8),
        )
    elif noun == "key":
        paint(
            lambda d, f: d.ellipse(
                e([cx - r, cy - 0.35 * r, cx - 0.3 * r, cy + 0.35 * r]),
                outline=f,
                width=max(2, int(0.15 * r)),
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.32 * r, cy - 0.08 * r, cx + r, cy + 0.08 * r]), fill=f
            ),
            colour,
        )
        for tx in (0.55, 0.8)[: int(rng.integers(1, 3))]:
            paint(
                lambda d, f, tx=tx: d.rectangle(
                    e([cx + tx * r, cy + 0.08 * r, cx + (tx + 0.1) * r, cy + 0.3 * r]), fill=f
                ),
                colour,
            )
    elif noun == "umbrella":
        paint(
            lambda d, f: d.pieslice(
                e([cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r]), 180, 360, fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(e([cx - 0.05 * r, cy, cx + 0.05 * r, cy + 0.9 * r]), fill=f),
            PALETTE["black"] if colour != PALETTE["black"] else PALETTE["grey"],
        )
    elif noun == "balloon":
        paint(
            lambda d, f: d.line(
                [(cx, cy + 0.45 * r), (cx + 0.1 * r, cy + r)], fill=f, width=max(1, int(0.03 * r))
            ),
            PALETTE["black"],
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.38 * r, cy - 0.55 * r, cx + 0.38 * r, cy + 0.45 * r]), fill=f
            ),
            colour,
        )
    elif noun == "kite":
        paint(
            lambda d, f: d.line(
                [(cx, cy + 0.7 * r), (cx - 0.3 * r, cy + r)], fill=f, width=max(1, int(0.04 * r))
            ),
            PALETTE["black"],
        )
        paint(
            lambda d, f: d.polygon(
                [
                    (cx, cy - 0.8 * r),
                    (cx + 0.5 * r, cy - 0.1 * r),
                    (cx, cy + 0.7 * r),
                    (cx - 0.5 * r, cy - 0.1 * r),
                ],
                fill=f,
            ),
            colour,
        )
    elif noun == "clock":
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r]),
                outline=f,
                width=max(2, int(0.08 * r)),
            ),
            PALETTE["black"],
        )
        a = rng.uniform(0, 2 * math.pi)
        paint(
            lambda d, f: d.line(
                [(cx, cy), (cx + 0.4 * r * math.cos(a), cy + 0.4 * r * math.sin(a))],
                fill=f,
                width=max(2, int(0.06 * r)),
            ),
            PALETTE["black"],
        )
        paint(
            lambda d, f: d.line(
                [(cx, cy), (cx, cy - 0.5 * r)], fill=f, width=max(2, int(0.05 * r))
            ),
            PALETTE["black"],
        )
    elif noun == "hat":
        paint(
            lambda d, f: d.rectangle(e([cx - r, cy + 0.2 * r, cx + r, cy + 0.35 * r]), fill=f),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.55 * r, cy - 0.6 * r, cx + 0.55 * r, cy + 0.2 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.55 * r, cy + 0.02 * r, cx + 0.55 * r, cy + 0.16 * r]), fill=f
            ),
            PALETTE["red"] if colour != PALETTE["red"] else PALETTE["black"],
        )
    elif noun == "bottle":
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.35 * r, cy - 0.2 * r, cx + 0.35 * r, cy + r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.12 * r, cy - 0.8 * r, cx + 0.12 * r, cy - 0.2 * r]), fill=f
            ),
            colour,
        )
        paint(
            lambda d, f: d.rectangle(
                e([cx - 0.25 * r, cy + 0.2 * r, cx + 0.25 * r, cy + 0.55 * r]), fill=f
            ),
            PALETTE["white"],
        )
    elif noun == "candle":
        paint(
            lambda d, f: d.rectangle(e([cx - 0.2 * r, cy - 0.3 * r, cx + 0.2 * r, cy + r]), fill=f),
            colour,
        )
        paint(
            lambda d, f: d.ellipse(
                e([cx - 0.12 * r, cy - 0.75 * r, cx + 0.12 * r, cy - 0.35 * r]), fill=f
            ),
            PALETTE["orange"],
        )
    else:  # pragma: no cover - NOUNS and the drawers are kept in step by a test
        raise DataSetError(f"no drawer for {noun!r}")


def _background(kind: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The background image and its region masks."""
    yy = np.arange(size)[:, None] * np.ones((1, size))
    regions: dict[str, np.ndarray] = {}
    if kind == "plain":
        img = np.full((size, size, 3), rng.uniform(100, 200)) + rng.normal(0, 10, 3)
    else:
        horizon = int(size * rng.uniform(0.55, 0.72))
        upper, lower = _REGIONS[kind] if kind != "sky" else ("sky", "sky")
        top_rgb = {"sky": (120, 180, 235), "wall": (225, 210, 180)}[upper]
        bottom_rgb = {
            "sky": (150, 200, 240),
            "grass": (70, 150, 60),
            "water": (40, 90, 170),
            "floor": (150, 110, 70),
        }[lower]
        top = np.array(top_rgb) + rng.normal(0, 10, 3)
        bottom = np.array(bottom_rgb) + rng.normal(0, 10, 3)
        ramp = (yy / size)[..., None]
        img = np.where((yy < horizon)[..., None], top - 25 * ramp, bottom + 20 * ramp)
        if kind == "water":  # waves
            img = (
                img
                + ((yy >= horizon) * 12 * np.sin(np.arange(size)[None, :] / 6.0 + yy / 3.0))[
                    ..., None
                ]
            )
        if kind == "sky":
            regions["sky"] = np.ones((size, size), bool)
        else:
            regions[upper] = yy < horizon
            regions[lower] = yy >= horizon
    return np.clip(img, 0, 255).astype(np.uint8), regions


class NaturalSceneSet(Sequence[NaturalScene]):
    """``n`` deterministic natural-object scenes; item ``i`` depends only on ``(seed, i)``.

    Args:
        n: Number of scenes.
        seed: Seed of the whole set.
        size: Image side in pixels.
        max_objects: 1 or 2 objects per scene.
        nouns: The nouns drawn (default all of :data:`NOUNS`).
        exclude: (colour, noun) pairs and frozenset({noun, noun}) combinations never drawn
            (a training split without held-out combinations).
        only: If given, every scene shows one of these combinations (a held-out split).
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        size: int = 224,
        max_objects: int = 2,
        nouns: Sequence[str] | None = None,
        exclude: Sequence[tuple[str, str] | frozenset] = (),
        only: Sequence[tuple[str, str] | frozenset] | None = None,
    ) -> None:
        if n < 0 or max_objects not in (1, 2):
            raise DataSetError("n must be >= 0 and max_objects 1 or 2")
        self.nouns = list(nouns) if nouns is not None else list(NOUNS)
        unknown = [x for x in self.nouns if x not in NOUNS]
        if unknown:
            raise DataSetError(f"unknown nouns {unknown}; the nouns are {sorted(NOUNS)}")
        self.n, self.seed, self.size, self.max_objects = n, seed, size, max_objects
        self.exclude = set(exclude)
        self.only = None if only is None else list(only)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[NaturalScene]:
        return (self[i] for i in range(self.n))

    def _allowed(self, objects: list[tuple[str, str]]) -> bool:
        combos: set = {(c, noun) for c, noun in objects}
        if len(objects) == 2:
            combos.add(frozenset(noun for _, noun in objects))
        if combos & self.exclude:
            return False
        return self.only is None or bool(combos & set(self.only))

    def _pick(self, rng: np.random.Generator) -> list[tuple[str, str]]:
        for _ in range(1000):
            n_obj = 1 if self.max_objects == 1 else int(rng.integers(1, 3))
            if self.only is not None:  # start from a held-out combination
                combo = self.only[int(rng.integers(len(self.only)))]
                if isinstance(combo, frozenset):
                    nouns = sorted(combo)
                    objects = [(str(rng.choice(NOUNS[x])), x) for x in rng.permutation(nouns)]
                else:
                    objects = [combo]
                    if n_obj == 2:
                        other = str(rng.choice([x for x in self.nouns if x != combo[1]]))
                        objects.append((str(rng.choice(NOUNS[other])), other))
            else:
                nouns = list(rng.choice(self.nouns, size=n_obj, replace=False))
                objects = [(str(rng.choice(NOUNS[x])), str(x)) for x in nouns]
            if self._allowed(objects):
                return objects
        raise DataSetError("no allowed combination found: the exclusions leave nothing to draw")

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise OutOfRangeError(f"scene {i} out of range (n={self.n})")
        i %= self.n
        rng = np.random.default_rng([self.seed, i, 7])
        chosen = self._pick(rng)
        background = str(rng.choice(NATURAL_BACKGROUNDS))
        base, regions = _background(background, self.size, rng)
        canvas = Image.fromarray(base)
        slots = [0.3, 0.7] if len(chosen) == 2 else [0.5]
        if len(chosen) == 2 and rng.random() < 0.5:
            slots = slots[::-1]
        objects, masks = [], []
        for (colour, noun), slot in zip(chosen, slots):
            size = str(rng.choice(["small", "large"]))
            r = self.size * (0.12 if size == "small" else 0.19) * rng.uniform(0.9, 1.1)
            cx = self.size * (slot + rng.uniform(-0.06, 0.06))
            cy = self.size * (rng.uniform(0.2, 0.32) if noun in _SKY else rng.uniform(0.55, 0.7))
            mask_layer = Image.new("L", canvas.size, 0)
            colour_layer = Image.new("RGB", canvas.size, (0, 0, 0))
            mdraw, cdraw = ImageDraw.Draw(mask_layer), ImageDraw.Draw(colour_layer)

            def paint(primitive, rgb, mdraw=mdraw, cdraw=cdraw):
                primitive(mdraw, 255)
                primitive(cdraw, rgb)

            _draw_object(noun, PALETTE[colour], cx, cy, r, rng, paint)
            mask = np.asarray(mask_layer) > 127
            for m in masks:  # later objects occlude earlier ones
                m &= ~mask
            for region in regions.values():
                region &= ~mask
            masks.append(mask)
            canvas.paste(colour_layer, mask=Image.fromarray((mask * 255).astype(np.uint8)))
            objects.append(SceneObject(colour, noun, "left" if slot < 0.5 else "right", size))
        phrases = [self._phrase(o.colour, o.shape) for o in objects]
        caption = " next to ".join(phrases)
        return NaturalScene(
            canvas,
            caption,
            f" {phrases[0]}.",
            objects,
            masks,
            background,
            regions=regions,
            background_pixels=base,
        )

    @staticmethod
    def _phrase(colour: str, noun: str) -> str:
        if noun in _DEFINITE:
            return f"the {noun}"
        words = f"{colour} {noun}" if len(NOUNS[noun]) > 1 else noun
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    @staticmethod
    def split(n_colour_pairs: int = 10, n_noun_pairs: int = 10, seed: int = 0) -> tuple[list, list]:
        """Held-out combinations: (colour, noun) pairs of nouns with several colours, and noun
        pairs (as frozensets), chosen by ``seed``. Train with ``exclude=`` both lists, evaluate
        seen combinations with ``exclude=`` and unseen ones with ``only=``."""
        rng = np.random.default_rng(seed)
        coloured = [(c, x) for x, cs in NOUNS.items() if len(cs) > 1 for c in cs]
        picks = rng.permutation(len(coloured))[:n_colour_pairs]
        colour_pairs = [coloured[int(j)] for j in picks]
        nouns = list(NOUNS)
        noun_pairs: list[frozenset] = []
        while len(noun_pairs) < n_noun_pairs:
            a, b = rng.choice(nouns, size=2, replace=False)
            pair = frozenset((str(a), str(b)))
            if pair not in noun_pairs:
                noun_pairs.append(pair)
        return colour_pairs, noun_pairs
