"""Token layout of a multimodal batch: ``[BOS?][image tokens][prompt][caption?][padding]``.

A :class:`MultimodalInput` records which positions hold image tokens, so every later tool can
select them (``batch.image_positions``), and where each item's last real token is.

Example:
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained("gpt2")  # doctest: +SKIP
    >>> batch = build_multimodal_input(tok, n_image_tokens=4, batch_size=2)  # doctest: +SKIP
    >>> batch.image_positions  # doctest: +SKIP
    tensor([[0, 1, 2, 3],
            [0, 1, 2, 3]])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from transformer_lens_mm.errors import ArgumentError, ArgumentTypeError, InputShapeError

__all__ = [
    "DEFAULT_PROMPT",
    "MultimodalInput",
    "build_multimodal_input",
    "encode_text",
    "pad_rows",
    "per_item",
]

DEFAULT_PROMPT = "A picture of"


@dataclass
class MultimodalInput:
    """A tokenised multimodal batch, ready for the model's forward.

    Image positions hold a placeholder token id; the injection hook overwrites their embeddings.
    """

    tokens: Int[Tensor, "batch pos"]  # token ids (placeholder id at image positions)
    attention_mask: Int[Tensor, "batch pos"]  # 1 for real tokens, 0 for padding
    image_mask: Bool[Tensor, "batch pos"]  # True at image-token positions
    prompts: list[str]  # the text prompt of each item
    captions: list[str] | None = None  # text appended after the prompt (training targets)
    target_mask: Bool[Tensor, "batch pos"] | None = None  # True at caption tokens to predict
    # encoder input: [batch, 3, H, W] (Qwen2.5-VL: [batch, n_patches, patch_dim])
    pixel_values: Float[Tensor, "batch ..."] | None = None
    image_features: Float[Tensor, "batch n_image_tokens d_image"] | None = None  # precomputed
    grid_size: tuple[int, int] | None = None  # encoder patch grid (h, w)
    padding_side: Literal["left", "right"] = "right"  # where padding was put
    extras: dict[str, Any] = field(default_factory=dict)  # free-form user data (ids, paths)

    def __post_init__(self) -> None:
        if (
            self.tokens.shape != self.attention_mask.shape
            or self.tokens.shape != self.image_mask.shape
        ):
            raise InputShapeError("tokens, attention_mask and image_mask must have the same shape")
        counts = self.image_mask.sum(-1)
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise ArgumentError("every item must hold the same number of image tokens")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    # TransformerLens helpers that take a token tensor read its shape and device
    # (``transformer_lens.patching``): a MultimodalInput answers them from ``tokens``.
    @property
    def shape(self) -> torch.Size:
        """``tokens.shape``: ``[batch, pos]``."""
        return self.tokens.shape

    @property
    def ndim(self) -> int:
        return self.tokens.ndim

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def size(self, dim: int | None = None) -> Any:
        """``tokens.size(dim)``."""
        return self.tokens.size() if dim is None else self.tokens.size(dim)

    def str_tokens(self, tokenizer: Any) -> list[list[str]]:
        """Readable labels of every position, per item: image positions as ``<img r,c>``
        (row, column of the patch grid; ``<img i>`` without a grid), the other tokens decoded
        (the placeholder id at the image positions would read as an end-of-text token).

        Example:
            >>> tok = type("Tok", (), {"decode": lambda self, ids: f"t{ids[0]}"})()
            >>> batch = MultimodalInput(
            ...     tokens=torch.tensor([[0, 0, 0, 0, 7]]),
            ...     attention_mask=torch.ones(1, 5, dtype=torch.long),
            ...     image_mask=torch.tensor([[True] * 4 + [False]]),
            ...     prompts=["x"],
            ...     grid_size=(2, 2),
            ... )
            >>> batch.str_tokens(tok)
            [['<img 0,0>', '<img 0,1>', '<img 1,0>', '<img 1,1>', 't7']]
        """
        out = []
        width = self.grid_size[1] if self.grid_size is not None else None
        for row, mask in zip(self.tokens.tolist(), self.image_mask.tolist()):
            labels, patch = [], 0
            for tid, is_image in zip(row, mask):
                if is_image:
                    labels.append(
                        f"<img {patch // width},{patch % width}>" if width else f"<img {patch}>"
                    )
                    patch += 1
                else:
                    labels.append(tokenizer.decode([tid]))
            out.append(labels)
        return out

    @property
    def n_image_tokens(self) -> int:
        return int(self.image_mask[0].sum()) if len(self) else 0

    @property
    def image_positions(self) -> Int[Tensor, "batch n_image_tokens"]:
        """Sequence index of every image token, per item (ascending)."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device).expand_as(self.tokens)
        return pos[self.image_mask].view(len(self), self.n_image_tokens)

    @property
    def last_positions(self) -> Int[Tensor, " batch"]:
        """Index of each item's last real (non-padding) token: the position that predicts next."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return (pos * self.attention_mask).argmax(-1)

    def select(self, rows: Sequence[int] | Tensor) -> MultimodalInput:
        """The items at ``rows`` (repeats allowed), e.g. to stack ablation conditions."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.tokens.device)
        picked = {
            f.name: getattr(self, f.name)[index.to(getattr(self, f.name).device)]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        listed = {
            name: [getattr(self, name)[i] for i in index.tolist()]
            for name in ("prompts", "captions")
            if getattr(self, name) is not None
        }
        return dataclasses.replace(self, **picked, **listed)

    def to(self, device: torch.device | str) -> MultimodalInput:
        """Move every tensor to ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)


def per_item(
    value: str | Sequence[str] | None, default: str, batch_size: int, what: str
) -> list[str]:
    """One string per item: ``None`` -> ``default`` for all, one string for all, or exactly
    one per item (else a ValueError naming ``what`` and the fix)."""
    if value is None:
        return [default] * batch_size
    if isinstance(value, str):
        return [value] * batch_size
    value = list(value)
    if len(value) != batch_size:
        raise ArgumentError(
            f"got {len(value)} {what} for a batch of {batch_size} images: pass one "
            f"string for all, or exactly one per image"
        )
    for v in value:
        if not isinstance(v, str):
            raise ArgumentTypeError(f"{what} must be strings, got {type(v).__name__}")
    return value


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids without special tokens (none for an empty text)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_rows(
    rows: Sequence[Sequence[int]],
    image_rows: Sequence[Sequence[bool]],
    target_rows: Sequence[Sequence[bool]],
    *,
    filler: int,
    padding_side: Literal["left", "right"] = "right",
) -> tuple[
    Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"],
    Bool[Tensor, "batch pos"],
]:  # fmt: skip
    """Items of different lengths as one padded batch: ``(tokens, attention_mask, image_mask,
    target_mask)``, each row's image and target flags beside its ids.

    Example:
        >>> tokens, attn, image, target = pad_rows(
        ...     [[5, 6, 7], [8]], [[True, False, False], [True]], [[False] * 3, [False]],
        ...     filler=0, padding_side="left")
        >>> tokens.tolist(), attn.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
        >>> image.tolist()
        [[True, False, False], [False, False, True]]
    """
    n, width = len(rows), max(len(r) for r in rows)
    tokens = torch.full((n, width), filler, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    image_mask = torch.zeros((n, width), dtype=torch.bool)
    target_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, ids in enumerate(rows):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        tokens[i, sl] = torch.tensor(list(ids), dtype=torch.long)
        attention[i, sl] = 1
        image_mask[i, sl] = torch.tensor(list(image_rows[i]), dtype=torch.bool)
        target_mask[i, sl] = torch.tensor(list(target_rows[i]), dtype=torch.bool)
    return tokens, attention, image_mask, target_mask


def build_multimodal_input(
    tokenizer: Any,
    *,
    n_image_tokens: int,
    batch_size: int,
    prompts: str | Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
    prepend_bos: bool = False,
    bos_token_id: int | None = None,
    append_eos: bool = False,
    padding_side: Literal["left", "right"] = "right",
    n_ctx: int | None = None,
    default_prompt: str = DEFAULT_PROMPT,
) -> MultimodalInput:
    """Tokenise prompts (and captions) around ``n_image_tokens`` image slots, with padding.

    Args:
        tokenizer: A Hugging Face tokenizer.
        n_image_tokens: Image tokens per item.
        batch_size: Number of items.
        prompts: One prompt for all items, one per item, or ``None`` for ``default_prompt``.
        captions: Optional text appended after each prompt; its tokens are marked in
            ``target_mask`` (the positions a captioning loss predicts).
        prepend_bos: Put a BOS token before the image tokens.
        bos_token_id: That token (default: the tokenizer's BOS).
        append_eos: Append the EOS token after each caption (and mark it as a target).
        padding_side: ``"right"`` keeps image positions equal across the batch; ``"left"`` makes
            every item end at the last position (generation).
        n_ctx: The model's context length, to refuse inputs that do not fit.
        default_prompt: Prompt used when ``prompts`` is None.

    Returns:
        A :class:`MultimodalInput` (without pixels or features; the model adds those).
    """
    if batch_size <= 0:
        raise ArgumentError("the batch of images is empty: pass at least one image")
    if n_image_tokens <= 0:
        raise ArgumentError(f"n_image_tokens must be positive, got {n_image_tokens}")
    prompt_list = per_item(prompts, default_prompt, batch_size, "prompts")
    caption_list = None if captions is None else per_item(captions, "", batch_size, "captions")

    bos = bos_token_id if bos_token_id is not None else getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if prepend_bos and bos is None:
        raise ArgumentError(
            "prepend_bos=True but the tokenizer has no BOS token; set prepend_bos=False"
        )
    if append_eos and eos is None:
        raise ArgumentError(
            "append_eos=True but the tokenizer has no EOS token; set append_eos=False"
        )
    filler = pad if pad is not None else (eos if eos is not None else 0)

    rows: list[list[int]] = []
    image_rows: list[list[bool]] = []
    target_rows: list[list[bool]] = []
    for i, prompt in enumerate(prompt_list):
        head = ([bos] if prepend_bos else []) + [filler] * n_image_tokens
        is_image = [False] * int(prepend_bos) + [True] * n_image_tokens
        body = encode_text(tokenizer, prompt)
        tail: list[int] = []
        if caption_list is not None:
            tail = encode_text(tokenizer, caption_list[i]) + ([eos] if append_eos else [])
        ids = head + body + tail
        if n_ctx is not None and len(ids) > n_ctx:
            raise ArgumentError(
                f"item {i} needs {len(ids)} positions ({n_image_tokens} image tokens + "
                f"{len(body)} prompt + {len(tail)} caption tokens) but the model's context is "
                f"n_ctx={n_ctx}: shorten the prompt/caption or use fewer image tokens"
            )
        rows.append(ids)
        image_rows.append(is_image + [False] * (len(body) + len(tail)))
        target_rows.append([False] * (len(head) + len(body)) + [True] * len(tail))

    tokens, attention, image_mask, target_mask = pad_rows(
        rows, image_rows, target_rows, filler=filler, padding_side=padding_side
    )
    return MultimodalInput(
        tokens=tokens,
        attention_mask=attention,
        image_mask=image_mask,
        prompts=prompt_list,
        captions=caption_list,
        target_mask=target_mask if caption_list is not None else None,
        padding_side=padding_side,
    )
