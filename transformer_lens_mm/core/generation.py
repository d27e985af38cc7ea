"""Captioning images: greedy or sampled generation with a KV cache, under user hooks.

``HookedTransformer.generate`` does not fire ``hook_embed`` when given embeddings, so it cannot
see injected images; this loop runs the model's own forward (which injects the image tokens on
the first step) and then feeds one token at a time through the TransformerLens KV cache
(TL 3.x) or the Hugging Face cache (``TransformerBridge``).

Example:
    >>> out = generate_captions(model, images, max_new_tokens=10)  # doctest: +SKIP
    >>> out.texts  # doctest: +SKIP
    [' a red circle on the left.']
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from transformer_lens_mm.core.contract import HookList, MultimodalModel
from transformer_lens_mm.core.images import ImageLike
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, InputShapeError

__all__ = ["Captions", "generate_captions", "sample_next_token"]


@dataclass
class Captions:
    """Generated captions."""

    texts: list[str]  # decoded new text per image (up to, excluding, EOS)
    tokens: Int[Tensor, "batch new_pos"]  # new token ids (pad after EOS)
    lengths: Int[Tensor, " batch"]  # number of new tokens per image, EOS included
    input: MultimodalInput  # the prompt layout that was generated from (left-padded)


def sample_next_token(
    logits: Float[Tensor, "batch d_vocab"],
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Pick the next token: argmax, or a sample with temperature / top-k / top-p.

    Example:
        >>> sample_next_token(torch.tensor([[0.0, 2.0, 1.0]]))
        tensor([1])
    """
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ArgumentError(f"temperature must be positive, got {temperature}; use do_sample=False")
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ArgumentError(f"top_k must be >= 1, got {top_k}")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ArgumentError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _extend(batch: MultimodalInput, new: Tensor) -> MultimodalInput:
    ones = torch.ones_like(new)
    return dataclasses.replace(
        batch,
        tokens=torch.cat([batch.tokens, new], 1),
        attention_mask=torch.cat([batch.attention_mask, ones], 1),
        image_mask=torch.cat([batch.image_mask, torch.zeros_like(new, dtype=torch.bool)], 1),
        target_mask=None,
    )


@torch.no_grad()
def generate_captions(
    model: MultimodalModel,
    images: ImageLike | Sequence[ImageLike] | None = None,
    *,
    prompts: str | Sequence[str] | None = None,
    pixel_values: Tensor | None = None,
    image_features: Tensor | None = None,
    batch: MultimodalInput | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    eos_token_id: int | None = None,
    use_kv_cache: bool = True,
    fwd_hooks: HookList = (),
    prompt_hooks: HookList = (),
    verbose: bool = False,
) -> Captions:
    """Caption images with a multimodal model (either TransformerLens API).

    Args:
        model: A :class:`HookedMultimodalTransformer` or :class:`MultimodalTransformerBridge`.
        images: Raw images (or use ``pixel_values``, ``image_features`` or ``batch``).
        prompts: Prompt(s) after the image tokens (default: the model's prompt).
        pixel_values: Preprocessed images.
        image_features: Precomputed encoder output.
        batch: A prepared input (it is re-padded on the left if needed).
        max_new_tokens: Maximum number of generated tokens.
        do_sample: Sample instead of greedy argmax.
        temperature: Sampling temperature.
        top_k: Keep only the k most likely tokens when sampling.
        top_p: Nucleus sampling threshold.
        seed: Seed of the sampling generator (reproducible samples).
        stop_at_eos: Stop an item once it produced EOS.
        eos_token_id: Override the tokenizer's EOS id.
        use_kv_cache: Use the KV cache (same result as recomputing the full sequence).
        fwd_hooks: ``(name, fn)`` hooks active during the whole generation. With the KV cache,
            steps after the first see only the new position.
        prompt_hooks: Hooks that act on the prompt only (e.g. an ablation at the image
            positions): with the KV cache they run on the first step and are removed for the
            later ones, which see only new positions; without it, on every step (each one
            recomputes the prompt). Same captions as passing them in ``fwd_hooks``, without the
            cost of calling them at every later step.
        verbose: Show a progress bar over the generated tokens.

    Returns:
        :class:`Captions` with texts and token ids.
    """
    if max_new_tokens < 1:
        raise ArgumentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch is None:
        batch = model.prepare_inputs(
            images,
            prompts=prompts,
            pixel_values=pixel_values,
            image_features=image_features,
            padding_side="left",
        )
    elif batch.padding_side != "left" and bool((batch.attention_mask == 0).any()):
        raise ArgumentError(
            "captioning needs a left-padded input: prepare_inputs(..., padding_side='left')"
        )
    batch = batch.to(model.lm_device)
    n_ctx = int(model.cfg.n_ctx)
    if batch.tokens.shape[1] + max_new_tokens > n_ctx:
        raise InputShapeError(
            f"the input has {batch.tokens.shape[1]} positions; {max_new_tokens} new tokens would "
            f"exceed the model's context n_ctx={n_ctx}: lower max_new_tokens"
        )
    tokenizer = model.tokenizer
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    generator = None
    if do_sample:
        generator = torch.Generator(device=batch.tokens.device)
        generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))

    n = len(batch)
    finished = torch.zeros(n, dtype=torch.bool, device=batch.tokens.device)
    new_tokens: list[Tensor] = []

    def on_prompt() -> contextlib.AbstractContextManager[Any]:
        return (
            model.hooks(fwd_hooks=list(prompt_hooks)) if prompt_hooks else contextlib.nullcontext()
        )

    # no context without hooks: TL's builds the model's hook dictionary on every entry
    hooks_context = (
        model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
    )
    with hooks_context:
        with on_prompt():
            model.last_input = batch
            image_embeds = model.embed_images(batch)
            with model.inject_images(image_embeds, batch):
                if use_kv_cache:
                    logits, state = model.kv_first_step(batch.tokens, batch.attention_mask)
                    use_kv_cache = state is not None  # None: this backend's cache is unusable
                else:
                    logits = model.lm_forward(batch.tokens, attention_mask=batch.attention_mask)
        current = batch
        for step in tqdm(range(max_new_tokens), disable=not verbose, desc="captioning"):
            nxt = sample_next_token(
                logits[:, -1],
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            new_tokens.append(nxt)
            if stop_at_eos and eos is not None:
                finished |= nxt == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            current = _extend(current, nxt[:, None])
            if use_kv_cache:
                logits, state = model.kv_next_step(nxt[:, None], current.attention_mask, state)
            else:
                with on_prompt(), model.inject_images(image_embeds, current):
                    logits = model.lm_forward(current.tokens, attention_mask=current.attention_mask)

    tokens = torch.stack(new_tokens, 1)
    lengths = torch.full((n,), tokens.shape[1], dtype=torch.long, device=tokens.device)
    texts = []
    for i in range(n):
        ids = tokens[i].tolist()
        if stop_at_eos and eos is not None and eos in ids:
            cut = ids.index(eos)
            lengths[i] = cut + 1
            ids = ids[:cut]
        texts.append(tokenizer.decode(ids))
    return Captions(texts=texts, tokens=tokens, lengths=lengths, input=batch)
