"""Image data sets for dataset-scale runs: COCO, a folder with captions, class-per-folder sets.

Every data set is a ``Sequence[Item]``: an item knows its id, where its image is, its captions,
its category labels and how to build its object masks (decoded lazily, by pycocotools for
COCO). Images are read only when needed, so a bad file fails that item, not the data set.
:func:`image_loader` wraps a data set in a ``torch`` ``DataLoader`` (workers, the encoder's
transform) that yields the images it could read together with the failures of the others.

Example:
    >>> data = CocoDataset(  # doctest: +SKIP
    ...     "val2017", "captions_val2017.json", "instances_val2017.json"
    ... )
    >>> item = data[0]  # doctest: +SKIP
    >>> item.captions[0], item.categories  # doctest: +SKIP
    >>> masks = item.masks()  # {category: bool [H, W]}  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from transformer_lens_mm.core.images import to_rgb_image
from transformer_lens_mm.errors import DataSetError, MissingFileError, UnknownNameError

__all__ = [
    "CaptionFolder",
    "ClassFolders",
    "CocoDataset",
    "Item",
    "LoadedBatch",
    "SceneDataset",
    "image_loader",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Item:
    """One image of a data set."""

    id: str  # unique within the data set (used as the key of results and resumption)
    source: Any  # a path, or an in-memory image
    captions: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)  # labels present in the image
    mask_fn: Callable[[], dict[str, np.ndarray]] | None = field(default=None, repr=False)

    def image(self) -> Image.Image:
        """The image as RGB (raises ``FileNotFoundError``/``ValueError`` for bad files)."""
        return to_rgb_image(self.source)

    def masks(self) -> dict[str, np.ndarray]:
        """Boolean object masks ``[H, W]`` per category (empty when the data set has none)."""
        return self.mask_fn() if self.mask_fn is not None else {}


class CocoDataset(Sequence[Item]):
    """COCO-format images with captions and (optionally) instance masks, via ``pycocotools``.

    Args:
        images_dir: Folder of the images (``file_name`` of the annotation files).
        captions_json: ``captions_*.json`` (may be ``None`` when only instances are used).
        instances_json: ``instances_*.json`` for categories and masks (optional).
        image_ids: Restrict to these image ids (default: every image of the files).
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        captions_json: str | os.PathLike | None,
        instances_json: str | os.PathLike | None = None,
        *,
        image_ids: Sequence[int] | None = None,
    ) -> None:
        from pycocotools.coco import COCO

        if captions_json is None and instances_json is None:
            raise DataSetError("give captions_json, instances_json or both")
        self.images_dir = Path(images_dir)
        self.captions = _quiet(COCO, captions_json) if captions_json else None
        self.instances = _quiet(COCO, instances_json) if instances_json else None
        base = self.captions or self.instances
        assert base is not None
        ids = sorted(base.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in base.imgs]
        if unknown:
            raise UnknownNameError(f"image ids not in the annotation file: {unknown[:5]}")
        self.ids = ids
        self.category_names: dict[int, str] = (
            {c["id"]: c["name"] for c in self.instances.loadCats(self.instances.getCatIds())}
            if self.instances is not None
            else {}
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        image_id = self.ids[i]
        base = self.captions or self.instances
        info = base.imgs[image_id]  # type: ignore[union-attr]
        captions = []
        if self.captions is not None:
            anns = self.captions.loadAnns(self.captions.getAnnIds(imgIds=[image_id]))
            captions = [a["caption"].strip() for a in anns]
        categories: list[str] = []
        mask_fn = None
        if self.instances is not None:
            coco = self.instances
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
            names = self.category_names
            categories = sorted({names[a["category_id"]] for a in anns})

            def mask_fn(anns=anns, names=names) -> dict[str, np.ndarray]:
                # polygons and RLE (crowd) alike, decoded by pycocotools
                return _union_by_name(
                    (names[a["category_id"]], coco.annToMask(a).astype(bool)) for a in anns
                )

        return Item(
            str(image_id),
            self.images_dir / info["file_name"],
            captions,
            categories,
            mask_fn,
        )


def _union_by_name(pairs: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One boolean mask per name: the union of the masks given under that name."""
    out: dict[str, np.ndarray] = {}
    for name, m in pairs:
        out[name] = out[name] | m if name in out else m
    return out


def _quiet(cls: Any, path: Any) -> Any:
    import contextlib
    import io

    if not Path(path).is_file():
        raise MissingFileError(f"annotation file {path} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return cls(str(path))


class CaptionFolder(Sequence[Item]):
    """Images in a folder with captions in a JSONL or CSV file.

    Each record has ``file`` (relative to ``root``) and ``caption`` (or ``captions``, a list);
    optional ``id`` and ``category``. Several records for one file add captions.

    Args:
        root: Image folder.
        captions: ``.jsonl`` or ``.csv`` file (default: ``root/captions.jsonl``).
    """

    def __init__(self, root: str | os.PathLike, captions: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        path = Path(captions) if captions is not None else self.root / "captions.jsonl"
        if not path.is_file():
            raise MissingFileError(f"caption file {path} does not exist")
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                records = list(csv.DictReader(f))
        elif path.suffix in (".jsonl", ".json"):
            records = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataSetError(f"{path}:{n} is not valid JSON: {err}") from err
        else:
            raise DataSetError(f"caption file must be .jsonl or .csv, got {path.name}")
        items: dict[str, Item] = {}
        for n, rec in enumerate(records, 1):
            if "file" not in rec:
                raise DataSetError(f"{path}: record {n} has no 'file' field: {rec}")
            key = str(rec.get("id") or rec["file"])
            item = items.setdefault(key, Item(key, self.root / rec["file"]))
            caps = rec.get("captions") or [rec.get("caption", "")]
            item.captions += [str(c) for c in (caps if isinstance(caps, list) else [caps])]
            if rec.get("category"):
                item.categories.append(str(rec["category"]))
        self.items = list(items.values())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]


class ClassFolders(Sequence[Item]):
    """ImageNet-style data: ``root/<class>/<image>``; the class is the item's category."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"{self.root} is not a folder")
        self.items = [
            Item(f"{d.name}/{f.name}", f, [], [d.name])
            for d in sorted(p for p in self.root.iterdir() if p.is_dir())
            for f in sorted(d.iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        return self.items[i]


class SceneDataset(Sequence[Item]):
    """A generated scene set (:class:`~transformer_lens_mm.data.scenes.SceneSet` or
    :class:`~transformer_lens_mm.data.natural_scenes.NaturalSceneSet`) behind the same interface
    (categories are the objects' shapes or nouns; masks per object name, plus the natural
    scenes' background regions such as ``sky`` or ``water``)."""

    def __init__(self, scenes: Sequence[Any]) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i):  # type: ignore[override]
        s = self.scenes[i]
        shapes = [o.shape for o in s.objects]

        def masks(s=s) -> dict[str, np.ndarray]:
            named = _union_by_name((o.shape, m) for o, m in zip(s.objects, s.masks))
            # natural scenes: background regions (sky, grass, water, wall, floor) as concepts too
            return {**getattr(s, "regions", {}), **named}

        return Item(f"scene-{i:06d}", s.image, [s.caption], sorted(set(shapes)), masks)


@dataclass
class LoadedBatch:
    """What :func:`image_loader` yields: the readable images, and why the others failed."""

    indices: list[int]  # data-set positions of the loaded images
    ids: list[str]
    pixel_values: torch.Tensor | None  # [n, 3, H, W] (None when nothing was readable)
    failed: list[tuple[int, str, str]]  # (data-set position, item id, reason)

    @property
    def failures(self) -> dict[str, str]:
        """Item id -> why it could not be read."""
        return {key: why for _, key, why in self.failed}


class _Loading(torch.utils.data.Dataset):
    def __init__(self, data: Sequence[Item], indices: Sequence[int], transform: Any) -> None:
        self.data, self.indices, self.transform = data, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, str, Any]:
        i = self.indices[j]
        item = self.data[i]
        try:
            return i, item.id, self.transform(item.image())
        except (OSError, ValueError, TypeError) as err:
            return i, item.id, f"unreadable image: {err}"


def _collate(rows: list[tuple[int, str, Any]]) -> LoadedBatch:
    good = [(i, key, x) for i, key, x in rows if isinstance(x, torch.Tensor)]
    return LoadedBatch(
        [i for i, _, _ in good],
        [key for _, key, _ in good],
        torch.stack([x for _, _, x in good]) if good else None,
        [(i, key, x) for i, key, x in rows if not isinstance(x, torch.Tensor)],
    )


def image_loader(
    data: Sequence[Item],
    transform: Any,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> Iterator[LoadedBatch]:
    """Batches of preprocessed images (``transform``: e.g. ``encoder.transform``), read by
    ``num_workers`` worker processes; unreadable images are reported, not raised."""
    ds = _Loading(data, range(len(data)) if indices is None else indices, transform)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False
    )
    yield from loader
