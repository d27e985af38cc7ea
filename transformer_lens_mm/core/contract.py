"""The model contract: what every tool may use of a model, and nothing else.

Two protocols, checked structurally (``isinstance`` works on both):

* :class:`LanguageModel`: the TransformerLens surface the tools read (``cfg``, ``tokenizer``,
  the embedding/unembedding and MLP output weights, ``hooks``/``run_with_hooks``/
  ``run_with_cache``). A plain ``HookedTransformer`` or ``TransformerBridge`` has it, so the
  tools that only decode weights (:func:`~transformer_lens_mm.tools.decoding.decode_units`)
  take plain TL models too.
* :class:`MultimodalModel`: a language model with sight. Besides the above: preparing inputs,
  embedding and injecting images, the plain LM forward, the two KV-cached steps of greedy
  decoding, and logits at chosen positions. Image positions always travel in the
  :class:`~transformer_lens_mm.core.layout.MultimodalInput`; ``last_input`` is kept for
  interactive use, and no tool reads it.

The two LiMBeR classes (:class:`~transformer_lens_mm.core.hooked.HookedMultimodalTransformer`,
:class:`~transformer_lens_mm.core.bridge.MultimodalTransformerBridge`) and the native-VLM class
(:class:`~transformer_lens_mm.core.native.NativeVLMBridge`, whose ``image_projection`` is
``None``: the model's own projector makes ``hook_image_embed``) implement it; a new front end
implements it and every tool works on it unchanged.

Example:
    >>> from transformer_lens_mm.core.projection import ImageProjection
    >>> isinstance(ImageProjection(2, 2), MultimodalModel)
    False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer_lens_mm.core.encoders import ImageEncoder
from transformer_lens_mm.core.images import ImageLike
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.projection import ImageProjection

__all__ = ["HookList", "LanguageModel", "MultimodalModel"]

#: ``(hook name or name filter, hook function)`` pairs, as TransformerLens takes them.
HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


@runtime_checkable
class LanguageModel(Protocol):
    """The TransformerLens surface the tools use (both TL APIs have it)."""

    cfg: Any  # n_layers, d_model, d_mlp, d_vocab, n_ctx, ...
    tokenizer: Any  # a Hugging Face tokenizer
    blocks: Any  # blocks[layer].mlp.W_out: [d_mlp, d_model]
    ln_final: Any  # the final norm (called on a residual)
    unembed: Any  # residual -> logits
    hook_dict: dict[str, Any]  # hook name -> HookPoint

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]: ...

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def requires_grad_(self, requires_grad: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class MultimodalModel(LanguageModel, Protocol):
    """A TransformerLens model with sight: what the analysis tools need of it."""

    image_encoder: ImageEncoder | None  # frozen encoder (None: pass image_features)
    image_projection: ImageProjection | None  # d_image -> d_model
    prompt: str  # default prompt after the image tokens
    lm_name: str  # what the language model is called (reports name it)
    last_input: MultimodalInput | None  # the latest multimodal input (interactive use only)

    @property
    def lm_device(self) -> torch.device:
        """Where the language model's weights live (inputs are moved there)."""
        ...

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
        """Preprocess images and tokenise ``[BOS?][image tokens][prompt][caption?]``."""
        ...

    def encode_pixels(
        self, pixel_values: Float[Tensor, "batch ..."]
    ) -> Float[Tensor, "batch n_image_tokens d_image"]:
        """Encoder features of preprocessed images (through the feature cache, if any)."""
        ...

    def embed_images(self, batch: MultimodalInput) -> Float[Tensor, "batch n_image_tokens d_model"]:
        """Soft-prompt tokens of a batch (through ``hook_image_features``/``hook_image_embed``)."""
        ...

    def inject_images(
        self, image_embeds: Float[Tensor, "batch n_image_tokens d_model"], batch: MultimodalInput
    ) -> contextlib.AbstractContextManager[None]:
        """While active, ``hook_embed`` outputs of ``batch``'s shape carry ``image_embeds``."""
        ...

    def lm_forward(self, tokens: Int[Tensor, "batch pos"], *args: Any, **kwargs: Any) -> Any:
        """The language model's own forward on token ids (no image handling)."""
        ...

    def lm_blocks(self, tokens: Int[Tensor, "batch pos"], **kwargs: Any) -> None:
        """The language model on token ids for its hook points' sake (every block runs; the
        unembedding of every position is skipped where the model can)."""
        ...

    def kv_first_step(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch n d_vocab"], Any]:
        """First decoding step: logits (at least the last position) and a KV-cache state, or
        ``None`` as the state when this model's cache cannot be used."""
        ...

    def kv_next_step(
        self,
        tokens: Int[Tensor, "batch new"],
        attention_mask: Int[Tensor, "batch pos"],
        state: Any,
    ) -> tuple[Float[Tensor, "batch new d_vocab"], Any]:
        """A later decoding step on the new tokens only; ``attention_mask`` covers all positions."""
        ...

    def logits_at(
        self,
        batch: MultimodalInput,
        rows: Int[Tensor, " n"],
        positions: Int[Tensor, " n"],
    ) -> Float[Tensor, "n d_vocab"]:
        """Logits at ``(rows[i], positions[i])`` of a multimodal forward, only where needed."""
        ...

    def attach_feature_cache(self, root: Any) -> Any:
        """Keep encoder features on disk under ``root`` (``None``: stop caching)."""
        ...

    def fused(self, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
        """Context manager: the speed layer on or off inside (see ``fast.set_fused``)."""
        ...
