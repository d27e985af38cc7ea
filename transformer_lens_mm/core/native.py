"""``NativeVLMBridge``: a vision-language model that already has sight (LLaVA, Gemma 3,
Qwen2.5-VL), with the same model contract as the two LiMBeR classes.

TransformerLens bridges several Hugging Face vision-language models: hooks on the language
model, the vision tower and the projector. What it does not know is where the image tokens are.
This class records them: the model's own processor and chat template lay out each item (one
image placeholder, expanded by the processor into the model's image tokens), and the positions
holding the image token id become the :class:`~transformer_lens_mm.core.layout.MultimodalInput`'s
``image_mask``, so every tool of the package (attribution, decoding, lens, ablation, patching,
spatial maps, ``tlmm analyze``) runs on it unchanged.

The forward is the model's own computation, split at the two hook points the LiMBeR classes
have: the vision tower (with the model's feature layer and CLS rule) gives
``hook_image_features``, the model's projector gives ``hook_image_embed``, those embeddings are
written at the image-token positions of ``hook_embed`` (what Hugging Face's ``masked_scatter``
does), and the language model runs with the model's own rules for image tokens (Gemma 3: they
attend to each other both ways, through ``token_type_ids``; Qwen2.5-VL: 3-D M-RoPE positions
from the image grid, also in cached decoding). Where each hook point sits per architecture:
``docs/native_vlms.md``.

Example:
    >>> model = NativeVLMBridge.from_pretrained("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
    >>> batch = model.prepare_inputs(["cat.jpg"], prompts="Describe the image.")  # doctest: +SKIP
    >>> batch.image_positions.shape  # doctest: +SKIP
    torch.Size([1, 576])
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.encoders import ImageEncoder
from transformer_lens_mm.core.encoders.qwen_vision import QwenMerger, QwenVisionEncoder
from transformer_lens_mm.core.encoders.transformers_encoder import TransformersEncoder
from transformer_lens_mm.core.images import ImageLike, to_rgb_images
from transformer_lens_mm.core.layout import MultimodalInput, encode_text, pad_rows, per_item
from transformer_lens_mm.errors import ArgumentError, ConfigError, InputShapeError

__all__ = ["NATIVE_ARCHITECTURES", "NativeArchitecture", "NativeVLMBridge", "check_architecture"]

#: The default question asked about each image (a native VLM is a chat model).
DEFAULT_QUESTION = "What is in this picture? Answer in a few words."


@dataclass(frozen=True)
class NativeArchitecture:
    """How one Hugging Face VLM class places its image tokens."""

    family: str  # "llava" | "gemma3" | "qwen2_5_vl"
    image_token: str  # config attribute holding the image token id
    token_type_ids: bool = False  # the LM reads token_type_ids (two-way attention on images)
    mrope: bool = False  # the LM's positions are 3-D (M-RoPE), computed from the image grid


#: The Hugging Face classes this class runs, by name.
NATIVE_ARCHITECTURES: dict[str, NativeArchitecture] = {
    "LlavaForConditionalGeneration": NativeArchitecture("llava", "image_token_index"),
    "Gemma3ForConditionalGeneration": NativeArchitecture(
        "gemma3", "image_token_id", token_type_ids=True
    ),
    "Qwen2_5_VLForConditionalGeneration": NativeArchitecture(
        "qwen2_5_vl", "image_token_id", mrope=True
    ),
}

#: Bridged by TransformerLens but not (yet) here, and why.
_NOT_YET = {
    "LlavaNextForConditionalGeneration": "it tiles each image into a varying number of tokens",
    "LlavaOnevisionForConditionalGeneration": "it tiles each image into a varying number of tokens",
    "Qwen3VLForConditionalGeneration": "its vision tower also writes (DeepStack) features into "
    "several language-model layers, which the two image hook points do not cover",
}


def check_architecture(config: Any, where: str) -> str:
    """The name of the supported Hugging Face class ``config`` describes.

    Raises:
        ConfigError: not a vision-language model, or an architecture not run here (the
            message names it, why, and what is supported).
    """
    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        if name in NATIVE_ARCHITECTURES:
            return name
    supported = sorted(NATIVE_ARCHITECTURES)
    for name in names:
        if name in _NOT_YET:
            raise ConfigError(
                f"{where} is a {name}, which transformer_lens_mm does not run yet: "
                f"{_NOT_YET[name]}. Supported native VLMs: {supported}"
            )
    if getattr(config, "vision_config", None) is None:
        raise ConfigError(
            f"{where} ({', '.join(names) or type(config).__name__}) is not a vision-language "
            "model (its config has no vision_config): give a text-only LM sight with "
            "from_parts(lm=..., encoder=..., projection=...) instead"
        )
    raise ConfigError(
        f"{where} is a {', '.join(names) or type(config).__name__}, a vision-language "
        f"architecture transformer_lens_mm does not run; supported: {supported}"
    )


def _architecture(config: Any, where: str) -> NativeArchitecture:
    return NATIVE_ARCHITECTURES[check_architecture(config, where)]


def _vision_module(hf: Any) -> torch.nn.Module:
    """The vision tower of a Hugging Face VLM (``vision_tower``; Qwen2.5-VL: ``visual``)."""
    inner = hf.model
    return inner.visual if hasattr(inner, "visual") else inner.vision_tower


def _vision_output(module: torch.nn.Module, probe: Any, device: torch.device) -> Tensor:
    """What a vision tower makes of one processed probe image (its last hidden state)."""
    pixels = probe["pixel_values"].to(device)
    if "image_grid_thw" in probe:
        out = module(pixels, grid_thw=probe["image_grid_thw"].to(device))
    else:
        out = module(pixel_values=pixels)
    return out.last_hidden_state


@dataclass
class _RopeState:
    """A KV cache with each row's M-RoPE offset (next position = token count + ``delta``)."""

    past: Any
    delta: Tensor


