"""LiMBeR's set-ups by name: the encoder, preprocessing, token count, prompt and BOS of each
``proj.ckpt`` (Merullo et al. 2022, repo ``jmerullo/limber``: ``image_encoders.py``,
``transforms.py``, ``image_prefix.py``, ``configs/*.yml``).

=================  ==================  ==========================================  =========
recipe             LiMBeR checkpoint   encoder (how it is loaded)                  tokens
=================  ==================  ==========================================  =========
``limber-beit``    ``beit_linear``     transformers ``BeitModel``                  196 x 1024
                                       ``microsoft/beit-large-patch16-224-pt22k``
                                       (self-supervised), ``last_hidden_state[:,
                                       1:]``, its image processor (PIL), 224 px
``limber-beit-ft`` ``beit_ft_linear``  the same with ``...-pt22k-ft22k`` (fine-     196 x 1024
                                       tuned on ImageNet-22k; what timm's
                                       ``beit_large_patch16_224.in22k_ft_in22k``
                                       loads)
``limber-clip``    ``clip_linear``     OpenAI CLIP ``RN50x16`` image tower,        144 x 3072
                                       attention pooling replaced by ``b d h w ->
                                       b (h w) d``, 384 px, bicubic resize +
                                       centre crop + CLIP normalisation
``limber-nfrn50``  ``nfrn50_4096_      timm ``nf_resnet50`` without its head,      1 x 2048
                   linear``            average-pooled, 384 px
=================  ==================  ==========================================  =========

Every recipe places the image tokens first, then ``"A picture of"``, with no BOS (LiMBeR's
``preprocess_inputs([image, "A picture of"])``). One departure, for ``limber-nfrn50`` only:
LiMBeR's own transform for it is random even at inference (pad, random crop, random resize,
random flip, no normalisation); the recipe uses its deterministic centre (resize the short side
to 384, centre crop 384, pixels in [0, 1], no normalisation).

Example:
    >>> get_recipe("limber-beit").n_tokens, get_recipe("limber-clip").d_image
    (196, 3072)
    >>> model = from_parts(lm="EleutherAI/gpt-j-6b", recipe="limber-beit",  # doctest: +SKIP
    ...                    projection="limber_weights/beit_linear/proj.ckpt")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from transformer_lens_mm.core.encoders import ImageEncoder, create_encoder
from transformer_lens_mm.errors import ConfigError, ProjectionShapeError

__all__ = ["RECIPES", "Recipe", "get_recipe", "recipes_for_width"]


@dataclass(frozen=True)
class Recipe:
    """One LiMBeR set-up: everything fixed except the language model and the ``proj.ckpt``."""

    name: str  # e.g. "limber-beit"
    checkpoint: str  # LiMBeR's folder under limber_weights/
    kind: str  # the encoder's family (a kind of core.encoders.registry: create_encoder)
    encoder: str  # hub name (transformers / open_clip / timm)
    d_image: int  # feature width of one image token
    n_tokens: int  # image tokens per image
    image_size: int  # input resolution in pixels
    prompt: str = "A picture of"
    prepend_bos: bool = False
    encoder_options: dict[str, Any] = field(default_factory=dict)  # the family's own options

    def build_encoder(
        self,
        source: str | os.PathLike | None = None,
        *,
        pretrained: bool = True,
    ) -> ImageEncoder:
        """The recipe's encoder, checked against the recipe's token count and width.

        Args:
            source: ``None``: from the hub. Else a local copy of the same weights: a
                ``save_pretrained`` folder (transformers recipes), an open_clip weights file or
                tag (``limber-clip``), a timm checkpoint file (``limber-nfrn50``).
            pretrained: ``False``: random weights of the same architecture.
        """
        enc = create_encoder(
            self.kind, self.encoder, pretrained=pretrained, source=source, **self.encoder_options
        )
        self.check_encoder(enc)
        return enc

    def check_encoder(self, encoder: ImageEncoder) -> None:
        """Raise :class:`ProjectionShapeError` when ``encoder`` is not this recipe's shape."""
        if (encoder.n_tokens, encoder.d_image) != (self.n_tokens, self.d_image):
            raise ProjectionShapeError(
                f"recipe {self.name!r} ({self.checkpoint}) needs {self.n_tokens} image tokens of "
                f"{self.d_image} ({self.encoder}), but the encoder {encoder.name!r} gives "
                f"{encoder.n_tokens} of {encoder.d_image}: pass the recipe's encoder (or a "
                "local copy of it), or drop recipe= to use another encoder"
            )

    def check_projection(self, d_image: int, source: str = "the projection") -> None:
        """Raise :class:`ProjectionShapeError` naming the recipe that fits, when another does."""
        if d_image == self.d_image:
            return
        fits = recipes_for_width(d_image)
        hint = (
            f"that is the width of {', '.join(f'{r.name!r} ({r.checkpoint})' for r in fits)}: "
            f"pass recipe={fits[0].name!r}"
            if fits
            else "no LiMBeR recipe has that width: drop recipe= and pass the encoder it was "
            "trained on"
        )
        raise ProjectionShapeError(
            f"recipe {self.name!r} expects a projection from {self.d_image}-d features "
            f"({self.encoder}, {self.checkpoint}/proj.ckpt), but {source} takes "
            f"{d_image}-d inputs; {hint}"
        )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="limber-beit",
            checkpoint="beit_linear",
            kind="transformers",
            encoder="microsoft/beit-large-patch16-224-pt22k",
            d_image=1024,
            n_tokens=196,
            image_size=224,
            encoder_options={"backend": "pil"},  # LiMBeR's PIL resizing
        ),
        Recipe(
            name="limber-beit-ft",
            checkpoint="beit_ft_linear",
            kind="transformers",
            encoder="microsoft/beit-large-patch16-224-pt22k-ft22k",
            d_image=1024,
            n_tokens=196,
            image_size=224,
            encoder_options={"backend": "pil"},
        ),
        Recipe(
            name="limber-clip",
            checkpoint="clip_linear",
            kind="clip-resnet",
            encoder="RN50x16",
            d_image=3072,
            n_tokens=144,
            image_size=384,
            encoder_options={"image_size": 384},
        ),
        Recipe(
            name="limber-nfrn50",
            checkpoint="nfrn50_4096_linear",
            kind="timm",
            encoder="nf_resnet50",
            d_image=2048,
            n_tokens=1,
            image_size=384,
            encoder_options={  # LiMBeR's nfrn50: the map averaged, pixels in [0, 1]
                "pool": "avg",
                "data_config": {
                    "input_size": (3, 384, 384),
                    "interpolation": "bilinear",
                    "mean": (0.0, 0.0, 0.0),
                    "std": (1.0, 1.0, 1.0),
                    "crop_pct": 1.0,
                    "crop_mode": "center",
                },
            },
        ),
    )
}


def get_recipe(name: str | Recipe) -> Recipe:
    """A recipe by name (``"limber-beit"``, ``"limber-beit-ft"``, ``"limber-clip"``,
    ``"limber-nfrn50"``)."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; the recipes are {sorted(RECIPES)}")
    return RECIPES[name]


def recipes_for_width(d_image: int) -> list[Recipe]:
    """The recipes whose encoder gives ``d_image``-d features (``1024``: both BEiT ones)."""
    return [r for r in RECIPES.values() if r.d_image == d_image]
