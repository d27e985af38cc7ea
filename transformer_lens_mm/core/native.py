"""``NativeVLMBridge``: a vision-language model that already has sight (LLaVA, Gemma 3), with
the same model contract as the two LiMBeR classes.

TransformerLens bridges several Hugging Face vision-language models
(``LlavaForConditionalGeneration``, ``Gemma3ForConditionalGeneration``, ...): hooks on the
language model, the vision tower and the projector. What it does not know is where the image
tokens are. This class records them: the model's own processor and chat template lay out each
item (one image placeholder, expanded by the processor into the model's image tokens), and the
positions holding the image token id become the :class:`~transformer_lens_mm.core.layout.
MultimodalInput`'s ``image_mask``, so every tool of the package (attribution, decoding, lens,
ablation, patching, spatial maps, ``tlmm analyze``) runs on it unchanged.

The forward is the model's own computation, split at the two hook points the LiMBeR classes
have: the vision tower (with the model's feature layer and CLS rule) gives
``hook_image_features``, the model's projector gives ``hook_image_embed``, and those embeddings
are written at the image-token positions of ``hook_embed`` (what Hugging Face's
``masked_scatter`` does), then the language model runs with the model's own attention rules
(Gemma 3: image tokens attend to each other both ways, through ``token_type_ids``).

=====================  ===============================================  ==========================
this package           LLaVA (``LlavaForConditionalGeneration``)        Gemma 3 (``Gemma3For...``)
=====================  ===============================================  ==========================
hook_image_features    ``vision_tower`` hidden state at                 ``vision_tower`` last
                       ``vision_feature_layer``, CLS dropped             hidden state (all patches)
                       (``"default"``)
hook_image_embed       ``multi_modal_projector`` output                 ``multi_modal_projector``
                                                                        output (pooled tokens)
image positions        ``input_ids == image_token_index``               ``== image_token_id``
=====================  ===============================================  ==========================

Example:
    >>> model = NativeVLMBridge.from_pretrained("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
    >>> batch = model.prepare_inputs(["cat.jpg"], prompts="Describe the image.")  # doctest: +SKIP
    >>> batch.image_positions.shape  # doctest: +SKIP
    torch.Size([1, 576])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.errors import ConfigError
from transformer_lens_mm.core.hf_encoders import TransformersEncoder
from transformer_lens_mm.core.images import ImageLike, to_rgb_images
from transformer_lens_mm.core.layout import MultimodalInput

__all__ = ["NATIVE_ARCHITECTURES", "NativeArchitecture", "NativeVLMBridge", "check_architecture"]

#: The default question asked about each image (a native VLM is a chat model).
DEFAULT_QUESTION = "What is in this picture? Answer in a few words."


@dataclass(frozen=True)
class NativeArchitecture:
    """How one Hugging Face VLM class places its image tokens."""

    family: str  # "llava" | "gemma3"
    image_token: str  # config attribute holding the image token id
    token_type_ids: bool  # the LM reads token_type_ids (bidirectional attention on images)


#: The Hugging Face classes this class runs, by name.
NATIVE_ARCHITECTURES: dict[str, NativeArchitecture] = {
    "LlavaForConditionalGeneration": NativeArchitecture("llava", "image_token_index", False),
    "Gemma3ForConditionalGeneration": NativeArchitecture("gemma3", "image_token_id", True),
}

#: Bridged by TransformerLens but not (yet) here, and why.
_NOT_YET = {
    "LlavaNextForConditionalGeneration": "it tiles each image into a varying number of tokens",
    "LlavaOnevisionForConditionalGeneration": "it tiles each image into a varying number of tokens",
    "Qwen2_5_VLForConditionalGeneration": "its image token count varies with the resolution and "
    "its LM uses 3-D (M-RoPE) positions computed from the image grid",
    "Qwen3VLForConditionalGeneration": "its image token count varies with the resolution and "
    "its LM uses 3-D (M-RoPE) positions computed from the image grid",
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


class NativeVLMBridge(MultimodalTransformerBridge):
    """A TransformerLens ``TransformerBridge`` over a native vision-language model.

    Build it with :meth:`from_pretrained`. The encoder (:attr:`image_encoder`, a
    :class:`~transformer_lens_mm.core.hf_encoders.TransformersEncoder` on the model's vision
    tower) and the projector (:attr:`projector`, the model's own module) are part of the
    Hugging Face model; :attr:`image_projection` is ``None`` (there is no LiMBeR projection to
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
    ) -> NativeVLMBridge:
        """Load a native VLM and its processor by hub name or local folder.

        Args:
            name_or_folder: e.g. ``"llava-hf/llava-1.5-7b-hf"``, ``"google/gemma-3-4b-it"``, or a
                folder written by ``save_pretrained`` (model and processor).
            device: Where to put the model.
            dtype: Weight dtype (``torch.float16`` for a 7B model on one GPU).
            prompt: The default question (:data:`DEFAULT_QUESTION` when ``None``).
            chat_template: Use the processor's chat template where it has one.

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

        hf = AutoModelForImageTextToText.from_pretrained(
            where, dtype=dtype, attn_implementation="eager"
        ).eval()
        bridge = load_bridge(
            where, device=device, dtype=dtype, hf_model=hf, tokenizer=processor.tokenizer
        )
        model = cls.from_bridge(bridge, fused=False)
        model._attach_native(processor, where, prompt, chat_template)
        return model

    # ----------------------------------------------------------------- set-up
    def _attach_native(
        self, processor: Any, where: str, prompt: str | None, chat_template: bool
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
        self.projector = inner.multi_modal_projector
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
        encoder = TransformersEncoder(
            inner.vision_tower, processor.image_processor, layer=layer, name=f"{where}:vision"
        )
        self.image_encoder = encoder
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
        self._blank = Image.new("RGB", (int(size[2]), int(size[1])))

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
        if placeholder in prompt or image_token in prompt:
            raise ValueError(
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
        """Token ids of each item's laid-out prompt, the image placeholder expanded."""
        texts = [self._text(p) for p in prompts]
        try:
            out = self.processor(
                text=texts, images=[[self._blank] for _ in texts], return_tensors="pt", padding=True
            )
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{type(self.processor).__name__} rejected the prompts {prompts!r}: {err}"
            ) from err
        ids, mask = out["input_ids"], out["attention_mask"]
        return [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def prepare_inputs(
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        *,
        prompts: str | Sequence[str] | None = None,
        captions: Sequence[str] | None = None,
        pixel_values: Float[Tensor, "batch channel height width"] | None = None,
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
            raise ValueError(
                "pass exactly one of images=..., pixel_values=... or image_features=..."
            )
        if images is not None:
            pil = to_rgb_images(images)
            try:
                pixel_values = encoder.preprocess(pil)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{type(self.processor.image_processor).__name__} of {self.lm_name} rejected "
                    f"the images: {err}"
                ) from err
        if pixel_values is not None:
            expected = tuple(encoder.data_config["input_size"])
            if not isinstance(pixel_values, Tensor) or tuple(pixel_values.shape[1:]) != expected:
                got = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else None
                raise ValueError(
                    f"pixel_values must be [batch, {', '.join(map(str, expected))}] as "
                    f"{self.lm_name}'s image processor makes them, got {got}: pass raw images "
                    "as images=..."
                )
            n = int(pixel_values.shape[0])
        else:
            if not isinstance(image_features, Tensor) or image_features.ndim != 3:
                raise ValueError("image_features must be a tensor [batch, n_features, d_image]")
            n = int(image_features.shape[0])
        if n == 0:
            raise ValueError("the batch of images is empty: pass at least one image")
        prompt_list = [prompts] * n if isinstance(prompts, str) else prompts
        prompt_list = [self.prompt] * n if prompt_list is None else list(prompt_list)
        if len(prompt_list) != n:
            raise ValueError(f"got {len(prompt_list)} prompts for {n} images: one, or one each")
        tok = self.tokenizer
        heads = self._prompt_ids(prompt_list)
        tails: list[list[int]] = [[] for _ in range(n)]
        if captions is not None:
            if len(captions) != n:
                raise ValueError(f"got {len(captions)} captions for {n} images: one per image")
            eos = [tok.eos_token_id] if append_eos else []
            tails = [list(tok(c, add_special_tokens=False)["input_ids"]) + eos for c in captions]
        rows = [h + t for h, t in zip(heads, tails)]
        n_ctx = int(self.cfg.n_ctx)
        for i, row in enumerate(rows):
            if len(row) > n_ctx:
                raise ValueError(
                    f"item {i} needs {len(row)} positions ({self.n_image_tokens} image tokens) "
                    f"but {self.lm_name}'s context is {n_ctx}: shorten the prompt or caption"
                )
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        tokens = torch.full((n, width), int(pad), dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        target = torch.zeros((n, width), dtype=torch.bool)
        for i, (head, row) in enumerate(zip(heads, rows)):
            start = 0 if padding_side == "right" else width - len(row)
            tokens[i, start : start + len(row)] = torch.tensor(row)
            attention[i, start : start + len(row)] = 1
            target[i, start + len(head) : start + len(row)] = True
        image_mask = (tokens == self.image_token_id) & attention.bool()
        counts = image_mask.sum(-1)
        if bool((counts != self.n_image_tokens).any()):
            raise ValueError(
                f"the processor laid out {counts.tolist()} image tokens per item but "
                f"{self.lm_name} makes {self.n_image_tokens} per image: check the processor's "
                "image settings (one image per item)"
            )
        return MultimodalInput(
            tokens=tokens,
            attention_mask=attention,
            image_mask=image_mask,
            prompts=prompt_list,
            captions=None if captions is None else list(captions),
            target_mask=target if captions is not None else None,
            pixel_values=pixel_values,
            image_features=image_features,
            grid_size=self.image_grid,
            padding_side=padding_side,
        ).to(self.lm_device)

    # ----------------------------------------------------------------- core
    def embed_images(self, batch: MultimodalInput) -> Float[Tensor, "batch n_image_tokens d_model"]:
        """Vision tower -> ``hook_image_features`` -> the model's projector -> ``hook_image_embed``.

        Args:
            batch: A prepared input holding ``pixel_values`` or ``image_features``.

        Returns:
            The image tokens as the language model reads them.
        """
        if batch.image_features is not None:
            features = batch.image_features.to(self.lm_device)
        elif batch.pixel_values is not None:
            features = self.encode_pixels(batch.pixel_values).to(self.lm_device)
        else:
            raise ValueError("the input holds neither pixel_values nor image_features")
        if self.hook_image_features._backward_hooks and torch.is_grad_enabled():
            features = features.detach().requires_grad_(True)
        features = self.hook_image_features(features)
        embeds = self.hook_image_embed(self.projector(features))
        if embeds.shape[:2] != (len(batch), batch.n_image_tokens):
            raise ValueError(
                f"the projector made {embeds.shape[1]} tokens per image but the input has "
                f"{batch.n_image_tokens} image positions: prepare inputs with model.prepare_inputs"
            )
        return embeds

    def lm_forward(self, tokens: Int[Tensor, "batch pos"], *args: Any, **kwargs: Any) -> Any:
        """The language model on token ids; while images are injected into a batch of this
        shape, with the model's own attention rule for them (Gemma 3: ``token_type_ids``)."""
        batch = self.injecting
        if (
            self.architecture.token_type_ids
            and batch is not None
            and tokens.shape == batch.tokens.shape
            and "token_type_ids" not in kwargs
        ):
            kwargs["token_type_ids"] = batch.image_mask.long().to(tokens.device)
        return super().lm_forward(tokens, *args, **kwargs)

    def hf_inputs(self, batch: MultimodalInput) -> dict[str, Tensor]:
        """The same batch as the Hugging Face model's own keyword arguments (``input_ids``,
        ``attention_mask``, ``pixel_values``, and ``token_type_ids`` where the model reads
        them), e.g. to compare with ``model.original_model(**model.hf_inputs(batch))``."""
        if batch.pixel_values is None:
            raise ValueError("hf_inputs needs a batch with pixel_values")
        out = {
            "input_ids": batch.tokens,
            "attention_mask": batch.attention_mask,
            "pixel_values": batch.pixel_values,
        }
        if self.architecture.token_type_ids:
            out["token_type_ids"] = batch.image_mask.long()
        return out
