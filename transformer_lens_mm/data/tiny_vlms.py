"""Tiny random vision-language models, saved with their processors: the native-VLM API
offline, with no download (tests, examples, trying a script before a GPU run).

:func:`build_tiny_vlm` writes a folder that ``NativeVLMBridge.from_pretrained`` loads exactly as
it loads ``llava-hf/llava-1.5-7b-hf``: a ``LlavaForConditionalGeneration``,
``Gemma3ForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration`` of d_model 32 and
2 layers, random weights, a word-level tokenizer of ~30 words, the model's own processor and a
chat template. Nothing it says about images is meaningful; everything about shapes and
bookkeeping is as on the real models.

Example:
    >>> folder = build_tiny_vlm("runs/tiny-llava", "llava")  # doctest: +SKIP
    >>> NativeVLMBridge.from_pretrained(folder).n_image_tokens  # doctest: +SKIP
    16
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from transformer_lens_mm.errors import ArgumentError

__all__ = ["TINY_KINDS", "WORDS", "build_tiny_vlm", "word_tokenizer"]

#: The architectures :func:`build_tiny_vlm` builds.
TINY_KINDS = ("llava", "gemma3", "qwen2_5_vl")

#: The tokenizer's vocabulary (before the chat and image tokens are added).
WORDS = [
    "<|endoftext|>",
    "<pad>",
    "<unk>",
    "a",
    "A",
    "picture",
    "photo",
    "of",
    "red",
    "blue",
    "green",
    "yellow",
    "circle",
    "square",
    "triangle",
    "star",
    "on",
    "the",
    "left",
    "right",
    "top",
    "bottom",
    ".",
    "and",
    "with",
    "dog",
    "cat",
    "big",
    "small",
]


def word_tokenizer(folder: str | os.PathLike) -> Any:
    """A word-level tokenizer over :data:`WORDS`, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)
    return fast


#: A chat template in the style of LLaVA-1.5's ("USER: <image> ... ASSISTANT:").
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %} {{ image_placeholder }}{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
)


def build_tiny_vlm(
    folder: str | os.PathLike, kind: str = "llava", *, seed: int = 0, chat: bool = True
) -> Path:
    """Save a tiny random native VLM, its processor and tokenizer to ``folder``.

    ``kind="llava"``: ``LlavaForConditionalGeneration`` (CLIP tower 32 px / 8 px patches, 16
    image tokens from hidden layer -2 without CLS, GELU projector, Llama LM). ``"gemma3"``:
    ``Gemma3ForConditionalGeneration`` (SigLIP tower 32 px / 4 px patches = 64 features,
    pooled to 16 image tokens; Gemma 3 LM with bidirectional attention on image tokens).
    """
    from tokenizers import AddedToken
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        SiglipVisionConfig,
    )

    if kind not in TINY_KINDS:
        raise ArgumentError(f"kind must be one of {TINY_KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(folder)
    tok.add_tokens(["user", "assistant"])
    specials = {
        "llava": ["<image>"],
        "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
        "qwen2_5_vl": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"],
    }[kind]
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(s, special=True) for s in specials]}
    )
    if kind == "gemma3":
        tok._set_model_specific_special_tokens(
            dict(zip(("boi_token", "image_token", "eoi_token"), specials))
        )
    ids = [tok.convert_tokens_to_ids(s) for s in specials]
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    placeholder = "".join(specials[:3]) if kind == "qwen2_5_vl" else specials[0]
    template = CHAT_TEMPLATE.replace("{{ image_placeholder }}", placeholder) if chat else None
    if kind == "llava":
        vision = CLIPVisionConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64, projection_dim=32,
        )  # fmt: skip
        cfg = LlavaConfig(
            vision_config=vision, text_config=LlamaConfig(**text), image_token_index=ids[0],
            projector_hidden_act="gelu", vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )  # fmt: skip
        model = LlavaForConditionalGeneration(cfg)
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
            image_token="<image>", num_additional_image_tokens=1, chat_template=template,
        )  # fmt: skip
    elif kind == "gemma3":
        vision = SiglipVisionConfig(
            image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64,
        )  # fmt: skip
        cfg = Gemma3Config(
            vision_config=vision,
            text_config=Gemma3TextConfig(**text, head_dim=8, sliding_window=16),
            mm_tokens_per_image=16, boi_token_index=ids[0], image_token_index=ids[1],
            eoi_token_index=ids[2],
        )  # fmt: skip
        model = Gemma3ForConditionalGeneration(cfg)
        processor = Gemma3Processor(
            image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
            tokenizer=tok, image_seq_length=16, chat_template=template,
        )  # fmt: skip
    elif kind == "qwen2_5_vl":
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, window_size=16,
            fullatt_block_indexes=[1],
        )  # fmt: skip
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}
        cfg = Qwen2_5_VLConfig(
            vision_config=vision, text_config=dict(text, rope_parameters=rope),
            image_token_id=ids[1], video_token_id=ids[3], vision_start_token_id=ids[0],
            vision_end_token_id=ids[2],
        )  # fmt: skip
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(
                patch_size=4, merge_size=2, temporal_patch_size=2,
                size={"shortest_edge": 8 * 8, "longest_edge": 64 * 64},
            ),
            tokenizer=tok, chat_template=template,
            video_processor=Qwen2VLVideoProcessor(
                patch_size=4, merge_size=2, temporal_patch_size=2
            ),
        )  # fmt: skip
    else:
        raise ArgumentError(kind)
    with torch.no_grad():  # visible differences between tokens, as build_hf_lm
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
        if kind == "gemma3":  # its projector starts at zero (every image token would be 0)
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.5)
        # as in a trained VLM, the image placeholder is never predicted (its row is not trained)
        model.lm_head.weight[ids[1] if kind != "llava" else ids[0]] = 0.0
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
