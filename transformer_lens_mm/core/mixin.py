"""The hook-based core shared by both TransformerLens APIs.

:class:`MultimodalMixin` adds two hook points (``hook_image_features``, ``hook_image_embed``), an
image encoder and a projection to a TransformerLens model, and overrides ``forward`` so that a
:class:`~transformer_lens_mm.core.layout.MultimodalInput` (or ``images=...``) is run as
``[image tokens][prompt]``. The image tokens enter through an ordinary forward hook on
``hook_embed`` that runs before any user hook there; no module's ``forward`` is replaced, so
``run_with_hooks``, ``run_with_cache``, ``hooks()`` and ActivationCache work as usual.

The mixin implements the model contract (:class:`~transformer_lens_mm.core.contract.
MultimodalModel`) except the two KV-cached decoding steps, which each TL API provides.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.nn.modules.module import _IncompatibleKeys

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.encoders import ImageEncoder
from transformer_lens_mm.core.images import ImageLike
from transformer_lens_mm.core.layout import MultimodalInput, build_multimodal_input
from transformer_lens_mm.core.paper import PROMPT
from transformer_lens_mm.core.projection import ImageProjection, check_projection_shapes
from transformer_lens_mm.errors import (
    ArgumentError,
    ArgumentTypeError,
    InputShapeError,
    ModelSetupError,
)
from transformer_lens_mm.fast.fusion import check_fused_flag, is_fused, set_fused
from transformer_lens_mm.fast.versions import HookPoint

__all__ = ["MultimodalMixin"]

#: the vision modules' attribute names, the projection first (always in the state dict)
_VISION = ("image_projection", "image_encoder")
_VISION_PREFIXES = tuple(f"{name}." for name in _VISION)


def _has_backward_hooks(point: HookPoint) -> bool:
    return bool(point._backward_hooks or point._backward_pre_hooks)


class MultimodalMixin:
    """Image-injection behaviour, mixed into ``HookedTransformer`` or ``TransformerBridge``.

    Attributes:
        image_encoder: The frozen :class:`ImageEncoder` (``None``: pass ``image_features``).
        image_projection: The :class:`ImageProjection` ``d_image -> d_model``.
        hook_image_features: Hook point on the encoder output.
        hook_image_embed: Hook point on the projected soft tokens.
        prompt: Default text prompt after the image tokens.
        prepend_bos: Whether a BOS token precedes the image tokens.
        lm_name: What the language model is called (reports name it).
        last_input: The :class:`MultimodalInput` of the most recent multimodal call (for
            interactive use; the package's tools pass positions explicitly and never read it).
    """

    cfg: Any
    tokenizer: Any
    image_encoder: ImageEncoder | None
    image_projection: ImageProjection | None
    hook_image_features: HookPoint
    hook_image_embed: HookPoint
    prompt: str
    prepend_bos: bool
    lm_name: str
    last_input: MultimodalInput | None
    feature_cache: Any = None  # a FeatureCache once attach_feature_cache() was called

    # ----------------------------------------------------------------- set-up
    def _add_image_hook_points(self) -> None:
        self.hook_image_features = HookPoint()
        self.hook_image_embed = HookPoint()
        self.image_encoder = None
        self.image_projection = None
        self.prompt = PROMPT
        self.prepend_bos = False
        self.bos_token_id: int | None = None
        self.last_input = None
        self.injecting: MultimodalInput | None = None  # the batch inject_images is writing
        self.lm_name = str(getattr(self.cfg, "model_name", None) or "language model")

    def _register_image_hook_points(self) -> None:
        """Make the new hook points known to the TL model's hook registry (per TL API)."""

    @classmethod
    def _converted(cls, model: Any, base: type, fused: bool) -> Any:
        """``model`` (a plain ``base``) converted in place into ``cls``: its class switched, the
        image hook points added and registered, the speed layer set (no weight copy)."""
        fused = check_fused_flag(fused)
        if isinstance(model, cls):
            set_fused(model, fused)
            return model
        if type(model) is not base:
            raise ArgumentTypeError(
                f"can only convert a plain {base.__name__}, got {type(model).__name__}"
            )
        model.__class__ = cls
        model._add_image_hook_points()
        model._register_image_hook_points()
        if fused:
            set_fused(model, True)
        return model

    def attach_feature_cache(self, root: str | os.PathLike | None) -> Any:
        """Keep encoder features on disk under ``root`` (``None``: stop caching).

        Every later encoding of pixels (forward, caches, captioning, attribution, training)
        loads the features of images seen before instead of running the encoder. See
        :class:`~transformer_lens_mm.core.feature_cache.FeatureCache`.

        Returns:
            The :class:`FeatureCache` (its ``hits``/``misses`` count lookups), or ``None``.
        """
        if root is None:
            self.feature_cache = None
            return None
        if self.image_encoder is None:
            raise ModelSetupError("this model has no image encoder to cache: attach_vision first")
        from transformer_lens_mm.core.feature_cache import FeatureCache

        self.feature_cache = FeatureCache(root, self.image_encoder)
        return self.feature_cache

    def encode_pixels(
        self, pixel_values: Float[Tensor, "batch ..."]
    ) -> Float[Tensor, "batch n_image_tokens d_image"]:
        """The encoder's features of preprocessed images (through the feature cache if any)."""
        if self.image_encoder is None:
            raise ModelSetupError("this model has no image encoder: pass image_features=...")
        if self.feature_cache is None:
            return self.image_encoder(pixel_values)
        if self.feature_cache.encoder is not self.image_encoder:  # attach_vision changed it
            self.attach_feature_cache(self.feature_cache.folder.parent)
        return self.feature_cache.features(pixel_values)

    def attach_vision(
        self,
        encoder: ImageEncoder | None,
        projection: ImageProjection,
        *,
        prompt: str | None = None,
        prepend_bos: bool | None = None,
        bos_token: str | None = None,
        require_mlp: bool = True,
    ) -> None:
        """Give the language model sight: set the encoder, the projection and the layout.

        Args:
            encoder: Frozen image encoder, or ``None`` to always pass precomputed features.
            projection: Linear map from encoder features to the LM's embedding space.
            prompt: Default prompt after the image tokens (kept from the projection's config
                when ``None``).
            prepend_bos: Whether a BOS token precedes the image tokens (LiMBeR: no).
            bos_token: Which token that is, when not the tokenizer's BOS (e.g.
                ``"<|endoftext|>"``; kept from the projection's config when ``None``).
            require_mlp: Refuse attention-only models (the analyses need MLP units).

        Raises:
            ProjectionShapeError: encoder, projection and LM sizes do not chain.
            ValueError: the LM has no MLP layers.
        """
        if require_mlp and (
            getattr(self.cfg, "attn_only", False) or not getattr(self.cfg, "d_mlp", 1)
        ):
            raise ArgumentError(
                "this language model has no MLP layers (attn_only), so it has no MLP units to "
                "analyse; load a model with MLPs, or pass require_mlp=False to only inject images"
            )
        if not isinstance(projection, ImageProjection):
            raise ArgumentTypeError(
                f"projection must be an ImageProjection, got {type(projection).__name__}; load one "
                "with load_projection(path) or ImageProjection.from_limber(path)"
            )
        d_image = encoder.d_image if encoder is not None else projection.d_image
        check_projection_shapes(
            projection.d_image, projection.d_model, d_image=d_image, d_model=int(self.cfg.d_model)
        )
        device = self.lm_device
        self.image_encoder = encoder.to(device) if encoder is not None else None
        self.image_projection = projection.to(device)
        cfg = projection.config
        self.prompt = prompt if prompt is not None else cfg.prompt
        self.prepend_bos = bool(prepend_bos if prepend_bos is not None else cfg.prepend_bos)
        bos_token = bos_token if bos_token is not None else cfg.bos_token
        self.bos_token_id = None
        if bos_token is not None:
            ids = self.tokenizer(bos_token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ArgumentError(
                    f"bos_token {bos_token!r} is not a single token of this tokenizer"
                )
            self.bos_token_id = int(ids[0])

    @property
    def lm_device(self) -> torch.device:
        """Where the language model's weights live (inputs are moved there)."""
        return self.W_E.device  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def fused(self, enabled: bool = True) -> Iterator[Any]:
        """Context manager: the speed layer on (or off) inside, as it was afterwards.

        Example:
            >>> with model.fused(False):  # TransformerLens's own modules  # doctest: +SKIP
            ...     logits = model(batch)
        """
        before = is_fused(self)  # type: ignore[arg-type]
        set_fused(self, enabled)  # type: ignore[arg-type]
        try:
            yield self
        finally:
            set_fused(self, before)  # type: ignore[arg-type]

    def _require_vision(self) -> ImageProjection:
        if self.image_projection is None:
            raise ModelSetupError(
                "no projection is attached: call model.attach_vision(encoder, projection) or "
                "build the model with from_parts(...)"
            )
        return self.image_projection

    def _projector(self) -> torch.nn.Module:
        """What maps encoder features to the image tokens: the attached projection (a native
        VLM's class returns the model's own projector)."""
        return self._require_vision()

    @property
    def n_image_tokens(self) -> int | None:
        """Image tokens per image produced by the attached encoder (``None`` without one)."""
        return None if self.image_encoder is None else self.image_encoder.n_tokens

    # ----------------------------------------------------------------- inputs
    def prepare_inputs(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        prompts: str | Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        pixel_values: Float[Tensor, "batch ..."] | None = None,
        image_features: Float[Tensor, "batch n_image_tokens d_image"] | None = None,
        padding_side: Literal["left", "right"] = "right",
        append_eos: bool = False,
    ) -> MultimodalInput:
        """Preprocess images and tokenise the layout ``[BOS?][image][prompt][caption?]``.

        Give exactly one of ``images`` (raw), ``pixel_values`` (preprocessed) or
        ``image_features`` (precomputed encoder output).

        Args:
            images: One image or a batch (PIL, paths, uint8 arrays, float tensors in [0, 1]).
            prompts: One prompt for all images, one per image, or ``None`` for ``self.prompt``.
            captions: Text appended after each prompt, marked in ``target_mask``.
            pixel_values: Preprocessed images ``[batch, 3, H, W]``.
            image_features: Encoder output ``[batch, n_image_tokens, d_image]``.
            padding_side: ``"right"`` (same image positions for all items) or ``"left"``.
            append_eos: Append EOS after each caption.

        Returns:
            A :class:`MultimodalInput` on the model's device.
        """
        projection = self._require_vision()
        given = [x is not None for x in (images, pixel_values, image_features)]
        if sum(given) != 1:
            raise ArgumentError(
                "pass exactly one of images=..., pixel_values=... or image_features=..."
            )
        grid = None
        if image_features is not None:
            if not isinstance(image_features, Tensor) or image_features.ndim != 3:
                raise InputShapeError(
                    "image_features must be a tensor [batch, n_image_tokens, d_image]"
                )
            if image_features.shape[-1] != projection.d_image:
                check_projection_shapes(
                    projection.d_image,
                    projection.d_model,
                    d_image=int(image_features.shape[-1]),
                    d_model=int(self.cfg.d_model),
                    source="the projection",
                )
            batch_size, n_tokens = int(image_features.shape[0]), int(image_features.shape[1])
            if self.image_encoder is not None and n_tokens == self.image_encoder.n_tokens:
                grid = self.image_encoder.grid_size
        else:
            encoder = self.image_encoder
            if encoder is None:
                raise ModelSetupError(
                    "this model has no image encoder: pass image_features=... (encoder output) "
                    "or attach an encoder with attach_vision(encoder, projection)"
                )
            if images is not None:
                pixel_values = encoder.preprocess(images)
            assert pixel_values is not None
            if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4:
                raise InputShapeError(
                    "pixel_values must be a tensor [batch, channel, height, width]"
                )
            batch_size, n_tokens, grid = (
                int(pixel_values.shape[0]),
                encoder.n_tokens,
                encoder.grid_size,
            )
        batch = build_multimodal_input(
            self.tokenizer,
            n_image_tokens=n_tokens,
            batch_size=batch_size,
            prompts=prompts,
            captions=captions,
            prepend_bos=self.prepend_bos,
            bos_token_id=self.bos_token_id,
            append_eos=append_eos,
            padding_side=padding_side,
            n_ctx=int(self.cfg.n_ctx),
            default_prompt=self.prompt,
        )
        batch.pixel_values = pixel_values
        batch.image_features = image_features
        batch.grid_size = grid
        return batch.to(self.lm_device)

    # ----------------------------------------------------------------- core
    def embed_images(self, batch: MultimodalInput) -> Float[Tensor, "batch n_image_tokens d_model"]:
        """Encoder -> ``hook_image_features`` -> projection -> ``hook_image_embed``.

        Args:
            batch: A prepared input holding ``pixel_values`` or ``image_features``.

        Returns:
            The soft-prompt tokens, as edited by any hooks on the two hook points.
        """
        projection = self._projector()
        if batch.image_features is not None:
            features = batch.image_features
        elif batch.pixel_values is not None:
            if self.image_encoder is None:
                raise ModelSetupError("this model has no image encoder: pass image_features=...")
            features = self.encode_pixels(batch.pixel_values)
        else:
            raise ArgumentError("the input holds neither pixel_values nor image_features")
        features = features.to(self.lm_device)
        if _has_backward_hooks(self.hook_image_features) and torch.is_grad_enabled():
            # the frozen encoder's output has no gradient of its own: a backward hook there
            # (or run_with_cache(incl_bwd=True)) asks for one, so track it from here
            features = features.detach().requires_grad_(True)
        features = self.hook_image_features(features)
        embeds = self.hook_image_embed(projection(features))
        if embeds.shape[:2] != (len(batch), batch.n_image_tokens):
            raise InputShapeError(
                f"the encoder produced {embeds.shape[1]} tokens per image but the input has "
                f"{batch.n_image_tokens} image positions: preprocess images with the model's "
                "encoder (model.prepare_inputs) so that their size matches"
            )
        return embeds

    @contextlib.contextmanager
    def inject_images(
        self, image_embeds: Float[Tensor, "batch n_image_tokens d_model"], batch: MultimodalInput
    ) -> Iterator[None]:
        """Context manager: while active, ``hook_embed`` outputs carry ``image_embeds``.

        The embeddings are written into the input of the module at ``hook_embed`` (a forward
        pre-hook, registered first), so every hook on ``hook_embed`` sees (and can edit) the
        injected embeddings, and so does whatever replaced that hook point (SAELens puts an
        SAE there). Only calls whose ``[batch, pos]`` equals ``batch.tokens``'s are changed,
        so later KV-cache steps (one new position) pass through. While active,
        :attr:`injecting` is ``batch``.
        """
        point = self._embed_point()
        rows, cols = batch.image_mask.nonzero(as_tuple=True)
        flat = image_embeds.reshape(-1, image_embeds.shape[-1])

        def inject(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            if x.shape[:2] != batch.tokens.shape:
                return None
            return (x.index_put((rows, cols), flat.to(x.dtype)), *args[1:])

        handle = point.register_forward_pre_hook(inject, prepend=True)
        before, self.injecting = self.injecting, batch
        try:
            yield
        finally:
            handle.remove()
            self.injecting = before

    def _embed_point(self) -> torch.nn.Module:
        """The module at ``hook_embed``: TL's hook point, or what replaced it (an SAE)."""
        point = self.hook_dict.get(hook_names.EMBED)  # type: ignore[attr-defined]
        if point is None:
            point = getattr(self, hook_names.EMBED, None)
        if not isinstance(point, torch.nn.Module):
            raise ModelSetupError(
                f"{type(self).__name__} has no module at {hook_names.EMBED!r} to inject the "
                "image tokens into"
            )
        return point

    def lm_forward(self, tokens: Int[Tensor, "batch pos"], *args: Any, **kwargs: Any) -> Any:
        """The plain language-model forward of the TL class (no image handling)."""
        return super().forward(tokens, *args, **kwargs)  # type: ignore[misc]

    def lm_blocks(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> None:
        """The language model on token ids for what its hooks see: every block runs, the
        result is not returned (a full forward here; the TransformerLens classes skip the
        unembedding, ~20% of a small model's forward with a 50k vocabulary)."""
        self.lm_forward(tokens, **kwargs)

    def logits_at(
        self, batch: MultimodalInput, rows: Int[Tensor, " n"], positions: Int[Tensor, " n"]
    ) -> Float[Tensor, "n d_vocab"]:
        """Logits at ``(rows[i], positions[i])`` of the multimodal forward of ``batch`` (a full
        forward here; ``HookedMultimodalTransformer`` unembeds only those positions)."""
        return self(batch)[rows, positions]

    # KV-cache steps, implemented per TransformerLens API (used by captioning).
    def kv_first_step(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> tuple[Tensor, Any]:
        """First decoding step: logits (at least the last position) and the KV-cache state
        (``None`` when this backend's cache cannot be used)."""
        raise NotImplementedError

    def kv_next_step(
        self,
        tokens: Int[Tensor, "batch new"],
        attention_mask: Int[Tensor, "batch pos"],
        state: Any,
    ) -> tuple[Tensor, Any]:
        """A later decoding step on the new tokens; ``attention_mask`` covers every position."""
        raise NotImplementedError

    def forward(
        self,
        input: Any = None,
        *args: Any,
        images: ImageLike | Sequence[ImageLike] | None = None,
        pixel_values: Tensor | None = None,
        image_features: Tensor | None = None,
        prompts: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Forward pass; multimodal when given a :class:`MultimodalInput` or images.

        Args:
            input: A :class:`MultimodalInput`, or ordinary text/tokens (plain LM forward).
            *args: Passed to the TransformerLens forward (e.g. ``return_type``).
            images: Raw images (alternative to a prepared input).
            pixel_values: Preprocessed images.
            image_features: Precomputed encoder output.
            prompts: Prompt(s) used with ``images``/``pixel_values``/``image_features``.
            **kwargs: Passed to the TransformerLens forward.

        Returns:
            Whatever the TransformerLens forward returns (logits by default).
        """
        has_images = any(x is not None for x in (images, pixel_values, image_features))
        if isinstance(input, MultimodalInput):
            if has_images:
                raise ArgumentError("pass either a MultimodalInput or images=..., not both")
            batch = input
        elif has_images:
            if input is not None:
                raise ArgumentError(
                    "with images=..., pass the text as prompts=... (input must be None)"
                )
            batch = self.prepare_inputs(
                images, prompts=prompts, pixel_values=pixel_values, image_features=image_features
            )
        else:
            return super().forward(input, *args, **kwargs)  # type: ignore[misc]
        if "attention_mask" in kwargs:
            raise ArgumentError(
                "the attention mask comes from the MultimodalInput; do not pass one"
            )
        batch = batch.to(self.lm_device)
        self.last_input = batch
        image_embeds = self.embed_images(batch)
        with self.inject_images(image_embeds, batch):
            return self.lm_forward(
                batch.tokens, *args, attention_mask=batch.attention_mask, **kwargs
            )

    # ----------------------------------------------------------------- state dicts
    # One rule on both TL APIs: the state dict (and parameters()) hold the language model's
    # tensors and the projection's; the frozen encoder's only when asked for (encoder=True).

    def _lm_state_dict(self, keep_vars: bool) -> dict[str, Tensor]:
        """The language model's own state dict, as its TL class writes it."""
        raise NotImplementedError

    def _load_lm_state_dict(
        self, state: dict[str, Tensor], assign: bool
    ) -> tuple[list[str], list[str]]:
        """Load the language model's part; return ``(missing, unexpected)`` keys."""
        raise NotImplementedError

    def lm_state_dict(self, keep_vars: bool = False) -> dict[str, Tensor]:
        """The language model's state dict alone (loads into a plain TL model of this kind)."""
        return self._lm_state_dict(keep_vars)

    def state_dict(self, *args: Any, encoder: bool = False, **kwargs: Any) -> Any:
        """The language model's tensors and the projection's (``image_projection.*``); with
        ``encoder=True`` also the frozen encoder's (``image_encoder.*``).

        Inside a parent module (``destination``/``prefix`` given) the usual recursive
        ``nn.Module`` semantics apply.
        """
        if args or kwargs.get("destination") is not None or kwargs.get("prefix"):
            return super().state_dict(*args, **kwargs)  # type: ignore[misc]
        keep_vars = bool(kwargs.get("keep_vars", False))
        state = dict(self._lm_state_dict(keep_vars))
        for name in _VISION if encoder else _VISION[:1]:
            module = getattr(self, name)
            if module is not None:
                own = module.state_dict(keep_vars=keep_vars)
                state.update({f"{name}.{k}": v for k, v in own.items()})
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Load a state dict of :meth:`state_dict`'s layout: the language model's keys, the
        projection's (required when ``strict``) and the encoder's (optional)."""
        lm = {k: v for k, v in state_dict.items() if not k.startswith(_VISION_PREFIXES)}
        missing, unexpected = self._load_lm_state_dict(lm, assign)
        for name in _VISION:
            module = getattr(self, name)
            part = {
                k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(f"{name}.")
            }
            if module is None:
                unexpected += [f"{name}.{k}" for k in part]
            elif part:
                keys = module.load_state_dict(part, strict=False, assign=assign)
                missing += [f"{name}.{k}" for k in keys.missing_keys]
                unexpected += [f"{name}.{k}" for k in keys.unexpected_keys]
            elif name == "image_projection":  # the encoder is optional (frozen, from elsewhere)
                missing += [f"{name}.{k}" for k in module.state_dict()]
        if strict and (missing or unexpected):
            raise ModelSetupError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys "
                f"{missing}, unexpected keys {unexpected}. A plain language model's state dict "
                "has no image_projection.*: load it with strict=False, or save the whole "
                "model's with model.state_dict()."
            )
        return _IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- TL entry points
    def run_with_cache(self, input: Any = None, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens ``run_with_cache``; accepts ``images=...`` without a text input."""
        return super().run_with_cache(input, *args, **kwargs)  # type: ignore[misc]

    def run_with_hooks(self, input: Any = None, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens ``run_with_hooks``; accepts ``images=...`` without a text input."""
        return super().run_with_hooks(input, *args, **kwargs)  # type: ignore[misc]

    def to_str_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens's ``to_str_tokens``; a :class:`MultimodalInput` gets readable labels
        for its image positions (``<img r,c>``), e.g. for circuitsvis attention patterns: a
        list per item, or the one list of a single item."""
        if isinstance(input, MultimodalInput):
            labels = input.str_tokens(self.tokenizer)
            return labels[0] if len(labels) == 1 else labels
        return super().to_str_tokens(input, *args, **kwargs)  # type: ignore[misc]

    def generate(self, input: Any = None, max_new_tokens: int = 10, **kwargs: Any) -> Any:
        """TransformerLens's ``generate``; a :class:`MultimodalInput` (or ``images=...``)
        is captioned with :func:`~transformer_lens_mm.core.generation.generate_captions`.

        TL's keywords are honoured (``do_sample`` (TL's default: ``True``), ``temperature``,
        ``top_k``, ``top_p``, ``stop_at_eos``, ``eos_token_id``, ``use_past_kv_cache``,
        ``verbose``, ``return_type``: ``"input"``/``"tensor"`` give the prompt's tokens with
        the new ones appended, ``"str"`` the captions); the multimodal path refuses what it
        cannot do (``freq_penalty``, ``repetition_penalty``).
        """
        images = kwargs.pop("images", None)
        if not isinstance(input, MultimodalInput) and images is None:
            return super().generate(input, max_new_tokens, **kwargs)  # type: ignore[misc]
        from transformer_lens_mm.core.generation import generate_captions

        for name, neutral in (("freq_penalty", 0.0), ("repetition_penalty", 1.0)):
            if kwargs.pop(name, neutral) not in (neutral, None):
                raise ArgumentError(
                    f"{name} is not supported for image inputs: call generate_captions "
                    "(greedy or sampled) or generate on text"
                )
        return_type = kwargs.pop("return_type", "input")
        kwargs.pop("prepend_bos", None)
        kwargs.pop("padding_side", None)
        if "use_past_kv_cache" in kwargs:
            kwargs["use_kv_cache"] = kwargs.pop("use_past_kv_cache")
        kwargs.setdefault("do_sample", True)  # TL's default
        kwargs.setdefault("verbose", False)
        caps = generate_captions(
            self,  # type: ignore[arg-type]
            images,
            batch=input if isinstance(input, MultimodalInput) else None,
            max_new_tokens=max_new_tokens,
            **kwargs,
        )
        if return_type == "str":
            return caps.texts
        if return_type not in ("input", "tensor", "tokens"):
            raise ArgumentError(
                f"return_type must be 'input', 'tensor' or 'str', got {return_type!r}"
            )
        return torch.cat([caps.input.tokens, caps.tokens.to(caps.input.tokens.device)], 1)

    # ----------------------------------------------------------------- convenience
    def generate_captions(self, images: Any = None, **kwargs: Any) -> Any:
        """Caption images; see :func:`transformer_lens_mm.core.generation.generate_captions`."""
        from transformer_lens_mm.core.generation import generate_captions

        return generate_captions(self, images, **kwargs)  # type: ignore[arg-type]
