"""A persistent encoder-feature cache: the second pass over a data set runs no encoder forward.

Features are stored one safetensors file per image under a folder named by the encoder's
fingerprint (its name, layer and a hash of its weights), keyed by a hash of the preprocessed
pixels (so the key covers the image content *and* the transform: another resize, crop or
normalisation gives other pixels, hence another key). Writes are atomic, so a killed run
leaves only whole files; concurrent readers and writers of the same folder are safe.

Attach one to a model and every path that encodes pixels (``model(...)``, ``run_with_cache``,
captioning, attribution, training) reads and fills it::

    model.attach_feature_cache("~/.cache/tlmm-features")
    model(images=images)   # encodes, stores
    model(images=images)   # loads: no encoder forward

Example:
    >>> cache = FeatureCache("runs/features", encoder)  # doctest: +SKIP
    >>> feats = cache.features(pixel_values)  # doctest: +SKIP
    >>> cache.hits, cache.misses  # doctest: +SKIP
    (0, 8)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from transformer_lens_mm.core.atomic import atomic_write

__all__ = ["FeatureCache", "encoder_fingerprint", "pixel_key"]


def pixel_key(pixels: Float[Tensor, "channel height width"]) -> str:
    """sha256 of one preprocessed image (fp32 bytes + shape): content and transform in one."""
    t = pixels.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def encoder_fingerprint(encoder: Any) -> str:
    """A short id of an encoder: its name, layer and a hash of every weight (computed once)."""
    cached = getattr(encoder, "_tlmm_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(f"{getattr(encoder, 'name', type(encoder).__name__)}".encode())
    h.update(f"layer={getattr(encoder, 'layer', None)}".encode())
    if getattr(encoder, "pool", None) is not None:  # the same weights read another way
        h.update(f"pool={encoder.pool}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # 0-d buffers too
        h.update(flat.view(torch.uint8).numpy().tobytes())
    name = str(getattr(encoder, "name", "encoder")).replace("/", "_")
    fingerprint = f"{name}-{h.hexdigest()[:16]}"
    try:
        encoder._tlmm_fingerprint = fingerprint
    except AttributeError:  # pragma: no cover - exotic modules
        pass
    return fingerprint


class FeatureCache:
    """Encoder features on disk, keyed by encoder fingerprint and pixel hash.

    Args:
        root: Folder of the cache (created; shared by many encoders, one sub-folder each).
        encoder: The encoder whose features are cached (an ``ImageEncoder`` or any module
            mapping ``[batch, 3, H, W]`` pixels to ``[batch, n_tokens, d]`` features).
    """

    def __init__(self, root: str | os.PathLike, encoder: Any) -> None:
        self.encoder = encoder
        self.folder = Path(root).expanduser() / encoder_fingerprint(encoder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def __contains__(self, pixels: Tensor) -> bool:
        return self._path(pixel_key(pixels)).is_file()

    @torch.no_grad()
    def features(
        self, pixel_values: Float[Tensor, "batch ..."]
    ) -> Float[Tensor, "batch n_tokens d_image"]:
        """Features of every image: loaded where cached, encoded (one batch) and stored where not.

        A cache file that cannot be read (e.g. truncated by a crash of another tool) is
        treated as missing and rewritten.
        """
        keys = [pixel_key(p) for p in pixel_values]
        found: dict[int, Tensor] = {}
        for i, key in enumerate(keys):
            path = self._path(key)
            if path.is_file():
                try:
                    found[i] = load_file(path)["features"]
                except Exception:  # unreadable: recompute below
                    pass
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            fresh = self.encoder(pixel_values[missing])
            for j, i in enumerate(missing):
                feat = fresh[j].detach().to("cpu").contiguous()
                found[i] = feat
                path = self._path(keys[i])
                path.parent.mkdir(exist_ok=True)
                atomic_write(path, lambda tmp, f=feat: save_file({"features": f}, tmp))
        device = pixel_values.device
        return torch.stack([found[i].to(device) for i in range(len(keys))])
