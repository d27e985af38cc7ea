"""Turning whatever a user holds (PIL images, paths, arrays, tensors) into RGB PIL images.

The encoder's own timm transform then turns those into ``pixel_values``. Already-preprocessed
tensors skip this module: pass them to the model as ``pixel_values=...``.

Example:
    >>> import numpy as np
    >>> from transformer_lens_mm.core.images import to_rgb_images
    >>> imgs = to_rgb_images([np.zeros((8, 8), dtype=np.uint8)])
    >>> imgs[0].mode, imgs[0].size
    ('RGB', (8, 8))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from transformer_lens_mm.errors import ArgumentError, ImageInputError, MissingFileError

__all__ = ["ImageLike", "to_rgb_image", "to_rgb_images"]

#: One image: a PIL image, a path to an image file, a ``uint8`` (or ``uint16``) array
#: ``[H, W]``/``[H, W, C]``,
#: or a float tensor/array with values in ``[0, 1]`` shaped ``[C, H, W]`` (tensor) or
#: ``[H, W, C]`` (array).
ImageLike = Union[  # noqa: UP007 (a runtime alias on Python 3.10)
    Image.Image, str, os.PathLike, np.ndarray, torch.Tensor
]

_HOW = (
    "pass a PIL image, a file path, a uint8 array [H, W] or [H, W, 3|4], or a float tensor "
    "[3, H, W] with values in [0, 1]; already-normalised tensors go to pixel_values=..."
)


def _from_array(arr: np.ndarray, channels_first: bool) -> Image.Image:
    if arr.ndim == 3 and channels_first:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageInputError(f"cannot read an image array of shape {tuple(arr.shape)}: {_HOW}")
    if arr.size == 0:
        raise ImageInputError(f"image array of shape {tuple(arr.shape)} is empty: {_HOW}")
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if np.isnan(arr).any() or lo < 0.0 or hi > 1.0:
            raise ImageInputError(
                f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]: "
                "scale the image to [0, 1], or pass already-normalised tensors as pixel_values=..."
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:  # 16-bit images (PNG, TIFF): the full range onto 0..255
        arr = _rescale(arr, 65535)
    elif arr.dtype != np.uint8:
        raise ImageInputError(
            f"image arrays must be uint8, uint16, bool or float in [0, 1], got {arr.dtype}"
        )
    return Image.fromarray(arr)


def _rescale(arr: np.ndarray, full: float | int) -> np.ndarray:
    """Values in ``[0, full]`` onto ``uint8`` ``[0, 255]`` (rounded)."""
    return np.round(arr.astype(np.float64) * (255.0 / full)).clip(0, 255).astype(np.uint8)


def _to_8_bit(image: Image.Image) -> Image.Image:
    """A PIL image of a high-bit-depth mode as 8-bit grayscale, rescaled (PIL's own
    ``convert`` clips: a 16-bit photo would come out white).

    * ``I;16*``: 16-bit unsigned, 0..65535;
    * ``I`` (32-bit integer, as some readers open 16-bit files): 0..255 as is, up to 65535 as
      16-bit, else the whole 32-bit range;
    * ``F`` (32-bit float): [0, 1] or [0, 255]; another range cannot be guessed.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return Image.fromarray(_rescale(np.asarray(image, dtype=np.uint16), 65535))
    arr = np.asarray(image)
    lo, hi = float(arr.min()), float(arr.max())
    if mode == "I":
        if lo < 0:
            raise ImageInputError(f"a 32-bit integer image with negative values ({lo:g}): {_HOW}")
        full = 255 if hi <= 255 else 65535 if hi <= 65535 else 2**32 - 1
        return Image.fromarray(_rescale(arr, full))
    if lo < 0 or hi > 255 or not np.isfinite(arr).all():
        raise ImageInputError(
            f"a float image with values in [{lo:.3g}, {hi:.3g}]: scale it to [0, 1] (or pass "
            "already-normalised tensors as pixel_values=...)"
        )
    return Image.fromarray(_rescale(arr, 1.0 if hi <= 1.0 else 255.0))


def _upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied (phone photos are
    stored sideways with a tag saying so)."""
    if image.getexif().get(0x0112, 1) in (0, 1):  # no tag, or already upright
        return image
    return ImageOps.exif_transpose(image)


def to_rgb_image(image: ImageLike) -> Image.Image:
    """Convert one image to an RGB PIL image.

    Grayscale, RGBA (composited on white), palette and other modes are converted; 16-bit and
    32-bit integer and float images are rescaled to 8 bits (not clipped); a file's EXIF
    orientation is applied.

    Args:
        image: See :data:`ImageLike`.

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unreadable file, or an array/tensor that is not an image.
        TypeError: any other type.

    Example:
        >>> to_rgb_image(torch.ones(3, 4, 4) * 0.5).getpixel((0, 0))
        (128, 128, 128)
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise MissingFileError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (OSError, SyntaxError) as err:  # PIL raises these for corrupt/truncated files
            raise ImageInputError(f"cannot read image file {str(path)!r}: {err}") from err
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        image = _from_array(tensor.numpy(), channels_first=tensor.ndim == 3)
    elif isinstance(image, np.ndarray):
        image = _from_array(image, channels_first=False)
    elif not isinstance(image, Image.Image):
        raise ImageInputError(
            f"cannot use an object of type {type(image).__name__} as an image: {_HOW}"
        )

    image = _upright(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8_bit(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_rgb_images(images: ImageLike | Sequence[ImageLike]) -> list[Image.Image]:
    """Convert one image or a batch of images to a list of RGB PIL images.

    A 4-d tensor ``[batch, C, H, W]`` counts as a batch.

    Args:
        images: One image or a sequence of images (see :data:`ImageLike`).

    Returns:
        A non-empty list of RGB images.

    Raises:
        ValueError: an empty batch.

    Example:
        >>> len(to_rgb_images(torch.zeros(2, 3, 8, 8)))
        2
    """
    items: list[Any]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items = list(images)
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        items = [images]
    if not items:
        raise ArgumentError("the batch of images is empty: pass at least one image")
    return [to_rgb_image(item) for item in items]
