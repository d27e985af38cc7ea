"""The learned linear map from image features to soft-prompt tokens, and its file formats.

Two formats are read:

* LiMBeR ``proj.ckpt`` files: a ``torch.save``d state dict with ``weight`` ``[d_model, d_image]``
  and ``bias`` ``[d_model]`` (Merullo et al. 2022). Loaded with ``torch.load(weights_only=True)``:
  a pickle that carries code is refused.
* Ours: a folder with ``projection.safetensors`` (``weight``, ``bias``) and ``projection.json``
  (:class:`ProjectionConfig`: encoder, LM, dimensions, prompt, token layout).

Example:
    >>> proj = ImageProjection(d_image=8, d_model=4)
    >>> proj(torch.zeros(2, 3, 8)).shape
    torch.Size([2, 3, 4])
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.errors import (
    CheckpointError,
    ConfigError,
    CorruptWeightsError,
    MissingFileError,
    ProjectionShapeError,
)

__all__ = [
    "ImageProjection",
    "ProjectionConfig",
    "ProjectionShapeError",
    "check_projection_shapes",
    "load_projection",
]

CONFIG_NAME = "projection.json"
WEIGHTS_NAME = "projection.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ProjectionConfig:
    """What a saved projection was trained with (stored as ``projection.json``)."""

    d_image: int  # feature size of one image token (encoder output)
    d_model: int  # embedding size of the language model
    encoder: str | None = None  # timm model name of the encoder
    encoder_layer: int | None = None  # encoder block read (None: final features)
    lm: str | None = None  # language model name or folder
    prompt: str = "A picture of"  # text placed after the image tokens
    prepend_bos: bool = False  # whether a BOS token precedes the image tokens
    bos_token: str | None = None  # that token, when not the tokenizer's own BOS
    n_image_tokens: int | None = None  # number of soft tokens per image
    format_version: int = FORMAT_VERSION  # version of this file layout

    def __post_init__(self) -> None:
        if self.d_image <= 0 or self.d_model <= 0:
            raise ConfigError(f"d_image and d_model must be positive, got {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown keys in {CONFIG_NAME}: {sorted(unknown)}")
        return cls(**data)


def check_projection_shapes(
    d_image_proj: int,
    d_model_proj: int,
    *,
    d_image: int,
    d_model: int,
    source: str = "the projection",
) -> None:
    """Raise :class:`ProjectionShapeError` naming all numbers when the shapes do not chain.

    Args:
        d_image_proj: Input size of the projection.
        d_model_proj: Output size of the projection.
        d_image: Feature size the image encoder produces.
        d_model: Embedding size of the language model.
        source: What to call the projection in the message (e.g. a file path).

    Example:
        >>> check_projection_shapes(1024, 4096, d_image=1024, d_model=4096)
    """
    if d_image_proj != d_image or d_model_proj != d_model:
        raise ProjectionShapeError(
            f"{source} maps d_image={d_image_proj} -> d_model={d_model_proj}, but the image "
            f"encoder produces d_image={d_image} and the language model has d_model={d_model}. "
            "Use the encoder (and encoder layer) and the language model the projection was "
            "trained for, or train a new projection for this pair."
        )


class ImageProjection(nn.Linear):
    """Per-token linear map ``d_image -> d_model``.

    A ``nn.Linear``, so its state dict is LiMBeR's: ``weight`` ``[d_model, d_image]``, ``bias``.

    Args:
        d_image: Feature size of one image token.
        d_model: Embedding size of the language model.
        config: Optional metadata saved alongside the weights.
    """

    def __init__(
        self,
        d_image: int,
        d_model: int,
        *,
        config: ProjectionConfig | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(d_image, d_model, bias=bias)
        self.config = config or ProjectionConfig(d_image=d_image, d_model=d_model)

    @property
    def d_image(self) -> int:
        return self.in_features

    @property
    def d_model(self) -> int:
        return self.out_features

    def forward(
        self, features: Float[Tensor, "batch n_image_tokens d_image"]
    ) -> Float[Tensor, "batch n_image_tokens d_model"]:
        if features.shape[-1] != self.in_features:
            raise ProjectionShapeError(
                f"image features have size {features.shape[-1]} but the projection expects "
                f"d_image={self.in_features}: check the encoder (and its layer)"
            )
        return super().forward(features.to(self.weight.dtype))

    # ---------------------------------------------------------------- our format
    def save(self, folder: str | os.PathLike, **config_updates: Any) -> Path:
        """Save as ``projection.safetensors`` + ``projection.json`` (atomic writes).

        Args:
            folder: Target folder (created if needed).
            **config_updates: Fields of :class:`ProjectionConfig` to record.

        Returns:
            The folder path.

        Example:
            >>> import tempfile
            >>> p = ImageProjection(8, 4)
            >>> d = p.save(tempfile.mkdtemp(), prompt="A photo of")
            >>> load_projection(d).config.prompt
            'A photo of'
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = dataclasses.replace(
            self.config, d_image=self.d_image, d_model=self.d_model, **config_updates
        )
        self.config = config
        tensors = {"weight": self.weight.detach().cpu().contiguous()}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach().cpu().contiguous()
        atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        atomic_write(
            folder / CONFIG_NAME,
            lambda p: Path(p).write_text(json.dumps(config.to_dict(), indent=2)),
        )
        return folder

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Tensor],
        *,
        source: str,
        d_image: int | None = None,
        d_model: int | None = None,
        config: ProjectionConfig | None = None,
    ) -> ImageProjection:
        """Build from a ``{"weight", "bias"}`` state dict, validating shapes."""
        if not isinstance(state, dict) or "weight" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(
                f"{source} is not a projection state dict: expected keys 'weight' "
                f"[d_model, d_image] and 'bias' [d_model], found {keys}"
            )
        extra = set(state) - {"weight", "bias"}
        if extra:
            raise CheckpointError(
                f"{source} has unexpected keys {sorted(extra)}; expected weight, bias"
            )
        weight = state["weight"]
        if not isinstance(weight, Tensor) or weight.ndim != 2:
            raise CheckpointError(f"{source}: 'weight' must be a 2-d tensor [d_model, d_image]")
        out_f, in_f = weight.shape
        bias = state.get("bias")
        if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (out_f,)):
            shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise CheckpointError(f"{source}: 'bias' has shape {shape}, expected ({out_f},)")
        if d_image is not None or d_model is not None:
            check_projection_shapes(
                in_f,
                out_f,
                d_image=d_image if d_image is not None else in_f,
                d_model=d_model if d_model is not None else out_f,
                source=source,
            )
        for name, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                n_nan, n_inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
                raise CorruptWeightsError(
                    f"{source}: '{name}' holds non-finite values ({n_nan} NaN, {n_inf} inf), "
                    "which would reach every logit. The checkpoint is corrupt or diverged: "
                    "re-download it, or resume training from an earlier checkpoint."
                )
        cfg = config or ProjectionConfig(d_image=in_f, d_model=out_f)
        proj = cls(in_f, out_f, config=cfg, bias=bias is not None)
        proj.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return proj

    @classmethod
    def from_limber(
        cls,
        path: str | os.PathLike,
        *,
        d_image: int | None = None,
        d_model: int | None = None,
        **config_fields: Any,
    ) -> ImageProjection:
        """Load a LiMBeR ``proj.ckpt`` safely (``torch.load(weights_only=True)``).

        Args:
            path: The ``proj.ckpt`` file.
            d_image: Expected encoder feature size (validated when given).
            d_model: Expected LM embedding size (validated when given).
            **config_fields: Metadata to record (encoder, lm, prompt, ...).

        Raises:
            ProjectionShapeError: the shapes do not match ``d_image``/``d_model``.
            ValueError: the file is not a projection state dict, or carries code.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"projection checkpoint {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it is a pickle that carries code or objects "
                "other than tensors, which torch.load(weights_only=True) will not run. Only "
                "load it if you trust its author, then re-save just the state dict with "
                "torch.save({'weight': ..., 'bias': ...}, path)."
            ) from err
        except (RuntimeError, EOFError) as err:
            raise CheckpointError(
                f"cannot read {str(path)!r} as a torch checkpoint: {err}"
            ) from err
        if isinstance(state, dict) and "state_dict" in state and "weight" not in state:
            state = state["state_dict"]
        weight = state.get("weight") if isinstance(state, dict) else None
        cfg = None
        if isinstance(weight, Tensor) and weight.ndim == 2:
            cfg = ProjectionConfig(
                d_image=int(weight.shape[1]), d_model=int(weight.shape[0]), **config_fields
            )
        return cls.from_state_dict(
            state, source=str(path), d_image=d_image, d_model=d_model, config=cfg
        )


def load_projection(
    path: str | os.PathLike, *, d_image: int | None = None, d_model: int | None = None
) -> ImageProjection:
    """Load a projection from our folder format or a LiMBeR ``proj.ckpt``.

    Args:
        path: A folder holding ``projection.safetensors``/``projection.json``, the
            ``.safetensors`` file itself, or a LiMBeR ``.ckpt`` file.
        d_image: Expected encoder feature size (validated when given).
        d_model: Expected LM embedding size (validated when given).

    Example:
        >>> import tempfile
        >>> folder = ImageProjection(8, 4).save(tempfile.mkdtemp())
        >>> load_projection(folder, d_image=8, d_model=4).weight.shape
        torch.Size([4, 8])
    """
    path = Path(path)
    if path.is_dir():
        weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file():
            limber = path / "proj.ckpt"
            if limber.is_file():
                return ImageProjection.from_limber(limber, d_image=d_image, d_model=d_model)
            raise MissingFileError(
                f"{str(path)!r} holds neither {WEIGHTS_NAME} (our format) nor proj.ckpt (LiMBeR)"
            )
    elif path.suffix == ".safetensors":
        weights, config_path = path, path.with_name(CONFIG_NAME)
    elif path.is_file():
        return ImageProjection.from_limber(path, d_image=d_image, d_model=d_model)
    else:
        raise MissingFileError(f"projection {str(path)!r} does not exist")
    config = None
    if config_path.is_file():
        config = ProjectionConfig.from_dict(json.loads(config_path.read_text()))
    state = load_file(str(weights))
    return ImageProjection.from_state_dict(
        state, source=str(weights), d_image=d_image, d_model=d_model, config=config
    )