class NativeVLMBridge(MultimodalTransformerBridge):
    """A TransformerLens ``TransformerBridge`` over a native vision-language model.

    Build it with :meth:`from_pretrained`. The encoder (:attr:`image_encoder`, a
    :class:`~transformer_lens_mm.core.encoders.TransformersEncoder` on the model's vision tower)
    and the projector (:attr:`projector`, the model's own module) are part of the Hugging Face
    model; :attr:`image_projection` is ``None`` (there is no LiMBeR projection to
    train or save).

    Attributes:
        processor: The model's Hugging Face processor (image processor, tokenizer, chat
            template).
        architecture: How this model class places its image tokens.
        image_token_id: The id that marks image positions in ``input_ids``.
        use_chat_template: Lay each prompt out with the processor's chat template (user turn
            with the image, then the generation prompt); otherwise ``<image>`` + prompt.
    """

    processor: Any
    architecture: NativeArchitecture
    image_token_id: int
    use_chat_template: bool
    projector: torch.nn.Module

    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        prompt: str | None = None,
        chat_template: bool = True,
        image_size: int = 448,
        hf_model: Any = None,
    ) -> NativeVLMBridge:
        """Load a native VLM and its processor by hub name or local folder.

        Args:
            name_or_folder: e.g. ``"llava-hf/llava-1.5-7b-hf"``, ``"google/gemma-3-4b-it"``, or a
                folder written by ``save_pretrained`` (model and processor).
            device: Where to put the model.
            dtype: Weight dtype (``torch.float16`` for a 7B model on one GPU).
            prompt: The default question (:data:`DEFAULT_QUESTION` when ``None``).
            chat_template: Use the processor's chat template where it has one.
            image_size: Qwen2.5-VL only: every image is resized to ``image_size`` square
                (a multiple of 28; 448 px -> 16 x 16 = 256 image tokens), so that all items of a
                batch have the same number of image tokens. Ignored by fixed-size models.
            hf_model: The Hugging Face model already built (e.g. random weights of a real
                shape, for sizing); then only the config and the processor are read from
                ``name_or_folder``.

        Raises:
            ConfigError: not a vision-language model, or an architecture not supported here.

        Example:
            >>> model = NativeVLMBridge.from_pretrained("tiny-llava")  # doctest: +SKIP
            >>> model.lm_name  # doctest: +SKIP
            'tiny-llava'
        """
        from transformers import AutoConfig, AutoProcessor

        where = str(name_or_folder)
        _architecture(AutoConfig.from_pretrained(where), where)  # refuse before loading weights
        try:
            processor = AutoProcessor.from_pretrained(where)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(
                f"{where} has no processor that can be loaded ({err}); save the model's processor "
                "next to it (processor.save_pretrained(folder))"
            ) from err
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ConfigError(
                f"{where}'s processor ({type(processor).__name__}) has no image processor and "
                "tokenizer: save the model's multimodal processor (e.g. LlavaProcessor) with it"
            )
        from transformers import AutoModelForImageTextToText

        from transformer_lens_mm.core.lm_loading import load_bridge

        if hf_model is None:
            hf = AutoModelForImageTextToText.from_pretrained(
                where, dtype=dtype, attn_implementation="eager"
            ).eval()
        else:
            hf = hf_model.eval()
        # TransformerLens rewrites the vision tower's modules in place when it boots; a copy
        # made before is the reference the bridged tower is checked against (and used instead
        # where they differ: seen with TL 3.9's SigLIP attention, see _vision_tower)
        pristine = copy.deepcopy(_vision_module(hf))
        bridge = load_bridge(
            where, device=device, dtype=dtype, hf_model=hf, tokenizer=processor.tokenizer
        )
        model = cls.from_bridge(bridge, fused=False)
        model._attach_native(processor, where, prompt, chat_template, image_size, pristine)
        return model

    # ----------------------------------------------------------------- set-up
    def _attach_native(
        self,
        processor: Any,
        where: str,
        prompt: str | None,
        chat_template: bool,
        image_size: int = 448,
        pristine: torch.nn.Module | None = None,
    ) -> None:
        hf = self.original_model
        config = hf.config
        self.architecture = _architecture(config, where)
        self.processor = processor
        self.image_token_id = int(getattr(config, self.architecture.image_token))
        self.use_chat_template = bool(chat_template and getattr(processor, "chat_template", None))
        self.prompt = DEFAULT_QUESTION if prompt is None else prompt
        self.lm_name = os.path.basename(where.rstrip("/")) or where
        inner = hf.model
        self._layouts: dict[str, list[int]] = {}  # laid-out text -> its ids (_prompt_ids)
        self._rope_delta: Tensor | None = None  # M-RoPE offsets of the latest prefill
        self._step_delta: Tensor | None = None  # ... of the cached decoding step running
        tower = self._vision_tower(processor, pristine, image_size)
        encoder: ImageEncoder
        if self.architecture.family == "qwen2_5_vl":
            encoder = QwenVisionEncoder(
                tower,
                config.vision_config,
                processor.image_processor,
                image_size,
                f"{where}:vision",
            )
            projector: torch.nn.Module = QwenMerger(inner.visual.merger, encoder.merge**2)
        else:
            projector = inner.multi_modal_projector
            encoder = self._tower(tower, processor, where)
        # a plain attribute, not a second registration of a module the Hugging Face model
        # already holds (the bridge would list its hook points twice, as projector.*)
        object.__setattr__(self, "projector", projector)
        self.image_encoder = encoder
        self._finish_layout(encoder)

    def _vision_tower(
        self, processor: Any, pristine: torch.nn.Module | None, size: int
    ) -> torch.nn.Module:
        """The bridged vision tower, or ``pristine`` (the Hugging Face module as loaded) where
        the bridged one computes something else on a probe image (a TransformerLens bug; a
        warning names it, and TL's ``vision_encoder.*`` hooks then do not fire in this path)."""
        bridged = _vision_module(self.original_model)
        if pristine is None:
            return bridged
        pristine = pristine.to(self.lm_device)
        rng = torch.Generator().manual_seed(0)
        noise = (torch.rand(size, size, 3, generator=rng) * 255).to(torch.uint8).numpy()
        probe = processor.image_processor(images=[Image.fromarray(noise)], return_tensors="pt")
        with torch.no_grad():
            a = _vision_output(bridged, probe, self.lm_device)
            b = _vision_output(pristine, probe, self.lm_device)
        gap = float((a - b).abs().max())
        if gap <= 1e-4 * max(1.0, float(b.abs().max())):
            return bridged
        from importlib.metadata import version as installed

        version = installed("transformer-lens")
        warnings.warn(
            f"TransformerLens {version}'s bridge of {type(pristine).__name__} differs from "
            f"Hugging Face's by {gap:.3g} on a probe image; the image features are computed by "
            "Hugging Face's own module instead (exact; TL's vision_encoder.* hooks do not fire "
            "in this path)",
            RuntimeWarning,
            stacklevel=3,
        )
        return pristine

    def _tower(self, tower: torch.nn.Module, processor: Any, where: str) -> TransformersEncoder:
        """The vision tower of a LLaVA or Gemma 3 model, read where the model reads it."""
        config = self.original_model.config
        layer = None
        if self.architecture.family == "llava":
            layer = config.vision_feature_layer
            if not isinstance(layer, int):
                raise ConfigError(
                    f"{where} reads several vision layers ({layer}); one vision_feature_layer "
                    "is supported"
                )
            if config.vision_feature_select_strategy != "default":
                raise ConfigError(
                    f"{where} keeps the CLS token (vision_feature_select_strategy="
                    f"{config.vision_feature_select_strategy!r}); only 'default' is supported"
                )
        return TransformersEncoder(
            tower, processor.image_processor, layer=layer, name=f"{where}:vision"
        )

    def _finish_layout(self, encoder: ImageEncoder) -> None:
        """Image tokens per image and their grid, probed once with a blank image."""
        with torch.no_grad():
            size = encoder.data_config["input_size"]
            probe = self.projector(encoder(torch.zeros(1, *size, device=self.lm_device)))
        self._n_image_tokens = int(probe.shape[1])
        side = math.isqrt(self._n_image_tokens)
        self.image_grid = (
            tuple(encoder.grid_size)
            if math.prod(encoder.grid_size) == self._n_image_tokens
            else (side, self._n_image_tokens // side)
            if side * side == self._n_image_tokens
            else (1, self._n_image_tokens)
        )
        side = encoder.data_config.get("size")
        self._blank = (
            Image.new("RGB", (int(side), int(side)))
            if side is not None
            else Image.new("RGB", (int(size[2]), int(size[1])))
        )

    @property
    def n_image_tokens(self) -> int:
        """Image positions per image in the language model (the projector's output tokens)."""
        return self._n_image_tokens

    # ----------------------------------------------------------------- inputs
    @property
    def image_placeholder(self) -> str:
        """The text that stands for one image before the processor expands it (LLaVA:
        ``<image>``; Gemma 3: ``<start_of_image>``)."""
        return getattr(self.processor, "boi_token", None) or (
            getattr(self.processor, "image_token", None) or "<image>"
        )

    def _text(self, prompt: str) -> str:
        """One item's text with exactly one image placeholder, before the processor expands it."""
        placeholder = self.image_placeholder
        image_token = getattr(self.processor, "image_token", None) or placeholder
        if self.architecture.family == "qwen2_5_vl":  # the vision_start/end pair goes around it
            placeholder = f"<|vision_start|>{image_token}<|vision_end|>"
        if placeholder in prompt or image_token in prompt:
            raise ArgumentError(
                f"the prompt {prompt!r} already holds the image placeholder {placeholder!r}; "
                "pass only the question: the model's chat template places the image"
            )
        if self.use_chat_template:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            ]
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        return f"{placeholder}\n{prompt}"

    def _prompt_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each item's laid-out prompt, the image placeholder expanded by the
        processor (with a blank image: the expansion depends on the size only, which is fixed),
        once per distinct text."""
        texts = [self._text(p) for p in prompts]
        todo = sorted(set(texts) - self._layouts.keys())
        if todo:
            try:
                out = self.processor(
                    text=todo,
                    images=[[self._blank] for _ in todo],
                    return_tensors="pt",
                    padding=True,
                )
            except (ValueError, TypeError) as err:
                raise ArgumentError(
                    f"{type(self.processor).__name__} rejected the prompts {prompts!r}: {err}"
                ) from err
            for text, row, m in zip(todo, out["input_ids"], out["attention_mask"]):
                self._layouts[text] = row[m.bool()].tolist()
        return [list(self._layouts[t]) for t in texts]

    def prepare_inputs(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        prompts: str | Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        pixel_values: Float[Tensor, "batch ..."] | None = None,
        image_features: Float[Tensor, "batch n_features d_image"] | None = None,
        padding_side: Literal["left", "right"] = "right",
        append_eos: bool = False,
    ) -> MultimodalInput:
        """Preprocess images with the model's processor and lay out each item with its chat
        template: ``[template head][image tokens][question][generation prompt][caption?]``.

        Give exactly one of ``images``, ``pixel_values`` (the processor's output) or
        ``image_features`` (the vision tower's, as :meth:`encode_pixels` returns them).

        Args:
            images: One image or a batch (PIL, paths, uint8 arrays, float tensors in [0, 1]).
            prompts: One question for all images, one per image, or ``None`` for
                :attr:`prompt`. Without the image placeholder (the template places it).
            captions: Text appended after the generation prompt (the answer), marked in
                ``target_mask``.
            pixel_values: Preprocessed images ``[batch, 3, H, W]``.
            image_features: Vision-tower output ``[batch, n_features, d_image]``.
            padding_side: ``"right"`` or ``"left"`` (generation).
            append_eos: Append EOS after each caption.

        Returns:
            A :class:`MultimodalInput` whose ``image_mask`` marks the image-token positions.

        Raises:
            ValueError: the processor rejects an image or prompt, a prompt already holds the
                image placeholder, or an item does not fit the context.
        """
        encoder = self.image_encoder
        assert encoder is not None
        given = [x is not None for x in (images, pixel_values, image_features)]
        if sum(given) != 1:
            raise ArgumentError(
                "pass exactly one of images=..., pixel_values=... or image_features=..."
            )
        if images is not None:
            pil = to_rgb_images(images)
            try:
                pixel_values = encoder.preprocess(pil)
            except (ValueError, TypeError) as err:
                raise ArgumentError(
                    f"{type(self.processor.image_processor).__name__} of {self.lm_name} rejected "
                    f"the images: {err}"
                ) from err
        if pixel_values is not None:
            expected = tuple(encoder.data_config["input_size"])
            if not isinstance(pixel_values, Tensor) or tuple(pixel_values.shape[1:]) != expected:
                got = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else None
                raise InputShapeError(
                    f"pixel_values must be [batch, {', '.join(map(str, expected))}] as "
                    f"{self.lm_name}'s image processor makes them, got {got}: pass raw images "
                    "as images=..."
                )
            n = int(pixel_values.shape[0])
        else:
            if not isinstance(image_features, Tensor) or image_features.ndim != 3:
                raise InputShapeError(
                    "image_features must be a tensor [batch, n_features, d_image]"
                )
            n = int(image_features.shape[0])
        if n == 0:
            raise ArgumentError("the batch of images is empty: pass at least one image")
        prompt_list = per_item(prompts, self.prompt, n, "prompts")
        caption_list = None if captions is None else per_item(captions, "", n, "captions")
        tok = self.tokenizer
        heads = self._prompt_ids(prompt_list)
        eos = [tok.eos_token_id] if append_eos else []
        tails = [encode_text(tok, c) + eos for c in caption_list] if caption_list else [[]] * n
        rows = [h + t for h, t in zip(heads, tails)]
        n_ctx = int(self.cfg.n_ctx)
        for i, row in enumerate(rows):
            if len(row) > n_ctx:
                raise ArgumentError(
                    f"item {i} needs {len(row)} positions ({self.n_image_tokens} image tokens) "
                    f"but {self.lm_name}'s context is {n_ctx}: shorten the prompt or caption"
                )
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        tokens, attention, image_mask, target = pad_rows(
            rows,
            [[t == self.image_token_id for t in row] for row in rows],
            [[False] * len(h) + [True] * len(t) for h, t in zip(heads, tails)],
            filler=int(pad),
            padding_side=padding_side,
        )
        counts = image_mask.sum(-1)
        if bool((counts != self.n_image_tokens).any()):
            raise ArgumentError(
                f"the processor laid out {counts.tolist()} image tokens per item but "
                f"{self.lm_name} makes {self.n_image_tokens} per image: check the processor's "
                "image settings (one image per item)"
            )
        return MultimodalInput(
            tokens=tokens,
            attention_mask=attention,
            image_mask=image_mask,
            prompts=prompt_list,
            captions=caption_list,
            target_mask=target if caption_list is not None else None,
            pixel_values=pixel_values,
            image_features=image_features,
            grid_size=self.image_grid,
            padding_side=padding_side,
        ).to(self.lm_device)

    # ----------------------------------------------------------------- core
    def _projector(self) -> torch.nn.Module:
        """The model's own projector (``embed_images`` is the mixin's: vision tower ->
        ``hook_image_features`` -> this -> ``hook_image_embed``)."""
        return self.projector

    def lm_forward(self, tokens: Int[Tensor, "batch pos"], *args: Any, **kwargs: Any) -> Any:
        """The language model on token ids; while images are injected into a batch of this
        shape, with the model's own attention rule for them (Gemma 3: ``token_type_ids``)."""
        batch = self.injecting
        prefill = batch is not None and tokens.shape == batch.tokens.shape
        if self.architecture.token_type_ids and prefill and "token_type_ids" not in kwargs:
            kwargs["token_type_ids"] = batch.image_mask.long().to(tokens.device)
        given = kwargs.get("position_ids")
        if self.architecture.mrope and prefill and (given is None or given.ndim == 2):
            # 1-D positions (none, or the bridge's cached first step) -> the model's 3-D ones
            kwargs["position_ids"], self._rope_delta = self.rope_positions(batch)
        elif self.architecture.mrope and self._step_delta is not None:
            step = kwargs["position_ids"] + self._step_delta.to(tokens.device)
            kwargs["position_ids"] = step[None].expand(3, -1, -1)
        return super().lm_forward(tokens, *args, **kwargs)

    def rope_positions(
        self, batch: MultimodalInput
    ) -> tuple[Int[Tensor, "3 batch pos"], Int[Tensor, "batch 1"]]:
        """Qwen2.5-VL's 3-D positions of a batch (temporal, row, column of each image token;
        text tokens count on from the image's largest), by the model's own ``get_rope_index``,
        and each row's offset for later decoding steps."""
        grid = self.image_encoder.grid_thw(len(batch), batch.tokens.device)  # type: ignore[union-attr]
        return self.original_model.model.get_rope_index(
            batch.tokens,
            mm_token_type_ids=batch.image_mask.int(),
            image_grid_thw=grid,
            attention_mask=batch.attention_mask,
        )

    def kv_first_step(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> tuple[Tensor, Any]:
        """As the bridge's; for M-RoPE models the state also keeps each row's offset."""
        logits, past = super().kv_first_step(tokens, attention_mask)
        if not self.architecture.mrope or past is None:
            return logits, past
        assert self._rope_delta is not None, "the prompt step ran without the image batch"
        return logits, _RopeState(past, self._rope_delta)

    def kv_next_step(
        self,
        tokens: Int[Tensor, "batch new"],
        attention_mask: Int[Tensor, "batch pos"],
        state: Any,
    ) -> tuple[Tensor, Any]:
        """As the bridge's; M-RoPE positions continue from each row's offset."""
        if not isinstance(state, _RopeState):
            return super().kv_next_step(tokens, attention_mask, state)
        self._step_delta = state.delta
        try:
            logits, past = super().kv_next_step(tokens, attention_mask, state.past)
        finally:
            self._step_delta = None
        return logits, _RopeState(past, state.delta)

    def hf_inputs(self, batch: MultimodalInput) -> dict[str, Tensor]:
        """The same batch as the Hugging Face model's own keyword arguments (``input_ids``,
        ``attention_mask``, ``pixel_values``, and ``token_type_ids`` where the model reads
        them), e.g. to compare with ``model.original_model(**model.hf_inputs(batch))``."""
        if batch.pixel_values is None:
            raise ArgumentError("hf_inputs needs a batch with pixel_values")
        out = {
            "input_ids": batch.tokens,
            "attention_mask": batch.attention_mask,
            "pixel_values": batch.pixel_values,
        }
        if self.architecture.token_type_ids:
            out["token_type_ids"] = batch.image_mask.long()
        if self.architecture.mrope:
            out["pixel_values"] = batch.pixel_values.reshape(-1, batch.pixel_values.shape[-1])
            out["image_grid_thw"] = self.image_encoder.grid_thw(len(batch))  # type: ignore[union-attr]
            out["mm_token_type_ids"] = batch.image_mask.int()
        return out
